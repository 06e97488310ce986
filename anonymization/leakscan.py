r"""Scan a release zip for identifying values: the release's last PHI check.

Ingest collects, per study, every identifying value it saw (every UID,
PatientID, PatientName, accession number and every value the gate refused:
``state_dir/sites/<site>/sensitive/<key>.json``, never released).  This module
searches every byte of a release for any of them: plain files, the decompressed
stream of gzip files (``.nii.gz``: NIfTI header and voxels), every zip member,
recursively (an ``.xlsx`` inside the release zip is itself a zip of XML).

Decisions
---------
* **Case-insensitive.**  A value is found in any letter case: ASCII letters
  fold always; a value with non-ASCII letters is searched as given and in its
  lower, upper and title case.  A copied value may have been re-typed, or
  upper-cased by a tool; a false alarm costs a look, a miss cannot be recalled.
* **Encodings.**  A leak happens when a value is copied, so it appears in
  UTF-8, or escaped the way our writers escape text: XML (openpyxl writes ``&``
  as ``&amp;``) and JSON (``\"``, ``\uXXXX``).  **No UTF-16**: every file the
  release writes is ASCII/UTF-8, and in UTF-16-LE the digits and the dot are
  the int16 values 46-57, soft-tissue Hounsfield units, so UID-like patterns
  would match CT voxels by chance.
* **Long values match anywhere**: a value of :data:`ANYWHERE_LENGTH` or more
  characters (not made of digits) is found wherever its bytes occur.
* **Short values and numbers match as whole tokens.**  Values of
  :data:`MIN_VALUE_LENGTH` to ``ANYWHERE_LENGTH - 1`` characters ("Hans",
  ``"45123"``, the xlsx serial of a date) and values made of digits with
  ``. - / :`` separators (IDs, accession numbers, UIDs, dates as ``YYYYMMDD``
  or ``YYYY-MM-DD``) match only where they are not glued to an ASCII letter or
  digit, so a 6-digit ID does not match inside a sha256 digest in
  ``SHA256SUMS`` or inside a longer number in a spreadsheet cell.  A ``T``
  followed by a digit does not glue a number (ISO 8601 ``2021-03-04T10:15``).
  A match shorter than ``ANYWHERE_LENGTH`` must also sit in text: the
  :data:`TEXT_CONTEXT` bytes on each side decode as printable UTF-8 (NUL
  padding counts as text).  A 3-letter token occurs by chance about every
  2 MB of compressed or float data; in a 100 GB release every short value
  would be a false alarm many times over.  Text written by any writer (XML,
  JSON, Markdown, a NIfTI ``descrip``) passes; binary bytes that happen to
  spell a short value do not.
* **Person names** (values holding the DICOM component separator ``^``, as
  PatientName does) match by their components in any order and with any
  separator: ``MUELLER^HANS`` is found as "Hans Mueller", "mueller, hans" or
  ``hans_mueller``.  The components are the parts between ``^``, ``=``,
  whitespace, ``,``, ``.``, ``_``, ``-``, ``/`` and ``;`` of at least
  :data:`MIN_VALUE_LENGTH` characters (an initial "J" is not needed); every
  one must be present, each separated from the next by up to
  :data:`MAX_SEPARATOR_RUN` ASCII bytes that are not letters or digits.
  The whole match follows the rules above by its length.
* **Shorter values are dropped** (under :data:`MIN_VALUE_LENGTH` characters,
  or without a letter or digit), and so are UIDs under the DICOM root
  (:data:`curation.uids.DICOM_UID_ROOT`: transfer syntaxes, SOP classes:
  public constants, not identifiers).
* **Dates** are among the values when they identify: a refused date (a birth
  date), and with the ``shift`` or ``year`` date policy every original header
  date in its three forms (``curation.state.load_sensitive_values(..., include_dates=True)``).

Algorithm: streaming, in chunks of :data:`CHUNK_SIZE` bytes with an overlap
long enough for the longest match and its context, so memory stays bounded
for multi-GB members.  A chunk is first proven free of match starts where it
can be, over every byte: all its bytes smaller than any byte a pattern can start with
(:attr:`Matcher.min_start`; a label map's voxels, 0..31, against values that start with a
digit, letter or punctuation: one vectorised ``max``), or no byte that can be a pattern's
first followed by one that can be its second (:attr:`Matcher.byte_classes`; a CT's int16
voxels, whose high bytes 0x00-0x0B and 0xFC-0xFF are neither: one ``bytes.translate`` and
one vectorised pass); then only the matches begun before it are decided on its first bytes.
Any other chunk is lower-cased once (``bytes.lower``, ASCII
only).  Matching is multi-pattern and independent of the number of values
(hundreds of thousands: every SOPInstanceUID of a site): numpy filters
positions by the first two bytes (a 64 Ki-entry table), then by the first
three to six bytes (one sorted array per prefix length), and the few
survivors are checked exactly with hash lookups per pattern length, then for
boundaries, text context and name components.  (A compiled regular
expression alternation of 10^5-10^6 values backtracks; pyahocorasick measured
80 MB/s on a phantom release against 450 MB/s for this filter, and
ahocorasick-rs, 400 MB/s, adds a dependency for no gain.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from xml.sax.saxutils import escape as xml_escape

import numpy as np
from isal import igzip, isal_zlib

from curation.uids import is_dicom_defined

logger = logging.getLogger(__name__)

#: Values (and person-name components) shorter than this are not searched.
MIN_VALUE_LENGTH = 3
#: Values at least this long (not made of digits) match anywhere; shorter ones as text tokens.
ANYWHERE_LENGTH = 6
#: Bytes on each side of a short match that must read as text.
TEXT_CONTEXT = 16
#: Longest run of separator bytes between two components of a person name.
MAX_SEPARATOR_RUN = 4
CHUNK_SIZE = 8 << 20
_PROBE = 64 << 10  # bytes of a buffer tried first for a possible match start
MAX_NESTING = 4  # zip inside zip inside zip ... (the release: zip > xlsx > xml)
IN_MEMORY_ZIP_LIMIT = 256 << 20  # nested zips up to this size are read into memory
_PREFIX = ANYWHERE_LENGTH  # longest prefix compared by the vectorised stage
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_ALNUM = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_DIGITS = frozenset(b"0123456789")
#: bytes that may separate the components of a person name: ASCII, not a letter or digit
_SEPARATORS = frozenset(b for b in range(0x80) if b not in _ALNUM)
_NUMBER = re.compile(r"[0-9]+(?:[./:-][0-9]+)*")
_NAME_SPLIT = re.compile(r"[\s^=,._\-/;]+")
_TEXT_CONTROLS = frozenset("\t\n\r\x0b\x0c\x00")

# how a pattern matches (the rule of its value)
_ANYWHERE, _TOKEN, _NAME = 0, 1, 2


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
        ``"<layer>:<encoding>"`` with encoding ``verbatim``, ``xml-escaped``,
        ``json-escaped`` (the value in any letter case) or ``person-name`` (a
        name's components in some order and with some separators).
    """

    file: str
    offset: int
    value_digest: str
    kind: str


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

    Values shorter than :data:`MIN_VALUE_LENGTH`, values without a letter or
    digit and UIDs under the DICOM root (:data:`curation.uids.DICOM_UID_ROOT`:
    transfer syntaxes, SOP classes, public constants, not identifiers) are
    dropped.

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
        if len(text) >= MIN_VALUE_LENGTH and not is_dicom_defined(text) and _has_alnum(text):
            out.add(text)
    return frozenset(out)


