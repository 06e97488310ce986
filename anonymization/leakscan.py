r"""Scan a release zip for identifying values: the release's last PHI check.

Ingest collects, per study, every identifying value it saw (every UID,
PatientID, PatientName, accession number and every value the gate refused:
``state_dir/sites/<site>/sensitive/<key>.json``, never released).  This module
searches every byte of a release for any of them: plain files, the decompressed
stream of gzip files (``.nii.gz``: NIfTI header and voxels), every zip member,
recursively (an ``.xlsx`` inside the release zip is itself a zip of XML).

Decisions
---------
* **Exact bytes.**  A leak happens when a value is copied, so it appears byte
  for byte in UTF-8, or escaped the way our writers escape text: XML (openpyxl
  writes ``&`` as ``&amp;``) and JSON (``\"``, ``\uXXXX``).  Matching is
  case-sensitive: case-folding would turn generic words that sites put into
  refused attributes ("DEFAULT", "Radiology") into false alarms on our own
  README, and no writer of ours changes the case of a copied value.
* **No UTF-16.**  Every file the release writes is ASCII/UTF-8 (NIfTI header
  fields, xlsx XML, JSON, Markdown).  In UTF-16-LE the digits and the dot are
  the int16 values 46-57, i.e. soft-tissue Hounsfield units, so UID-like
  patterns would match CT voxels by chance; the cost in false alarms is real
  and the benefit nil.
* **Short values are ignored** (fewer than :data:`MIN_VALUE_LENGTH`
  characters): "M", "CCHS" or "1" would match everywhere.  Dates are *not*
  ignored: a refused date (a birth date) is among the values, and with the
  ``shift`` or ``year`` date policy every original header date is too
  (``load_sensitive_values(..., include_dates=True)``).
* **Numbers need a boundary.**  A value made only of digits and dots (IDs,
  accession numbers, UIDs) matches only where it is not glued to another ASCII
  letter or digit, so a 6-digit ID does not match inside a sha256 digest in
  ``SHA256SUMS`` or inside a longer number in a spreadsheet cell.

Algorithm: streaming, in chunks of :data:`CHUNK_SIZE` bytes with an overlap of
the longest pattern, so memory stays bounded for multi-GB members.  Matching is
multi-pattern and independent of the number of values (hundreds of thousands:
every SOPInstanceUID of a site): numpy filters positions by the first two bytes
(a 64 Ki-entry table), then by the first six bytes (sorted array), and the few
survivors are checked exactly with hash lookups per pattern length.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from xml.sax.saxutils import escape as xml_escape

import numpy as np

from curation.state import StatePaths
from curation.uids import is_dicom_defined

logger = logging.getLogger(__name__)

MIN_VALUE_LENGTH = 6
CHUNK_SIZE = 8 << 20
MAX_NESTING = 4  # zip inside zip inside zip ... (the release: zip > xlsx > xml)
IN_MEMORY_ZIP_LIMIT = 256 << 20  # nested zips up to this size are read into memory
_PREFIX = MIN_VALUE_LENGTH  # bytes compared by the vectorised stage
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_ALNUM = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class UnscannableError(ValueError):
    """A file claims a format (gzip, zip) but cannot be read to the end."""


@dataclass(frozen=True)
class Leak:
    """One occurrence of a sensitive value.

    Attributes
    ----------
    file
        The zip's name, with ``!`` before each member name inside it
        (``x.zip!a/b.xlsx!xl/sharedStrings.xml``).
    offset
        Counted in the stream named by ``kind``'s layer: ``bytes`` (the file
        or member content) or ``gunzip`` (the decompressed gzip stream).
    value_digest
        The sha256 of the value (:func:`value_digest`), so a report never repeats it.
    kind
        ``"<layer>:<encoding>"`` with encoding ``verbatim``, ``xml-escaped``
        or ``json-escaped``.
    """

    file: str
    offset: int
    value_digest: str
    kind: str


@dataclass(frozen=True)
class _Pattern:
    digest: str
    encoding: str
    numeric: bool


def value_digest(value: str) -> str:
    """sha256 hex digest of a sensitive value (what reports carry instead of it).

    Parameters
    ----------
    value
        The value, as searched for.

    Returns
    -------
    str
        The hex digest of its UTF-8 bytes.
    """
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def usable_values(values: Iterable[str]) -> frozenset[str]:
    """The stripped values worth searching for.

    Values shorter than :data:`MIN_VALUE_LENGTH` and UIDs under the DICOM root
    (:data:`curation.uids.DICOM_UID_ROOT`: transfer syntaxes, SOP classes,
    public constants, not identifiers) are dropped.

    Parameters
    ----------
    values
        Sensitive values as recorded.

    Returns
    -------
    frozenset[str]
        The values stripped of surrounding white space, without the dropped ones.
    """
    out = set()
    for value in values:
        text = str(value).strip()
        if len(text) >= MIN_VALUE_LENGTH and not is_dicom_defined(text):
            out.add(text)
    return frozenset(out)


def _is_numeric(value: str) -> bool:
    """Only digits and dots: IDs, accession numbers, UIDs."""
    return value.isascii() and value.replace(".", "").isdigit()


def _encodings(value: str) -> Iterator[tuple[str, bytes]]:
    yield "verbatim", value.encode("utf-8")
    if _is_numeric(value):
        return  # nothing to escape (the bulk of the values: every UID of a site)
    xml = xml_escape(value, {'"': "&quot;", "'": "&apos;"})
    if xml != value:
        yield "xml-escaped", xml.encode("utf-8")
        text_only = xml_escape(value)  # element text: quotes stay as they are
        if text_only != xml:
            yield "xml-escaped", text_only.encode("utf-8")
    for ensure_ascii in (True, False):
        js = json.dumps(value, ensure_ascii=ensure_ascii)[1:-1]
        if js != value:
            yield "json-escaped", js.encode("utf-8")


class Matcher:
    """Multi-pattern exact matcher over byte chunks (build once, scan many files).

    Parameters
    ----------
    values
        Sensitive values; only :func:`usable_values` are searched for, each in
        every encoding a writer of the release could give it.
    """

    def __init__(self, values: Iterable[str]) -> None:
        self.patterns: dict[bytes, list[_Pattern]] = {}
        for value in sorted(usable_values(values)):
            digest = value_digest(value)
            numeric = _is_numeric(value)
            for encoding, data in _encodings(value):
                entries = self.patterns.setdefault(data, [])
                if all(p.digest != digest for p in entries):
                    entries.append(_Pattern(digest, encoding, numeric))
        self.max_length = max((len(p) for p in self.patterns), default=0)
        self.first2 = np.zeros(1 << 16, dtype=bool)
        lengths: dict[bytes, set[int]] = {}
        for data in self.patterns:
            self.first2[data[0] | (data[1] << 8)] = True
            lengths.setdefault(data[:_PREFIX], set()).add(len(data))
        self.lengths = {prefix: tuple(sorted(ls)) for prefix, ls in lengths.items()}
        self.prefixes = np.unique(np.array([_as_uint64(p) for p in self.lengths], dtype=np.uint64))

    @property
    def empty(self) -> bool:
        """True when no value is long enough to search for (nothing can match)."""
        return not self.patterns

    def find(self, buf: bytes) -> Iterator[tuple[int, int, _Pattern]]:
        """Yield every match in ``buf``.

        Parameters
        ----------
        buf
            A chunk of a stream.

        Yields
        ------
        tuple[int, int, _Pattern]
            ``(position, length, pattern)`` for each pattern found at each
            position, not in position order.
        """
        n = len(buf)
        if n < MIN_VALUE_LENGTH or self.empty:
            return
        arr = np.frombuffer(buf, dtype=np.uint8)
        # the first two bytes at every position, as little-endian uint16 read in place:
        # even positions from offset 0, odd positions from offset 1 (no copies)
        even = np.frombuffer(buf, dtype="<u2", count=n // 2)
        odd = np.frombuffer(buf, dtype="<u2", count=(n - 1) // 2, offset=1)
        candidates = np.concatenate(
            (np.flatnonzero(self.first2[even]) * 2, np.flatnonzero(self.first2[odd]) * 2 + 1)
        )
        candidates = candidates[candidates <= n - _PREFIX]
        if candidates.size == 0:
            return
        window = np.zeros(candidates.size, dtype=np.uint64)
        for j in range(_PREFIX):
            window |= arr[candidates + j].astype(np.uint64) << np.uint64(8 * j)
        index = np.searchsorted(self.prefixes, window).clip(max=self.prefixes.size - 1)
        candidates = candidates[self.prefixes[index] == window]
        for pos in candidates.tolist():
            for length in self.lengths[buf[pos : pos + _PREFIX]]:
                entries = self.patterns.get(buf[pos : pos + length])
                if entries is not None:
                    for pattern in entries:
                        yield pos, length, pattern


def _as_uint64(prefix: bytes) -> int:
    return int.from_bytes(prefix, "little")


def _bounded(buf: bytes, start: int, end: int) -> bool:
    """True when the match [start, end) is not glued to an ASCII letter or digit."""
    before = buf[start - 1] if start > 0 else None
    after = buf[end] if end < len(buf) else None
    return before not in _ALNUM and after not in _ALNUM


def _scan_stream(stream: BinaryIO, matcher: Matcher, name: str, layer: str) -> list[Leak]:
    """Scan one byte stream in overlapping chunks; offsets are stream offsets."""
    leaks: list[Leak] = []
    seen: set[tuple[int, str]] = set()
    keep = matcher.max_length + 1  # the longest match plus the byte before it
    tail = b""
    base = 0  # stream offset of tail[0]
    while True:
        data = stream.read(CHUNK_SIZE)
        final = not data
        buf = tail + data
        for pos, length, pattern in matcher.find(buf):
            end = pos + length
            if end >= len(buf) and not final:
                continue  # the byte after it is not read yet: found again in the next buffer
            if end < len(tail):
                continue  # complete in the previous buffer (with the byte after it): reported there
            if pattern.numeric and not _bounded(buf, pos, end):
                continue
            key = (base + pos, pattern.digest)
            if key not in seen:
                seen.add(key)
                leaks.append(Leak(name, base + pos, pattern.digest, f"{layer}:{pattern.encoding}"))
        if final:
            return leaks
        cut = max(len(buf) - keep, 0)
        base += cut
        tail = buf[cut:]


def _scan_gunzip(opener: _Opener, matcher: Matcher, name: str) -> list[Leak]:
    with opener() as raw, gzip.GzipFile(fileobj=raw, mode="rb") as stream:
        try:
            return _scan_stream(stream, matcher, name, "gunzip")
        except (OSError, EOFError, zlib.error) as exc:
            raise UnscannableError(f"{name}: the gzip stream cannot be decompressed to its end ({exc})") from exc


@dataclass(frozen=True)
class _Opener:
    """Reopenable source of a file's or a zip member's bytes."""

    open: Callable[[], BinaryIO]
    size: int

    def __call__(self) -> BinaryIO:
        return self.open()


def _scan_source(opener: _Opener, matcher: Matcher, name: str, depth: int) -> list[Leak]:
    with opener() as stream:
        magic = stream.read(4)
    with opener() as stream:
        leaks = _scan_stream(stream, matcher, name, "bytes")
    if magic.startswith(_GZIP_MAGIC):
        leaks += _scan_gunzip(opener, matcher, name)
    elif magic == _ZIP_MAGIC and depth < MAX_NESTING:
        leaks += _scan_zip_source(opener, matcher, name, depth)
    return leaks


def _scan_zip_source(opener: _Opener, matcher: Matcher, name: str, depth: int) -> list[Leak]:
    leaks: list[Leak] = []
    with opener() as raw:
        source: BinaryIO = raw
        if depth > 0 and opener.size <= IN_MEMORY_ZIP_LIMIT:
            source = io.BytesIO(raw.read())  # a nested zip: seeking a deflated member is slow
        try:
            archive = zipfile.ZipFile(source)
        except zipfile.BadZipFile as exc:
            raise UnscannableError(f"{name}: starts like a zip file but is not one ({exc})") from exc
        with archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                member = _Opener(lambda info=info: archive.open(info), info.file_size)  # type: ignore[misc]
                try:
                    leaks += _scan_source(member, matcher, f"{name}!{info.filename}", depth + 1)
                except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                    raise UnscannableError(f"{name}!{info.filename}: member cannot be read ({exc})") from exc
    return leaks


def _file_opener(path: Path) -> _Opener:
    return _Opener(lambda: open(path, "rb"), path.stat().st_size)


def scan_zip(zip_path: Path, values: Iterable[str]) -> list[Leak]:
    """Search a zip file (its own bytes and every member, recursively) for ``values``.

    Parameters
    ----------
    zip_path
        The zip (e.g. the release); leaks are named ``<zip name>!<member>``.
    values
        Sensitive values (e.g. from :func:`load_sensitive_values`); values
        shorter than :data:`MIN_VALUE_LENGTH` and DICOM-defined UIDs are
        ignored (:func:`usable_values`).

    Returns
    -------
    list[Leak]
        Every occurrence; empty when clean.

    Raises
    ------
    FileNotFoundError
        ``zip_path`` does not exist.
    UnscannableError
        ``zip_path`` (or a member) is not a readable zip/gzip.
    """
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise FileNotFoundError(f"{zip_path}: no such zip file")
    with open(zip_path, "rb") as fh:
        if fh.read(4) != _ZIP_MAGIC:
            raise UnscannableError(f"{zip_path}: not a zip file (no local file header at the start)")
    matcher = Matcher(values)
    leaks = _scan_source(_file_opener(zip_path), matcher, zip_path.name, 0)
    logger.info("leak scan of %s: %d leak(s)", zip_path, len(leaks))
    return leaks


def load_sensitive_values(state_dir: Path, *, include_dates: bool = False) -> frozenset[str]:
    """Every sensitive value ingest recorded under ``state_dir``.

    Reads every study's file (:meth:`curation.state.StatePaths.sensitive_files`).
    A file holds either a JSON list of strings or an object whose ``values``
    is such a list (its other string fields, e.g. ``StudyInstanceUID``, count
    as values too).  An object's ``dates`` list holds every date of the
    study's headers in each form a release can carry it (``YYYYMMDD``,
    ``YYYY-MM-DD``, spreadsheet serial).

    Parameters
    ----------
    state_dir
        The pipeline's state folder.
    include_dates
        Add the ``dates`` lists too: for a release that does not publish its
        dates as delivered (``[release] dates`` ``shift`` or ``year``).

    Returns
    -------
    frozenset[str]
        The values, stripped, empty ones left out.

    Raises
    ------
    ValueError
        A file of another shape (naming the file).
    """
    values: set[str] = set()
    for path in StatePaths(Path(state_dir)).sensitive_files():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        dates: object = []
        if isinstance(data, dict):
            extra = [v for k, v in data.items() if k != "values" and isinstance(v, str)]
            dates = data.get("dates", [])
            data = data.get("values")
            if isinstance(data, list):
                data = data + extra
        if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
            raise ValueError(f'{path}: expected a JSON list of strings or {{"values": [...]}}')
        if not isinstance(dates, list) or not all(isinstance(v, str) for v in dates):
            raise ValueError(f'{path}: "dates" must be a JSON list of strings')
        values.update(v.strip() for v in data if v.strip())
        if include_dates:
            values.update(v.strip() for v in dates if v.strip())
    return frozenset(values)
