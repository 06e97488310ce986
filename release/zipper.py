"""A deterministic, streamed, atomically written zip.

Every member gets the same fixed time and permissions, members are written in
sorted order, NIfTI members are stored (they are gzip already) and the rest
deflated at zlib's default level: the same member bytes always give the same
zip bytes.  Members are copied in 1 MiB chunks through ``ZipFile.open(info,
"w")``, so memory stays flat however large a member is, and the zip is written
to a temporary file beside the target and renamed only when complete.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from curation.atomic import atomic_output

logger = logging.getLogger(__name__)

#: The time stamped on every member (the earliest a zip can hold).
FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
#: Regular file, rw-r--r--.
FILE_MODE = 0o100644
_CHUNK = 1 << 20
# zipfile switches to ZIP64 by itself only when 1.05 * file_size > 2 GiB - 1; members
# of 1 GiB and more get ZIP64 headers explicitly (the size is known up front, so the
# choice is deterministic).
_ZIP64_FROM = 1 << 30


class MemberChangedError(RuntimeError):
    """A member's source did not have the content recorded for it."""


@dataclass(frozen=True)
class ZipMember:
    """One member: its name in the zip and its content, a file or (small) bytes.

    Attributes
    ----------
    arcname
        The member's name in the zip (relative, ``/``-separated).
    path
        The file holding the content, or None when ``data`` is given.
    data
        The content itself, or None when ``path`` is given.
    sha256
        When given, the digest the source must have; it is checked while the
        member is streamed and the zip is abandoned on a mismatch.

    Raises
    ------
    ValueError
        When not exactly one of ``path`` and ``data`` is given, or ``arcname``
        is absolute, has a backslash or a ``..`` part.
    """

    arcname: str
    path: Path | None = None
    data: bytes | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError(f"{self.arcname}: give exactly one of path and data")
        if self.arcname.startswith("/") or "\\" in self.arcname or ".." in self.arcname.split("/"):
            raise ValueError(f"{self.arcname!r} is not a relative zip member name")

    @property
    def stored(self) -> bool:
        """NIfTI members are gzip already: storing them costs nothing and saves the time."""
        return self.arcname.endswith(".nii.gz")

    def size(self) -> int:
        """The member's size in bytes (of the file as it is now).

        Returns
        -------
        int
            ``len(data)``, or the size of ``path``.
        """
        return len(self.data) if self.data is not None else Path(self.path).stat().st_size  # type: ignore[arg-type]

    def open(self) -> IO[bytes]:
        """A binary stream of the member's content.

        Returns
        -------
        IO[bytes]
            A new stream from the start; the caller closes it.
        """
        if self.data is not None:
            return io.BytesIO(self.data)
        return open(self.path, "rb")  # type: ignore[arg-type]


def member_info(arcname: str, size: int, *, stored: bool) -> zipfile.ZipInfo:
    """The fixed :class:`zipfile.ZipInfo` of a member (time, permissions, method).

    Parameters
    ----------
    arcname
        The member's name.
    size
        Its uncompressed size in bytes.
    stored
        True to store it (NIfTI, already gzip), False to deflate it.

    Returns
    -------
    zipfile.ZipInfo
        Time :data:`FIXED_DATE_TIME`, mode :data:`FILE_MODE`, unix attributes.
    """
    info = zipfile.ZipInfo(arcname, date_time=FIXED_DATE_TIME)
    info.create_system = 3  # unix, so the permission bits mean what they say
    info.external_attr = FILE_MODE << 16
    info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    info.file_size = size
    return info


def write_zip(
    dest: Path,
    members: Sequence[ZipMember],
    *,
    progress: Callable[[str, int], None] | None = None,
    on_complete: Callable[[Path], None] | None = None,
) -> dict[str, str]:
    """Write ``members`` into the zip ``dest``, deterministically and atomically.

    Parameters
    ----------
    dest
        The zip to write; it appears under this name only once complete.
    members
        The members, in any order (they are written sorted by name).
    progress
        Called after each member with its name and size.
    on_complete
        Called with the complete temporary file just before it is renamed to
        ``dest`` (to record what it is first: a file under ``dest`` is then
        always recorded); when it raises, nothing is renamed.

    Returns
    -------
    dict
        Member name -> sha256 of its content, as written.

    Raises
    ------
    ValueError
        When two members share a name.
    MemberChangedError
        When a member's content does not match its recorded ``sha256``.
    """
    ordered = sorted(members, key=lambda m: m.arcname)
    names = [m.arcname for m in ordered]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{dest}: members listed twice: {', '.join(dupes)}")
    digests: dict[str, str] = {}
    with atomic_output(dest) as tmp:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
            for member in ordered:
                digests[member.arcname] = _write_member(zf, member)
                if progress is not None:
                    progress(member.arcname, member.size())
        if on_complete is not None:
            on_complete(tmp)
    logger.info("%s: %d members written", dest, len(ordered))
    return digests


def _write_member(zf: zipfile.ZipFile, member: ZipMember) -> str:
    size = member.size()
    info = member_info(member.arcname, size, stored=member.stored)
    digest = hashlib.sha256()
    written = 0
    with member.open() as src, zf.open(info, "w", force_zip64=size >= _ZIP64_FROM) as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            written += len(chunk)
    where = member.path if member.path is not None else member.arcname
    if written != size:
        raise MemberChangedError(f"{where}: {written} bytes read, {size} expected (changed while zipping)")
    actual = digest.hexdigest()
    if member.sha256 is not None and actual != member.sha256:
        raise MemberChangedError(
            f"{where}: content sha256 {actual} is not the recorded {member.sha256} "
            f"(the file changed after it was prepared; rebuild the case)"
        )
    return actual
