"""Install or remove the AutoRetouch GIMP 3 plug-in: ``autoretouch gimp install|uninstall``.

GIMP 3 loads a Python plug-in from its own sub-folder of a plug-ins folder, named like the
executable script inside it; here that is ``<plug-ins>/autoretouch/autoretouch.py`` with its run
bit set, beside the modules it imports: the plug-in's own, and the server package's wire
contract, errors and client (standard library only), copied under prefixed names so that
GIMP's Python runs the very code the server and the CLI run.

Use from Python::

    from plugin_server import gimp_install
    gimp_install.install()                  # first existing GIMP 3 profile, or the platform default
    gimp_install.install(dir=Path("..."))   # an explicit plug-ins folder
    gimp_install.uninstall()

or wire ``register(subparsers)`` into an argparse CLI.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from plugin_server.errors import AutoRetouchError

PLUGIN_NAME = "autoretouch"
ENTRY_POINT = "autoretouch.py"
HELP_DIR = "help"
# Written into the installed folder so that uninstall only ever removes what install made.
MARKER = ".installed-by-autoretouch"
# plugin_server module -> its name beside the plug-in
SHARED_MODULES = {"errors.py": "autoretouch_errors.py", "wire.py": "autoretouch_wire.py",
                  "client.py": "autoretouch_client.py"}


def default_plugin_dirs(platform: Optional[str] = None,
                        env: Optional[dict] = None) -> List[Path]:
    """Candidate GIMP 3 plug-ins folders for this user, most likely first."""
    platform = platform or sys.platform
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or env.get("USERPROFILE") or Path.home())
    dirs: List[Path] = []
    if env.get("GIMP3_DIRECTORY"):
        dirs.append(Path(env["GIMP3_DIRECTORY"]) / "plug-ins")
    if platform.startswith("win"):
        appdata = env.get("APPDATA")
        base = Path(appdata) if appdata else home / "AppData" / "Roaming"
        dirs.append(base / "GIMP" / "3.0" / "plug-ins")
    elif platform == "darwin":
        dirs.append(home / "Library" / "Application Support" / "GIMP" / "3.0" / "plug-ins")
    else:
        config = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
        dirs.append(config / "GIMP" / "3.0" / "plug-ins")
        dirs.append(home / ".var" / "app" / "org.gimp.GIMP" / "config" / "GIMP" / "3.0" / "plug-ins")
    return dirs


def _choose_dir(dir: Optional[Path]) -> Path:
    if dir is not None:
        return Path(dir).expanduser()
    candidates = default_plugin_dirs()
    # Prefer a GIMP profile that exists (for instance only the Flatpak one), else the native one.
    for candidate in candidates:
        if candidate.parent.is_dir():
            return candidate
    return candidates[0]


def source_files() -> Dict[str, Path]:
    """Installed name -> source file, for every file of the plug-in folder."""
    package = importlib.resources.files("gimp_plugin") / PLUGIN_NAME
    files = {entry.name: Path(str(entry)) for entry in package.iterdir()
             if entry.name.endswith(".py") and entry.is_file()}
    # The help page GIMP's Help button opens (help/<language>/gimp-help.xml maps the procedure to it).
    help_root = package / HELP_DIR
    if help_root.is_dir():
        for language in help_root.iterdir():
            files.update({f"{HELP_DIR}/{language.name}/{page.name}": Path(str(page))
                          for page in language.iterdir() if page.is_file()})
    if ENTRY_POINT not in files:
        raise AutoRetouchError(f"The plug-in files are missing from this installation "
                               f"({package}); reinstall the autoretouch package.")
    shared = importlib.resources.files("plugin_server")
    files.update({name: Path(str(shared / source)) for source, name in SHARED_MODULES.items()})
    return files


def install(dir: Optional[Path] = None) -> Path:
    """Copy the plug-in into ``<dir>/autoretouch/`` (replacing an older copy) and return that folder."""
    plugins = _choose_dir(dir)
    target = plugins / PLUGIN_NAME
    sources = source_files()
    try:
        plugins.mkdir(parents=True, exist_ok=True)
        if target.exists() and not (target / MARKER).exists():
            raise AutoRetouchError(f"{target} exists but was not installed by autoretouch; "
                                   "move it away, then run `autoretouch gimp install` again.")
        # Build beside the target, then swap it in, so GIMP never sees a half-copied plug-in.
        staging = Path(tempfile.mkdtemp(prefix=f".{PLUGIN_NAME}-", dir=plugins))
        try:
            for name, source in sources.items():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, staging / name)
            entry = staging / ENTRY_POINT
            entry.chmod(entry.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            (staging / MARKER).write_text("Installed by `autoretouch gimp install`; "
                                          "`autoretouch gimp uninstall` removes this folder.\n")
            staging.chmod(0o755)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    except OSError as err:
        raise AutoRetouchError(f"Cannot install the GIMP plug-in into {plugins}: {err}. "
                               "Pass --dir with a plug-ins folder you can write to.") from None
    return target


def uninstall(dir: Optional[Path] = None) -> Path:
    """Remove ``<dir>/autoretouch/`` if autoretouch installed it; return the folder (gone or absent)."""
    if dir is None:
        targets = [candidate / PLUGIN_NAME for candidate in default_plugin_dirs()]
        installed = [t for t in targets if (t / MARKER).exists()]
        target = installed[0] if installed else targets[0]
    else:
        target = Path(dir).expanduser() / PLUGIN_NAME
    if not target.exists():
        return target
    if not (target / MARKER).exists():
        raise AutoRetouchError(f"{target} was not installed by autoretouch; not removing it.")
    try:
        shutil.rmtree(target)
    except OSError as err:
        raise AutoRetouchError(f"Cannot remove {target}: {err}.") from None
    return target


# --------------------------------------------------------------------------------------------
# argparse wiring


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add ``gimp install`` and ``gimp uninstall`` to an ``autoretouch`` CLI.

    Each leaf parser sets ``handler`` (as plugin_server.cli does): ``args.handler(args)`` returns the
    exit code; AutoRetouchError propagates to the CLI, which reports it.
    """
    gimp = subparsers.add_parser(
        "gimp", help="install or remove the GIMP 3 plug-in",
        description="Manage the AutoRetouch plug-in for GIMP 3 (Filters ▸ Enhance ▸ AutoRetouch…).")
    actions = gimp.add_subparsers(dest="gimp_command", metavar="{install,uninstall}")
    actions.required = True
    folders = ", ".join(str(d) for d in default_plugin_dirs())
    for name, handler, text in (
            ("install", _cmd_install,
             "Copy the plug-in into GIMP 3's plug-ins folder, in its own sub-folder "
             "autoretouch/. Restart GIMP afterwards."),
            ("uninstall", _cmd_uninstall,
             "Remove the autoretouch/ sub-folder that `install` made.")):
        parser = actions.add_parser(name, help=text.split(".")[0].lower(), description=text)
        parser.add_argument(
            "--dir", type=Path, default=None, metavar="PATH",
            help="GIMP plug-ins folder to use (default: the first existing of " + folders +
                 "; see Edit ▸ Preferences ▸ Folders ▸ Plug-ins in GIMP)")
        parser.set_defaults(handler=handler)


def _cmd_install(args: argparse.Namespace) -> int:
    target = install(args.dir)
    print(f"Installed the AutoRetouch plug-in in {target}")
    print("Restart GIMP, start `autoretouch-server`, then use Filters ▸ Enhance ▸ AutoRetouch…")
    return 0


def _cmd_uninstall(args: argparse.Namespace) -> int:
    target = uninstall(args.dir)
    print(f"The AutoRetouch plug-in is not installed in {target.parent} (any more).")
    return 0