def _has_alnum(text: str) -> bool:
    return any(c.isalnum() for c in text)


def _is_numeric(value: str) -> bool:
    """Digits with ``. - / :`` separators: IDs, accession numbers, UIDs, dates."""
    return value.isascii() and _NUMBER.fullmatch(value) is not None


def is_person_name(value: str) -> bool:
    """Whether the leak scan treats ``value`` as a person name (it holds the PN separator ``^``)."""
    return "^" in value


def name_components(value: str) -> tuple[str, ...]:
    """The components of a person name the scan needs (see the module notes), in order."""
    return tuple(part for part in _NAME_SPLIT.split(value) if len(part) >= MIN_VALUE_LENGTH)


def _name_fillers(value: str) -> tuple[str, ...]:
    """The parts of a person name too short to be needed (initials, "Dr"): they may sit between components."""
    return tuple(sorted({p for p in _NAME_SPLIT.split(value) if 0 < len(p) < MIN_VALUE_LENGTH}, key=len, reverse=True))


def _case_variants(value: str) -> set[str]:
    if value.isascii():
        return {value}  # the chunk is lower-cased byte-wise: one form is enough
    return {value, value.lower(), value.upper(), value.title()}


def _encodings(value: str) -> Iterator[tuple[str, bytes]]:
    """(encoding, lower-cased bytes) of every form in which a copy of ``value`` is searched."""
    for variant in sorted(_case_variants(value)):
        yield "verbatim", variant.encode("utf-8").lower()
        xml = xml_escape(variant, {'"': "&quot;", "'": "&apos;"})
        if xml != variant:
            yield "xml-escaped", xml.encode("utf-8").lower()
            text_only = xml_escape(variant)  # element text: quotes stay as they are
            if text_only != xml:
                yield "xml-escaped", text_only.encode("utf-8").lower()
        for ensure_ascii in (True, False):
            js = json.dumps(variant, ensure_ascii=ensure_ascii)[1:-1]
            if js != variant:
                yield "json-escaped", js.encode("utf-8").lower()


