"""What a file's content gave last time, trusted while the file's stat is unchanged (git's index).

A site's drop holds hundreds of thousands of files that almost never change; a
run that re-reads and re-hashes every byte of them costs hours.  The index
keeps, per file, what reading it gave (its content digest and header values,
or why it was skipped) together with the file's ``(size, mtime_ns, ctime_ns,
inode)``, and a later run reuses it when the file's stat is the same.

Why this catches every change: writing a file's content sets its ctime (and
mtime) to the time of the write, and nothing a user can do sets ctime back;
replacing a file gives it another inode or another ctime.  So an unchanged
stat means an unchanged file, except for one case, the one git calls *racy*:
a file written again within the same timestamp granule as the stat we
recorded (a file system with 1 s or 2 s timestamps, or the 4 ms clock tick of
Linux), before or while it was read.  Its stat can be the same although its
content is not.  Like git, such entries are not trusted: an entry whose mtime
or ctime is less than :data:`RACY_SECONDS` before the moment its file was
read is read again on the next run (and then recorded as clean once old
enough).  This also covers a file server's clock a little ahead of or behind
ours.

``rehash`` (the CLI's ``--rehash``) ignores every entry: every file is read and
hashed again and the cache rewritten.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.atomic import atomic_write_text

logger = logging.getLogger(__name__)

#: An entry whose file changed less than this long before it was read is read again.
RACY_SECONDS = 2.0
#: Written into the cache; a cache of another format (or another :data:`FORMAT`) is ignored.
FORMAT = 1


@dataclass(frozen=True)
class FileStat:
    """What decides whether a file may have changed.

    Attributes
    ----------
    size, mtime_ns, ctime_ns, inode
        From ``os.stat``.
    """

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStat:
        """The stat of ``st``.

        Parameters
        ----------
        st
            ``os.stat`` of the file.

        Returns
        -------
        FileStat
        """
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class StatCache:
    """Per-file values keyed by path, reused while the file's stat is unchanged and not racy.

    Each file's value may come with a *shared* value that many files have in
    common (the header values of a series' slices): it is stored once.

    Parameters
    ----------
    path
        The cache file (JSON), or None for no cache (every file is read).
    rehash
        Ignore what the cache holds (every file is read again); it is rewritten.
    context
        A JSON value describing how the values were made (e.g. the tags read);
        a cache made another way is ignored.
    """

    def __init__(self, path: Path | None, *, rehash: bool = False, context: Any = None) -> None:
        self.path = path
        self.context = context
        self.old_files: dict[str, list[Any]] = {}
        self.old_shared: list[Any] = []
        if path is not None and not rehash:
            self.old_files, self.old_shared = self._load(path, context)
        self.files: dict[str, list[Any]] = {}
        self.shared: list[Any] = []
        self._ids: dict[str, int] = {}  # JSON of a shared value -> its index in self.shared
        self._moved: dict[int, int] = {}  # index in old_shared -> index in shared
        self.reused = 0
        self.read = 0

    @staticmethod
    def _load(path: Path, context: Any) -> tuple[dict[str, list[Any]], list[Any]]:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}, []
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            logger.warning("%s: unreadable stat cache (%s); every file is read again", path, exc)
            return {}, []
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("context") != context:
            return {}, []
        files, shared = doc.get("files"), doc.get("shared")
        if not isinstance(files, dict) or not isinstance(shared, list):
            return {}, []
        return files, shared

    def _share(self, value: Any) -> int:
        if value is None:
            return -1
        key = json.dumps(value, sort_keys=True, separators=(",", ":"))
        if key not in self._ids:
            self._ids[key] = len(self.shared)
            self.shared.append(value)
        return self._ids[key]

    def get(self, key: str, stat: FileStat) -> tuple[Any, Any] | None:
        """What was recorded for ``key`` if its file's stat is the one recorded and was not racy.

        Parameters
        ----------
        key
            The file's path.
        stat
            Its stat now.

        Returns
        -------
        tuple or None
            ``(value, shared value)``, or None when the file must be read.
        """
        entry = self.old_files.get(key)
        if entry is None or len(entry) != 7 or entry[:4] != [stat.size, stat.mtime_ns, stat.ctime_ns, stat.inode]:
            return None
        if max(stat.mtime_ns, stat.ctime_ns) > entry[4] - int(RACY_SECONDS * 1e9):
            return None  # racy: changed too close to when it was read
        old_id = entry[6]
        shared = None
        if isinstance(old_id, int) and 0 <= old_id < len(self.old_shared):
            shared = self.old_shared[old_id]
            if old_id not in self._moved:
                self._moved[old_id] = self._share(shared)
            new_id = self._moved[old_id]
        elif old_id == -1:
            new_id = -1
        else:
            return None  # a damaged entry
        self.files[key] = [*entry[:6], new_id]
        self.reused += 1
        return entry[5], shared

    def put(self, key: str, stat: FileStat, value: Any, *, read_ns: int, shared: Any = None) -> None:
        """Record what reading ``key`` gave.

        Parameters
        ----------
        key
            The file's path.
        stat
            Its stat taken *before* it was read (a change during the read then
            shows as another stat next time).
        value
            A JSON value of this file.
        read_ns
            ``time.time_ns()`` taken before the file was read.
        shared
            A JSON value many files have in common, stored once (None: none).
        """
        self.files[key] = [stat.size, stat.mtime_ns, stat.ctime_ns, stat.inode, read_ns, value, self._share(shared)]
        self.read += 1

    def save(self) -> None:
        """Write this run's entries (files not seen are dropped), atomically, if anything changed."""
        if self.path is None:
            return
        if self.read == 0 and len(self.files) == len(self.old_files) and self.path.is_file():
            return  # every entry reused as it was: nothing to write
        doc = {"format": FORMAT, "context": self.context, "shared": self.shared, "files": self.files}
        atomic_write_text(self.path, json.dumps(doc, separators=(",", ":")))


def now_ns() -> int:
    """The wall clock in ns (what :meth:`StatCache.put` wants as ``read_ns``)."""
    return time.time_ns()
