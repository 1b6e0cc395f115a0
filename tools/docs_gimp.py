"""Screenshots of the GIMP plug-in in a real GIMP 3 window, for docs/gimp.md.

Run by hand, as root (``make docs-gimp``); never by ``make test``::

    .venv/bin/python tools/docs_gimp.py [--out docs/gimp]

It uses the test chroot (tests/gimp_chroot.py: Debian trixie, GIMP 3.0.4), adds Xvfb, openbox,
xdotool and ImageMagick to it, installs the plug-in into a throwaway GIMP profile exactly as
``autoretouch gimp install`` does, starts the real server with the bundled model on a free
loopback port, and drives GIMP with the keyboard as a retoucher would: Filters ▸ Enhance, the
dialog, OK, the progress bar, the Layers panel after the run, a run in the skin-mask mode, and
Filters ▸ Repeat with the server stopped.  Each screenshot is cropped and scaled to a small PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from gimp_chroot import ensure_chroot, ensure_packages, GimpChroot  # noqa: E402  (the tests' chroot)

from plugin_server import gimp_install  # noqa: E402

PORTRAIT = REPO.parent / "shared" / "data" / "portraits" / "ffhq-00001.png"
PACKAGES = ("xvfb", "xdotool", "imagemagick", "openbox", "x11-utils")
DISPLAYS = (":77", ":78")  # one per session: a killed Xvfb leaves its lock and socket behind
SCREEN = (1280, 860)
WIDTH = 900  # every screenshot is scaled to at most this width

# The GUI session: Xvfb, a window manager, GIMP with the portrait.  GIMP's first-run welcome
# dialog would sit on top of everything, so the throwaway profile turns it off.
SESSION = r"""
Xvfb @DISPLAY@ -screen 0 @W@x@H@x24 -nolisten tcp &
sleep 1
export DISPLAY=@DISPLAY@
openbox &
exec gimp-3.0 --no-splash @FILE@
"""
# A second session shows the skin-mask mode: a batch script runs the plug-in on the portrait
# and opens the result in a window with its layer mask shown.
SKIN_BATCH = r"""
import gi
gi.require_version('Gimp', '3.0')
from gi.repository import Gimp, Gio
img = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path("@FILE@"))
proc = Gimp.get_pdb().lookup_procedure("plug-in-autoretouch")
cfg = proc.create_config()
cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
cfg.set_property("image", img)
cfg.set_core_object_array("drawables", img.get_layers())
cfg.set_property("output-mode", "new-layer-skin-mask")
cfg.set_property("server-url", "@URL@")
proc.run(cfg)
img.get_layers()[0].set_show_mask(True)
Gimp.Display.new(img)
Gimp.displays_flush()
"""


class Session:
    """One GIMP window under Xvfb inside the chroot, driven from here."""

    def __init__(self, gimp: GimpChroot, workdir: tuple[Path, str], gimp_args: str, display: str) -> None:
        self.gimp, self.host, self.inside, self.display = gimp, workdir[0], workdir[1], display
        script = (SESSION.replace("@DISPLAY@", display).replace("@W@", str(SCREEN[0]))
                  .replace("@H@", str(SCREEN[1])).replace("@FILE@", gimp_args))
        (self.host / "session.sh").write_text(script)
        root = gimp.root
        command = (f"mount --bind /proc '{root}/proc' && exec chroot '{root}' env -i "
                   f"PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME={self.inside} LANG=C.UTF-8 "
                   f"GIMP3_DIRECTORY={self.inside}/profile sh {self.inside}/session.sh")
        self.log = open(self.host / f"session{display.replace(':', '-')}.log", "wb")
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def x(self, *args: str, check: bool = False) -> str:
        """Run an X client (xdotool, import) inside the chroot against the session's display."""
        done = subprocess.run(["chroot", str(self.gimp.root), "env", "-i", "PATH=/usr/bin:/bin",
                               f"DISPLAY={self.display}", "HOME=/tmp", *args], capture_output=True, text=True)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def wait_window(self, name: str, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.x("xdotool", "search", "--onlyvisible", "--name", name).split()
            if found:
                return found[-1]
            time.sleep(0.5)
        raise RuntimeError(f"no window named {name!r} appeared within {timeout:g} s; see {self.host}/session.log")

    def main_window(self) -> str:
        """The largest window called GIMP (a batch-started GIMP has more than one of that name)."""
        def area(window: str) -> int:
            shape = self.x("xdotool", "getwindowgeometry", "--shell", window)
            values = dict(line.split("=", 1) for line in shape.splitlines() if "=" in line)
            return int(values.get("WIDTH", 0)) * int(values.get("HEIGHT", 0))
        found = self.x("xdotool", "search", "--onlyvisible", "--name", "GNU Image Manipulation Program").split()
        return max(found, key=area)

    def keys(self, *keys: str, pause: float = 0.8) -> None:
        for key in keys:
            self.x("xdotool", "key", "--clearmodifiers", key, check=True)
            time.sleep(pause)

    def shot(self, path: Path, window: str = "root") -> Path:
        inside = f"{self.inside}/shot.png"
        self.x("import", "-window", window, inside, check=True)
        path.write_bytes((self.host / "shot.png").read_bytes())
        return path

    def close(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # the session's own process group: Xvfb, openbox, GIMP
        self.proc.wait(timeout=30)
        self.log.close()


def _server(port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "plugin_server.server.main", "--port", str(port)]
    proc = subprocess.Popen(command, cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=2) as reply:
                if reply.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the server did not start; see {log}")


def _idle(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=5) as reply:
        queue = json.loads(reply.read())["queue"]
    return queue["running"] == 0 and queue["queued"] == 0


def small(source: Path, target: Path, box: Callable[[Image.Image], tuple[int, int, int, int]] | None = None) -> Path:
    """Crop (``box`` of the image) and scale to at most WIDTH, as a palette PNG: a few tens of kB."""
    image = Image.open(source).convert("RGB")
    if box is not None:
        image = image.crop(box(image))
    if image.width > WIDTH:
        image = image.resize((WIDTH, round(image.height * WIDTH / image.width)), Image.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    return target


def _profile(host: Path) -> None:
    profile = host / "profile"
    gimp_install.install(profile / "plug-ins")
    (profile / "gimprc").write_text("(show-welcome-dialog no)\n")


def capture(out: Path) -> list[Path]:
    gimp = GimpChroot(ensure_chroot())
    ensure_packages(gimp.root, PACKAGES)
    out.mkdir(parents=True, exist_ok=True)
    workdir = gimp.workdir()
    host, inside = workdir
    _profile(host)
    Image.open(PORTRAIT).convert("RGB").save(host / "portrait.png")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = _server(port, host / "server.log")
    raw = host / "raw"
    raw.mkdir()
    made: list[Path] = []
    try:
        session = Session(gimp, workdir, f"{inside}/portrait.png", DISPLAYS[0])
        try:
            made += _main_flow(session, raw, out, port, url, server)
        finally:
            session.close()
        if server.poll() is not None:
            server = _server(port, host / "server2.log")
        (host / "skin.py").write_text(SKIN_BATCH.replace("@FILE@", f"{inside}/portrait.png").replace("@URL@", url))
        session = Session(gimp, workdir, f"--batch-interpreter=python-fu-eval -b \"exec(open('{inside}/skin.py').read())\"",
                          DISPLAYS[1])
        try:
            session.wait_window("GNU Image Manipulation Program")
            window = session.main_window()
            session.x("xdotool", "windowsize", window, str(SCREEN[0]), str(SCREEN[1] - 30))
            time.sleep(8)
            session.x("xdotool", "windowactivate", "--sync", window)
            _close_welcome(session)
            for other in session.x("xdotool", "search", "--onlyvisible", "--name", "").split():
                # an empty, nameless window a batch-started GIMP leaves over the canvas
                if other != window and not session.x("xdotool", "getwindowname", other):
                    session.x("xdotool", "windowunmap", other)
            session.keys("shift+ctrl+j")
            made.append(small(session.shot(raw / "skin.png"), out / "skin-mask.png",
                              lambda im: (0, 0, SCREEN[0], SCREEN[1] - 30)))
        finally:
            session.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    gimp.cleanup(workdir)
    return made


def _close_welcome(session: Session) -> None:
    """GIMP 3 greets a profile that has not run this version with a dialog; a retoucher closes it."""
    found = session.x("xdotool", "search", "--onlyvisible", "--name", "Welcome to GIMP").split()
    for window in found:
        session.x("xdotool", "windowclose", window)
    time.sleep(1)
    session.keys("shift+ctrl+j")  # View > Zoom > Fit Image in Window: repaints where the dialog was


def _main_flow(session: Session, raw: Path, out: Path, port: int, url: str, server: subprocess.Popen) -> list[Path]:
    made = []
    window = session.wait_window("GNU Image Manipulation Program")
    time.sleep(6)  # the image loads and the docks settle
    session.x("xdotool", "windowsize", window, str(SCREEN[0]), str(SCREEN[1] - 30))
    session.x("xdotool", "windowactivate", "--sync", window)
    _close_welcome(session)
    time.sleep(1)
    session.keys("alt+r", "h")  # Filte_rs, En_hance
    made.append(small(session.shot(raw / "menu.png"), out / "menu.png",
                      lambda im: (0, 0, min(im.width, 1000), min(im.height, 640))))
    session.keys("t", pause=2.0)  # Au_toRetouch...
    dialog = session.wait_window("^AutoRetouch$")
    # The URL field: this session's server, typed as a user would.
    session.keys("alt+u", "ctrl+a", pause=0.3)
    session.x("xdotool", "type", "--delay", "20", url, check=True)
    time.sleep(0.5)
    made.append(small(session.shot(raw / "dialog.png", dialog), out / "dialog.png"))
    session.keys("alt+o", pause=0.6)  # _OK
    for attempt in range(8):  # the progress bar: while the server works
        session.shot(raw / f"progress-{attempt}.png", window)
        time.sleep(0.25)
    made.append(small(raw / "progress-1.png", out / "progress.png", lambda im: (0, im.height - 40, im.width, im.height)))
    deadline = time.monotonic() + 120
    while not _idle(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.5)
    made.append(small(session.shot(raw / "layers.png", window), out / "layers.png"))
    made.append(small(raw / "layers.png", out / "summary.png", lambda im: (0, im.height - 40, im.width, im.height)))
    server.terminate()  # the server goes away; Filters > Repeat then says so
    server.wait(timeout=30)
    session.keys("ctrl+f", pause=3.0)
    error = session.wait_window("Message|Error", timeout=30)
    made.append(small(session.shot(raw / "server-down.png", error), out / "server-down.png"))
    return made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "gimp")
    args = parser.parse_args()
    for path in capture(args.out):
        print(f"{path} ({path.stat().st_size // 1024} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
