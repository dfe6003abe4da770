"""Atomic file output: nothing half-written is ever left where a reader looks."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path` whole, on error it is removed.

    A reader never sees a half-written `path`: either the old folder or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the usual permissions
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_writable(path: str | os.PathLike, what: str = "output", folder: bool = False) -> None:
    """Fail before any work when `path` cannot be written: a `UserError` naming `what` and the path.

    `path` is a file to be written (its parent folders are made if needed), or with `folder` a folder to
    write into. A probe folder and file are created and removed in the nearest folder that exists, so an
    unwritable place is found before a long job, not after it, and nothing is left behind.
    """
    from posttrain.errors import UserError

    path = Path(path)
    if not folder and path.is_dir():
        raise UserError(f"{what}: '{path}' is a folder; give a file path")
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{what}: '{path}' is a file; give a folder")
    parent = path if folder else path.parent
    # The probe goes into the nearest folder that exists, under a name of its own: a temporary folder (can the
    # missing folders be made?) holding a temporary file. Nothing is made under the path's own names, so runs
    # that start at once with the same output (or one run's processes) never remove a folder from under another.
    base = next(d for d in (parent, *parent.parents) if d.exists())
    try:
        if not base.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        probe_dir = tempfile.mkdtemp(dir=base, prefix=".posttrain-", suffix=".probe")
        try:
            fd, probe = tempfile.mkstemp(dir=probe_dir)
            os.close(fd)
            os.unlink(probe)
        finally:
            os.rmdir(probe_dir)
    except OSError as e:
        raise UserError(f"{what}: cannot write '{path}' ({e.strerror or type(e).__name__})") from None
