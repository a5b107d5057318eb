"""Writing files atomically, with the permissions the umask gives. Light on purpose (the
standard library only): the compiler, the runtime and the CLI write through it as the
trainer and the search do."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, content, durable: bool = False) -> None:
    """Write `content` (text, bytes, or a function writing to a binary file) to a
    temporary file beside `path`, then rename it into place: a reader never sees half a
    file, and a failure leaves the old one. The file gets the permissions the umask gives
    (not mkstemp's 0600). `durable`: fsync before the rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- checking an output path before the work that fills it ------------------------------------


def output_file_problem(path: str | Path) -> str | None:
    """Why `write_atomic` could not write the file `path` (its folder missing, a file where
    a folder should be, read-only or no permission; the path a folder or a device), or None."""
    path = Path(path)
    try:
        if path.is_dir():
            return "is a folder; name the file to write"
        if path.exists() and not path.is_file():
            return "exists and is not a regular file"
        folder = path.parent
        if not folder.exists():
            return _missing_folder(folder)
        return _unwritable(folder)
    except OSError as e:
        return f"cannot be reached ({e.strerror or e})"


def output_folder_problem(path: str | Path) -> str | None:
    """Why the folder `path` could not be created (if missing) and written in, or None."""
    path = Path(path)
    try:
        if path.exists():
            return "exists and is not a folder" if not path.is_dir() else _unwritable(path)
        existing = _nearest_existing(path.parent)
        if not existing.is_dir():
            return f"{existing} is a file, not a folder"
        return _unwritable(existing)
    except OSError as e:
        return f"cannot be reached ({e.strerror or e})"


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _missing_folder(folder: Path) -> str:
    existing = _nearest_existing(folder.parent)
    if existing.exists() and not existing.is_dir():
        return f"{existing} is a file, not a folder"
    return f"the folder {folder} does not exist"


def _unwritable(folder: Path) -> str | None:
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if hasattr(os, "statvfs") and os.statvfs(folder).f_flag & os.ST_RDONLY:
        return f"{folder} is on a read-only file system"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"no permission to write in {folder}"
    return None
