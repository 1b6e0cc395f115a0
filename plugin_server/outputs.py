"""Where a retouched photo may be written: never onto an input, never inside the input folder.

    target = check_output(Path("out/a.jpg"), protected=[in_dir])   # before any work
    prepare_folder(target, protected=[in_dir])                       # mkdir, re-checked

Checks follow every symbolic link on the way (a sub-folder of OUT_DIR that links into IN_DIR,
an output name that links to an original), so the protection holds whatever the tree looks
like; the real write then goes through a temporary name in the checked folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .errors import BadOptionError


def real(path: Path) -> Path:
    """The real location ``path`` names: links resolved, even where the path does not exist yet."""
    return Path(os.path.realpath(path))


def check_output(target: Path, protected: Iterable[Path]) -> Path:
    """Refuse a ``target`` whose real place is a protected file, or inside a protected folder."""
    where = real(target)
    if where.is_dir():
        raise BadOptionError(f"{target} is a folder; give the output a file name such as {target / 'retouched.jpg'}")
    for guarded in protected:
        guarded = real(guarded)
        is_input = where == guarded or _same_file(where, guarded)
        if is_input or guarded in where.parents:
            raise BadOptionError(
                f"{target} would be written at {where}, which is "
                f"{'an input' if is_input else f'inside the input folder {guarded}'}; "
                "choose an output outside the inputs so no original is overwritten"
            )
    return where


def _same_file(a: Path, b: Path) -> bool:
    """A hard link of an input is that input too."""
    try:
        return a.is_file() and b.is_file() and os.path.samefile(a, b)
    except OSError:
        return False


def prepare_folder(target: Path, protected: Iterable[Path], create: bool = True) -> None:
    """Create (or, with ``create=False``, require) ``target``'s folder and check, once it exists,
    that it is writable and still safe."""
    protected = list(protected)
    check_output(target, protected)
    if not create and not target.parent.is_dir():
        raise BadOptionError(f"the output folder {target.parent} does not exist")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadOptionError(f"cannot create the output folder {target.parent}: {exc.strerror or exc}") from None
    check_output(target, protected)  # a link made meanwhile is caught here
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise BadOptionError(f"cannot write into the output folder {target.parent} (read-only, or no permission); "
                             "choose a folder you can write to")
