"""A real GIMP 3 for the plug-in's end-to-end tests: a cached Debian trixie chroot.

Debian trixie ships GIMP 3.0 with its Python plug-in support.  ``ensure_chroot()`` builds
``debootstrap --variant=minbase trixie`` plus ``apt-get install gimp`` once (about a minute and
1 GB) into a temporary folder beside the cache, then renames it into place, under a lock, so a
half-built chroot is never used and two test runs never build at once.  The cache is
``/var/cache/autoretouch/gimp-chroot`` unless ``AUTORETOUCH_GIMP_CHROOT`` names another folder.

``GimpChroot.run_batch`` runs a Python batch script in ``gimp-console-3.0`` with a throwaway
profile.  ``/proc`` is bind-mounted in a private mount namespace (``unshare --mount``), so the
mount disappears with the process even when a test is killed.  The chroot shares the host's
network, so GIMP inside reaches a server the test started on the host's 127.0.0.1.

Tests that need it call ``gimp_or_skip()``: it skips with the reason when a chroot is impossible
here (not root, no debootstrap, ...) and fails instead when ``AUTORETOUCH_REQUIRE_GIMP=1``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import pytest

CHROOT_ENV = "AUTORETOUCH_GIMP_CHROOT"
REQUIRE_ENV = "AUTORETOUCH_REQUIRE_GIMP"
DEFAULT_CHROOT = Path("/var/cache/autoretouch/gimp-chroot")
SUITE = "trixie"
MIRROR = os.environ.get("AUTORETOUCH_DEBIAN_MIRROR", "http://deb.debian.org/debian")
READY_MARKER = "etc/autoretouch-gimp-ready"   # written last, inside the chroot
BUILD_TIMEOUT_S = 1800


def chroot_dir() -> Path:
    return Path(os.environ.get(CHROOT_ENV) or DEFAULT_CHROOT)


def is_ready(root: Path) -> bool:
    return (root / READY_MARKER).is_file()


def unavailable_reason() -> Optional[str]:
    """Why a GIMP chroot cannot be used here, or None when it can."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "the GIMP chroot needs Linux"
    if os.geteuid() != 0:
        return "the GIMP chroot needs root (chroot, mount); run the gimp tests as root"
    for tool in ("chroot", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    if not is_ready(chroot_dir()) and shutil.which("debootstrap") is None:
        return ("debootstrap is not installed (apt-get install debootstrap) and no GIMP chroot is "
                f"cached at {chroot_dir()}")
    return None


def skip_or_fail(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"GIMP chroot required ({REQUIRE_ENV}=1) but unavailable: {reason}")
    pytest.skip(f"GIMP chroot unavailable: {reason}")


def gimp_or_skip() -> "GimpChroot":
    reason = unavailable_reason()
    if reason:
        skip_or_fail(reason)
    try:
        return GimpChroot(ensure_chroot())
    except ChrootBuildError as err:
        skip_or_fail(str(err))
        raise  # unreachable: skip_or_fail raises


class ChrootBuildError(RuntimeError):
    pass


def ensure_chroot(root: Optional[Path] = None) -> Path:
    """Return a ready chroot, building it first if needed (once, under a lock)."""
    root = Path(root or chroot_dir())
    if is_ready(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # another run may be building it right now
        if is_ready(root):
            return root
        if root.exists():                  # not ready: a build from before the marker existed
            shutil.rmtree(root)
        build = Path(tempfile.mkdtemp(prefix=f".{root.name}.build-", dir=root.parent))
        try:
            _build(build, root.parent / f".{root.name}.build.log")
            os.rename(build, root)
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
    return root


def _build(root: Path, log: Path) -> None:
    started = time.monotonic()
    steps = [
        ["debootstrap", "--variant=minbase", SUITE, str(root), MIRROR],
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount --bind /proc '{root}/proc' && exec chroot '{root}' env "
         "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gimp"],
    ]
    with open(log, "w") as out:
        for step in steps:
            out.write(f"$ {' '.join(step)}\n")
            out.flush()
            done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=BUILD_TIMEOUT_S)
            if done.returncode != 0:
                raise ChrootBuildError(f"building the GIMP chroot failed at `{' '.join(step[:3])}` "
                                       f"(exit {done.returncode}); see {log}")
    (root / "var/cache/apt/archives").mkdir(parents=True, exist_ok=True)
    subprocess.run(["chroot", str(root), "apt-get", "clean"], check=False)
    (root / READY_MARKER).write_text(f"GIMP chroot built in {time.monotonic() - started:.0f} s\n")


def ensure_packages(root: Path, packages: Tuple[str, ...]) -> None:
    """Install Debian ``packages`` into a ready chroot where any is missing (for tools/docs_gimp.py:
    Xvfb and friends, which the tests themselves never need)."""
    missing = [name for name in packages
               if subprocess.run(["chroot", str(root), "dpkg-query", "-W", "-f=${Status}", name],
                                 capture_output=True, text=True).stdout != "install ok installed"]
    if not missing:
        return
    command = (f"mount --bind /proc '{root}/proc' && exec chroot '{root}' env DEBIAN_FRONTEND=noninteractive "
               f"sh -c 'apt-get update -q && apt-get install -y -q --no-install-recommends {' '.join(missing)}'")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if done.returncode != 0:
        raise ChrootBuildError(f"installing {' '.join(missing)} into {root} failed:\n{done.stdout[-2000:]}"
                               f"{done.stderr[-2000:]}")


@dataclass
class BatchResult:
    returncode: int
    output: str
    elapsed: float


class GimpChroot:
    """Runs ``gimp-console-3.0`` batch scripts inside a ready chroot."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def workdir(self) -> Tuple[Path, str]:
        """A fresh folder under the chroot's /tmp: (host path, path as GIMP sees it)."""
        name = f"autoretouch-{uuid.uuid4().hex[:12]}"
        host = self.root / "tmp" / name
        host.mkdir(parents=True)
        return host, f"/tmp/{name}"

    def run_batch(self, script: str, workdir: Tuple[Path, str], timeout: float = 600) -> BatchResult:
        """Run ``script`` (Python, as for python-fu-eval) with a profile inside ``workdir``."""
        host, inside = workdir
        (host / "batch.py").write_text(script)
        command = (
            f"mount --bind /proc '{self.root}/proc' && exec chroot '{self.root}' "
            f"env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME={inside} LANG=C.UTF-8 "
            f"GIMP3_DIRECTORY={inside}/profile "
            f"gimp-console-3.0 -i --batch-interpreter=python-fu-eval -b - --quit "
            f"< '{host}/batch.py'"
        )
        started = time.monotonic()
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                                 "sh", "-c", command],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)   # our own session: GIMP and its plug-ins
            output, _ = proc.communicate()
            raise AssertionError(f"GIMP batch timed out after {timeout} s:\n"
                                 f"{output.decode(errors='replace')[-4000:]}") from None
        return BatchResult(proc.returncode, output.decode(errors="replace"),
                           time.monotonic() - started)

    def cleanup(self, workdir: Tuple[Path, str]) -> None:
        shutil.rmtree(workdir[0], ignore_errors=True)