@dataclass(frozen=True)
class _Name:
    """A person name: the byte forms of each component (all must be present)."""

    value: int  # index into Matcher.values
    components: tuple[tuple[bytes, ...], ...]  # per component, its lower-cased byte forms, longest first
    fillers: tuple[bytes, ...]  # the name's parts too short to be needed ("j"), allowed between components
    reach: int  # the longest span a match can have


def _is_text(window: bytes, *, cut_at_start: bool) -> bool:
    """Whether ``window`` reads as text: printable UTF-8, whitespace or NUL.

    ``window`` was cut from a longer buffer at its start (``cut_at_start``) or
    its end, so a character split by the cut is dropped first.
    """
    if cut_at_start:
        skip = 0
        while skip < min(3, len(window)) and 0x80 <= window[skip] <= 0xBF:
            skip += 1
        window = window[skip:]
    try:
        text = window.decode("utf-8")
    except UnicodeDecodeError as exc:
        if cut_at_start or exc.reason != "unexpected end of data" or exc.start < len(window) - 3:
            return False
        text = window[: exc.start].decode("utf-8", errors="strict")
    return all(c.isprintable() or c in _TEXT_CONTROLS or c.isspace() for c in text)


class Matcher:
    """Multi-pattern matcher over byte chunks (build once, scan many files).

    Parameters
    ----------
    values
        The sensitive values (see the module notes for how each is searched).
    """

    def __init__(self, values: Iterable[str]) -> None:
        self.values: list[str] = sorted(usable_values(values))
        # lower-cased pattern bytes -> (value index, encoding, rule, name index or -1)
        self.patterns: dict[bytes, list[tuple[int, str, int, int]]] = {}
        self.names: list[_Name] = []
        reach = 0
        for index, value in enumerate(self.values):
            if _is_numeric(value):  # the bulk (every UID of a site): one form, nothing to escape
                self._add(value.encode("ascii"), (index, "verbatim", _TOKEN, -1))
                continue
            rule = _ANYWHERE if len(value) >= ANYWHERE_LENGTH else _TOKEN
            for encoding, data in _encodings(value):
                self._add(data, (index, encoding, rule, -1))
            if is_person_name(value):
                reach = max(reach, self._add_name(index, value))
        self.max_length = max((len(p) for p in self.patterns), default=0)
        #: bytes a match and its surroundings can span: how much of a chunk the next one repeats
        self.overlap = max(self.max_length, reach) + 2 * TEXT_CONTEXT + 8
        self.first2 = np.zeros(1 << 16, dtype=bool)
        # the first three bytes of every pattern, one bit each (2 MiB), for the second filter
        first3 = np.zeros(1 << 24, dtype=bool)
        lengths: dict[bytes, set[int]] = {}
        by_prefix_length: dict[int, set[int]] = {}
        for data in self.patterns:
            self.first2[data[0] | (data[1] << 8)] = True
            first3[data[0] | (data[1] << 8) | (data[2] << 16)] = True
            prefix = data[:_PREFIX]
            lengths.setdefault(prefix, set()).add(len(data))
            by_prefix_length.setdefault(len(prefix), set()).add(int.from_bytes(prefix, "little"))
        self.lengths = {prefix: tuple(sorted(ls)) for prefix, ls in lengths.items()}
        self.prefix_lengths = tuple(sorted(by_prefix_length))
        self.prefixes = {
            n: np.array(sorted(found), dtype=np.uint64) for n, found in by_prefix_length.items()
        }
        self.first3 = np.packbits(first3, bitorder="little")
        #: the smallest byte that can start a match as read (before lower-casing: "A" starts "a...");
        #: a buffer whose bytes are all smaller holds no match start (a label map's voxels, 0..31)
        firsts = {data[0] for data in self.patterns}
        self.min_start = min((f - 32 if 0x61 <= f <= 0x7A else f for f in firsts), default=256)
        #: per byte as read: bit 0 if it can be a pattern's first byte, bit 1 if its second (lower-cased);
        #: a buffer with no first-byte bit followed by a second-byte bit holds no match start (a CT's
        #: int16 voxels: a high byte of 0x00-0x0B or 0xFC-0xFF is neither)
        seconds = {data[1] for data in self.patterns}
        self.byte_classes = bytes(
            (1 if folded in firsts else 0) | (2 if folded in seconds else 0)
            for folded in (b + 32 if 0x41 <= b <= 0x5A else b for b in range(256))
        )

    def _add(self, data: bytes, entry: tuple[int, str, int, int]) -> None:
        entries = self.patterns.setdefault(data, [])
        if entry not in entries:
            entries.append(entry)

    def _add_name(self, index: int, value: str) -> int:
        parts = name_components(value)
        if not parts:
            return 0
        # longest first, so a component that starts another ("ann", "anna") does not shadow it
        forms = tuple(sorted(
            (tuple(sorted({data for _, data in _encodings(part)}, key=len, reverse=True)) for part in parts),
            key=lambda f: len(f[0]), reverse=True,
        ))
        fillers = tuple(part.lower().encode("utf-8") for part in _name_fillers(value))
        gaps = len(forms) - 1
        reach = sum(len(f[0]) for f in forms) + gaps * (MAX_SEPARATOR_RUN + sum(len(f) for f in fillers))
        name = len(self.names)
        self.names.append(_Name(index, forms, fillers, reach))
        for component in forms:
            for data in component:
                self._add(data, (index, "person-name", _NAME, name))
        return reach

    @property
    def empty(self) -> bool:
        """True when no value is long enough to search for (nothing can match)."""
        return not self.patterns

    def _candidates(self, low: bytes) -> list[int]:
        """Positions whose first bytes start some pattern (vectorised pre-filter)."""
        n = len(low)
        if n < MIN_VALUE_LENGTH or self.empty:
            return []
        # the first two bytes at every position, as little-endian uint16 read in place:
        # even positions from offset 0, odd positions from offset 1 (no copies)
        even = np.frombuffer(low, dtype="<u2", count=n // 2)
        odd = np.frombuffer(low, dtype="<u2", count=(n - 1) // 2, offset=1)
        candidates = np.concatenate(
            (np.flatnonzero(self.first2[even]) * 2, np.flatnonzero(self.first2[odd]) * 2 + 1)
        )
        candidates = candidates[candidates <= n - MIN_VALUE_LENGTH]
        if candidates.size == 0:
            return []
        arr = np.frombuffer(low, dtype=np.uint8)
        three = (arr[candidates].astype(np.uint32) | (arr[candidates + 1].astype(np.uint32) << 8)
                 | (arr[candidates + 2].astype(np.uint32) << 16))
        candidates = candidates[(self.first3[three >> 3] >> (three & 7).astype(np.uint8)) & 1 == 1]
        if candidates.size == 0:
            return []
        # the first six bytes at each candidate (zero past the end of the buffer)
        window = np.zeros(candidates.size, dtype=np.uint64)
        for j in range(_PREFIX):
            at = candidates + j
            byte = arr[np.minimum(at, n - 1)].astype(np.uint64)
            byte[at >= n] = 0
            window |= byte << np.uint64(8 * j)
        keep = np.zeros(candidates.size, dtype=bool)
        for length in self.prefix_lengths:
            prefixes = self.prefixes[length]
            masked = window & np.uint64((1 << (8 * length)) - 1) if length < 8 else window
            index = np.searchsorted(prefixes, masked).clip(max=prefixes.size - 1)
            keep |= prefixes[index] == masked
        return np.sort(candidates[keep]).tolist()

    def find(self, low: bytes, *, decided: int = 0, final: bool = True) -> Iterator[tuple[int, int, str]]:
        """Yield ``(position, value index, encoding)`` for every match in ``low``.

        Parameters
        ----------
        low
            A lower-cased buffer (``bytes.lower()``) of a stream.
        decided
            Matches whose surroundings end within the first ``decided`` bytes
            were reported for the previous buffer (its overlap): skipped.
        final
            Whether ``low`` ends the stream; if not, matches whose surroundings
            run past its end are left for the next buffer.
        """
        for pos in self._candidates(low):
            found = list(self._matches_at(low, pos, decided=decided, final=final))
            # a name found as written is reported as such, not again as its components
            exact = {value for value, encoding in found if encoding != "person-name"}
            for value, encoding in found:
                if encoding != "person-name" or value not in exact:
                    yield pos, value, encoding

    def _matches_at(self, low: bytes, pos: int, *, decided: int, final: bool) -> Iterator[tuple[int, str]]:
        n = len(low)
        for length in self._lengths_at(low, pos):
            for value, encoding, rule, name in self.patterns.get(low[pos : pos + length], ()):
                # the end of everything the decision reads: the match, the byte after it, its context
                if rule == _NAME:
                    need = pos + self.names[name].reach + TEXT_CONTEXT + 2
                else:
                    need = pos + length + (2 if rule == _TOKEN else 0)
                    if rule == _TOKEN and length < ANYWHERE_LENGTH:
                        need += TEXT_CONTEXT
                if need <= decided or (need > n and not final):
                    continue
                if rule == _NAME:
                    end = _name_end(low, pos, self.names[name])
                    if end is None or not self._accept(low, pos, end, token=end - pos < ANYWHERE_LENGTH):
                        continue
                elif not self._accept(low, pos, pos + length, token=rule == _TOKEN):
                    continue
                yield value, encoding

    def _lengths_at(self, low: bytes, pos: int) -> Iterator[int]:
        """Lengths of the patterns whose prefix (3 to 6 bytes) starts at ``pos``."""
        for prefix_length in self.prefix_lengths:
            yield from self.lengths.get(low[pos : pos + prefix_length], ())

    @staticmethod
    def _accept(low: bytes, start: int, end: int, *, token: bool) -> bool:
        """Whether a match of [start, end) counts: tokens need boundaries, short ones text around them."""
        if not token:
            return True
        if start > 0 and low[start - 1] in _ALNUM:
            return False
        if end < len(low) and low[end] in _ALNUM:
            iso_time = low[end] == 0x74 and end + 1 < len(low) and low[end + 1] in _DIGITS  # "...04T10:15"
            if not (iso_time and low[end - 1] in _DIGITS):
                return False
        if end - start >= ANYWHERE_LENGTH:
            return True
        return _is_text(low[max(0, start - TEXT_CONTEXT) : start], cut_at_start=True) and _is_text(
            low[end : end + TEXT_CONTEXT], cut_at_start=False
        )


def _name_end(low: bytes, pos: int, name: _Name) -> int | None:
    """End of a match at ``pos`` of every component of ``name`` (any order, gaps between), else None."""
    remaining = list(range(len(name.components)))
    at = pos
    while True:
        for k in remaining:
            form = next((f for f in name.components[k] if low.startswith(f, at)), None)
            if form is not None:
                remaining.remove(k)
                at += len(form)
                break
        else:
            return None
        if not remaining:
            return at
        at = _gap_end(low, at, name.fillers)


def _gap_end(low: bytes, at: int, fillers: tuple[bytes, ...]) -> int:
    """End of the gap between two name components: separator bytes and the name's short parts."""
    separators = 0
    unused = list(fillers)
    while True:
        if at < len(low) and low[at] in _SEPARATORS and separators < MAX_SEPARATOR_RUN:
            at += 1
            separators += 1
            continue
        for filler in unused:
            after = at + len(filler)
            if low.startswith(filler, at) and (after >= len(low) or low[after] not in _ALNUM):
                unused.remove(filler)
                at = after
                break
        else:
            return at


def _scan_stream(stream: BinaryIO, matcher: Matcher, name: str, layer: str) -> list[Leak]:
    """Scan one byte stream in overlapping chunks; offsets are stream offsets."""
    leaks: list[Leak] = []
    seen: set[tuple[int, int, str]] = set()
    exact: set[tuple[int, int]] = set()  # (offset, value) found as written
    tail = b""  # the end of the previous buffer, lower-cased
    base = 0  # stream offset of tail[0]
    while True:
        data = stream.read(CHUNK_SIZE)
        final = not data
        skip = len(data) > matcher.overlap and _no_match_starts(data, matcher)
        # with ``skip`` no match starts in ``data``: only the tail's pending matches are decided, and
        # they read at most ``overlap`` bytes of it; the next tail is its last ``overlap`` bytes
        low = tail + (data[: matcher.overlap] if skip else data).lower()
        for pos, value, encoding in matcher.find(low, decided=len(tail), final=final):
            key = (base + pos, value, encoding)
            if key in seen or (encoding == "person-name" and key[:2] in exact):
                continue
            seen.add(key)
            if encoding != "person-name":
                exact.add(key[:2])
            leaks.append(Leak(name, base + pos, value_digest(matcher.values[value]), f"{layer}:{encoding}"))
        if final:
            return leaks
        if skip:
            base += len(tail) + len(data) - matcher.overlap
            tail = data[-matcher.overlap :].lower()
            continue
        cut = max(len(low) - matcher.overlap, 0)
        base += cut
        tail = low[cut:]


def _no_match_starts(data: bytes, matcher: Matcher) -> bool:
    """Whether no match can start at any byte of ``data`` but its last (a proof over every byte; False if unsure).

    Every pattern has at least two bytes: a match starts where a byte that can
    be a first byte is followed by one that can be a second byte.  A match
    starting on the last byte runs into the next buffer, whose scan repeats
    this one's end (the overlap) and finds it there.
    """
    if _pair_may_start(data[:_PROBE], matcher):  # most buffers that hold a start show it early (compressed data)
        return False
    if int(np.frombuffer(data, dtype=np.uint8).max()) < matcher.min_start:  # one cheap pass: a label map
        return True
    return not _pair_may_start(data, matcher)


def _pair_may_start(data: bytes, matcher: Matcher) -> bool:
    """Whether a byte of ``data`` that can be a pattern's first is followed by one that can be its second."""
    classes = np.frombuffer(data.translate(matcher.byte_classes), dtype=np.uint8)
    return bool(np.any(classes[:-1] & (classes[1:] >> 1) & 1))


def _scan_gunzip(opener: _Opener, matcher: Matcher, name: str) -> list[Leak]:
    with opener() as raw, igzip.IGzipFile(fileobj=raw, mode="rb") as stream:  # ISA-L: 2x zlib's speed
        try:
            return _scan_stream(stream, matcher, name, "gunzip")
        except (OSError, EOFError, zlib.error, isal_zlib.error) as exc:
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
        Sensitive values (e.g. from :func:`curation.state.load_sensitive_values`), searched
        as the module notes say; values shorter than :data:`MIN_VALUE_LENGTH`
        and DICOM-defined UIDs are ignored (:func:`usable_values`).

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


# ---------------------------------------------------------------------------
# scanning a zip piece by piece (release.verify reads each member once for every check)


def context_bytes(matcher: Matcher) -> int:
    """How many bytes around a match decide whether it counts (the match and the bytes beside it).

    Parameters
    ----------
    matcher
        The matcher.

    Returns
    -------
    int
        A scan of a region of a file that reads this many bytes beyond each end
        of the region finds exactly the matches a scan of the whole file finds
        starting in that region.
    """
    return matcher.overlap  # the longest match or name, the bytes beside it and their text context


def scan_region(data: bytes, matcher: Matcher, name: str, *, base: int, start: int, end: int) -> list[Leak]:
    """The leaks starting in bytes ``[start, end)`` of a file, as :func:`scan_zip` finds them in the whole file.

    Parameters
    ----------
    data
        The file's bytes from offset ``base``, covering ``[start, end)`` and
        :func:`context_bytes` on each side (less only at the file's ends).
    matcher
        The matcher.
    name
        The file's name in the leaks (the zip's name for its own bytes).
    base, start, end
        File offsets: of ``data[0]``, and of the region whose leaks are wanted.

    Returns
    -------
    list[Leak]
        Layer ``bytes``, offsets in the file, in offset order.
    """
    leaks = _scan_stream(io.BytesIO(data), matcher, name, "bytes")
    found = [dataclasses.replace(leak, offset=leak.offset + base) for leak in leaks]
    return sorted((leak for leak in found if start <= leak.offset < end), key=lambda leak: leak.offset)


class _ViewReader(io.RawIOBase):
    """A read-only stream over a buffer in memory, without copying it whole (``io.BytesIO`` does, but for bytes)."""

    def __init__(self, data: bytes | memoryview) -> None:
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(self._pos + size, len(self._view))
        data = bytes(self._view[self._pos : end])
        self._pos = end
        return data


def scan_member(content: bytes, matcher: Matcher, name: str, *, gunzipped: bytes | memoryview | None = None,
                ) -> list[Leak]:
    """The leaks :func:`scan_zip` finds in one member of a zip, from the member's bytes in memory.

    Parameters
    ----------
    content
        The member's (uncompressed) bytes.
    matcher
        The matcher.
    name
        ``<zip name>!<member name>``.
    gunzipped
        For a gzip member, its stream already inflated by the caller (so it is
        inflated once for every check); None to inflate it here.

    Returns
    -------
    list[Leak]
        The member's own bytes, then its gzip stream or its members (a nested zip).

    Raises
    ------
    UnscannableError
        A gzip or zip member that cannot be read to its end.
    """
    if gunzipped is None or not content.startswith(_GZIP_MAGIC):
        return _scan_source(_Opener(lambda: io.BytesIO(content), len(content)), matcher, name, 1)
    leaks = _scan_stream(io.BytesIO(content), matcher, name, "bytes")
    return leaks + _scan_stream(_ViewReader(gunzipped), matcher, name, "gunzip")
