"""Atomic file output: write to a temporary file in the target folder, then rename.

A crash (or ``kill -9``) at any moment leaves either the old file or the new
one, never a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary name keeps the final suffixes (``.nii.gz``, ``.xlsx``) so that
    libraries choosing a format by extension write the right one.  On error the
    temporary file is removed and the target is left untouched.

    Parameters
    ----------
    path
        The file to write; its folder is created if missing.

    Yields
    ------
    Path
        The temporary file (``.<stem>.<random>.tmp<suffix>``, already
        created and empty) for the caller to write.

    Raises
    ------
    OSError
        When the folder or the temporary file cannot be created, or the
        rename fails; whatever the ``with`` block raises is re-raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or a new file in ``folder`` durable (fsync the folder itself).

    Parameters
    ----------
    folder
        The folder whose entries changed.
    """
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_replace(src: str | Path, dst: str | Path) -> None:
    """Rename ``src`` onto ``dst`` and fsync both folders, so the rename survives a power loss.

    Parameters
    ----------
    src, dst
        Paths on one file system.
    """
    os.replace(src, dst)
    for folder in {Path(src).parent, Path(dst).parent}:
        fsync_dir(folder)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically.

    Parameters
    ----------
    path
        The file to write (see :func:`atomic_output`).
    data
        Its whole content.
    """
    atomic_write_pieces(path, (data,))


def atomic_write_pieces(path: str | Path, pieces: Iterable[bytes | memoryview]) -> None:
    """Write the concatenation of ``pieces`` to ``path`` atomically, without joining them first.

    Parameters
    ----------
    path
        The file to write (see :func:`atomic_output`).
    pieces
        Its content, in order (bytes, or any buffer such as a memoryview of a mapped file).
    """
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fh.writelines(pieces)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically.

    Parameters
    ----------
    path
        The file to write (see :func:`atomic_output`).
    text
        Its whole content.
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically.

    Parameters
    ----------
    path
        The file to write (see :func:`atomic_output`).
    obj
        A JSON-serialisable value (e.g. from :func:`curation.model.to_jsonable`).
    """
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's content, read in 1 MiB chunks.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    str
        64 lower-case hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
