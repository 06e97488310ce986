"""``petct-release verify``: check a release zip, on its own or against the state it was built from.

Every member is read from the zip file once (its local header and data, one
read), checked against the zip's CRC, hashed, and a ``.nii.gz`` member is
inflated once (ISA-L); every check and the leak scan then work on those bytes
in memory.  The work is split by ranges of members, so it runs on as many
workers as there are:

1. :func:`plan_verify` reads the zip's directory and its small files (labels,
   spreadsheets, checksums, card), checks the layout and the spreadsheets, reads
   the build manifest, and cuts the other members into :class:`VerifyChunk` s
   of about :data:`CHUNK_BYTES` of work each;
2. :func:`verify_chunk` checks the members of one chunk (``plan.job(i)``:
   integrity, header, voxel type, label values, defacing, leak scan), in any
   process, in any order;
3. :func:`finish_verify` puts the chunks' findings together with the checks
   that span members (a label map on its CT's grid, SHA256SUMS, the manifest).

:func:`verify_release` is the three in one process.  Memory holds one member
at a time per worker.  Each problem found is one line of
:attr:`VerifyReport.problems`, in the same order however the work was split;
the report is ``ok`` only when there is none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import io
import json
import logging
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from isal import isal_zlib
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from anonymization.deface import cylinder_values
from anonymization.leakscan import (
    Leak,
    Matcher,
    UnscannableError,
    context_bytes,
    scan_member,
    scan_region,
    scan_zip,
)
from curation.atomic import sha256_file
from curation.config import DatePolicy
from curation.labels import LabelTableError, ReleaseLabels, release_labels_from_dict
from curation.model import CATEGORIES, DefaceCylinder, from_jsonable
from curation.nifti import gunzip, inflated_size
from curation.registry import format_case_number
from curation.state import StatePaths, load_sensitive_values
from release.assemble import MANIFEST_FORMAT, SUMS_NAME
from release.checksums import parse_sha256sums
from release.parts import (
    FOLDERS,
    LOOSE_FILES,
    METADATA_ZIP,
    parse_part_name,
    release_files_of,
    split_sums,
)
from release.spreadsheets import check_column_names, read_details_xlsx

logger = logging.getLogger(__name__)

#: About this much work (:func:`_work`: stored gzip bytes weighted, plus bytes inflated) per
#: chunk: a bench-size case (CT 512x512x320, PET, seven label maps) is about 1.4 GB of work,
#: so a release of N such cases makes about 0.7N chunks (1,100 for 1,597 cases), enough for
#: the workers to share evenly, and a chunk is about 3.5 s of work against a process-pool
#: task's 0.1-0.2 s of Prefect's own cost (at 512 MiB a chunk took 0.8-1.0 s: 15 % of it).
CHUNK_BYTES = 2 << 30

_TOP_FILES = ("CT-details.xlsx", "PT-details.xlsx", "README.md", SUMS_NAME, "labels.json")
_IMAGE_RE = re.compile(r"^imaging-data/images/(CT|PT)/([0-9]{4,})\.nii\.gz$")
_LABEL_RE = re.compile(r"^imaging-data/ground-truth/([^/]+)/([0-9]{4,})\.nii\.gz$")
_LAYOUT_DIRS = (
    "",
    "imaging-data/",
    "imaging-data/images/",
    "imaging-data/images/CT/",
    "imaging-data/images/PT/",
    "imaging-data/ground-truth/",
    *(f"imaging-data/ground-truth/{c}/" for c in CATEGORIES),
)
_KINDS = ("CT", "PT", *CATEGORIES)
_EXPECTED_DTYPE = {"CT": np.dtype(np.int16), "PT": np.dtype(np.float32), "label": np.dtype(np.uint8)}
_AFFINE_TOL_MM = 1e-3
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # PK\x03\x04 ... name length, extra length
_LOCAL_SIGNATURE = b"PK\x03\x04"
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify_release`.

    Attributes
    ----------
    problems
        One sentence per problem, naming the member or case and the evidence.
    cases
        How many cases the zip holds.
    checked
        The checks that ran (``leak-scan`` and ``defacing`` only with a state folder).
    members
        How many members the zip holds (all parts together, for a release in parts).
    part_digests
        For a release in parts: ``(file name, sha256)`` of every zip, as read.
    """

    problems: tuple[str, ...]
    cases: int
    checked: tuple[str, ...]
    members: int = 0
    part_digests: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        """True when no check found a problem."""
        return not self.problems


@dataclass(frozen=True)
class MemberRef:
    """Where one member's bytes are in the zip file, and what the release says it is.

    Attributes
    ----------
    name
        The member's name.
    order
        Its position in the zip's directory.
    header_offset, region_end
        Its local header's offset, and where the next member's local header
        (or the central directory) begins: its bytes in the file.
    compress_type, compress_size, file_size, crc
        From the central directory.
    case, kind
        For an image of the layout: its case number and ``CT``, ``PT`` or the
        category; None for any other member (only read for the leak scan).
    """

    name: str
    order: int
    header_offset: int
    region_end: int
    compress_type: int
    compress_size: int
    file_size: int
    crc: int
    case: str | None = None
    kind: str | None = None


@dataclass(frozen=True)
class VerifyChunk:
    """A range of members (in the zip's order) checked by one :func:`verify_chunk` call.

    Attributes
    ----------
    members
        The members.
    work
        What checking the members costs (:func:`_work`), estimated from the gzip streams' sizes.
    zip_path
        The zip the members are in (``""``: the plan's zip); for a release in parts, one of its parts.
    zip_index
        Which of the release's zips (0 for a single zip), to order the findings.
    digest_file
        True for the job of hashing a whole part (no members): the part's sha256.
    """

    members: tuple[MemberRef, ...]
    work: int
    zip_path: str = ""
    zip_index: int = 0
    digest_file: bool = False


@dataclass(frozen=True)
class VerifyPlan:
    """What :func:`plan_verify` found and what is left to do, for the chunks and :func:`finish_verify`.

    Attributes
    ----------
    zip_path, state_dir, leak_scan
        The zip, the state folder (or None), whether the leak scan runs.
    top
        The release's top folder in the zip.
    members
        How many members the zip holds.
    cases
        The case numbers of the zip's images, in order.
    images
        (case, kind) -> member name, for every image of the layout.
    labels
        The release's ``labels.json``, or None when it is missing or invalid.
    defacing
        Case -> (recorded cylinder, clear_labels), from the build manifest.
    chunks
        The members left to read, cut into chunks.
    problems
        What the plan found before the cases (layout, small files, labels.json, manifest).
    sheet_problems
        What the spreadsheets check found.
    sums
        SHA256SUMS's bytes, or None.
    digests
        sha256 of the members read by the plan (path under the top folder -> hex).
    file_names
        Every member that is not a folder.
    manifest
        The build manifest, or None.
    scan_problems
        Why the leak scan could not run, if so.
    leaks
        Leak-scan findings of the plan (see :func:`finish_verify` for the order).
    checked
        The checks that ran.
    release
        For a release in parts: its folder's name (``<name>-<version>``, which
        names its build manifest); ``""`` for a single zip.
    parts
        For a release in parts: the file names of its zips found in the folder.
    """

    zip_path: str
    state_dir: str | None
    leak_scan: bool
    top: str
    members: int
    cases: tuple[str, ...]
    images: dict[tuple[str, str], str]
    labels: ReleaseLabels | None
    defacing: dict[str, tuple[DefaceCylinder, bool]]
    chunks: tuple[VerifyChunk, ...]
    problems: tuple[str, ...]
    sheet_problems: tuple[str, ...]
    sums: bytes | None
    digests: dict[str, str]
    file_names: tuple[str, ...]
    manifest: dict[str, Any] | None
    scan_problems: tuple[str, ...]
    leaks: tuple[tuple[tuple[int, ...], str], ...]
    checked: tuple[str, ...]
    release: str = ""
    parts: tuple[str, ...] = ()

    def job(self, index: int) -> ChunkJob:
        """The work of chunk ``index``, for :func:`verify_chunk`.

        Parameters
        ----------
        index
            Which of :attr:`chunks`.

        Returns
        -------
        ChunkJob
            The chunk's members and what their checks need.
        """
        chunk = self.chunks[index]
        members = chunk.members
        cases = {m.case for m in members}
        return ChunkJob(chunk.zip_path or self.zip_path, self.state_dir, self.leak_scan, members, self.labels,
                        {case: cyl for case, cyl in self.defacing.items() if case in cases},
                        zip_index=chunk.zip_index, release=self.release, digest_file=chunk.digest_file)


@dataclass(frozen=True)
class ChunkJob:
    """What :func:`verify_chunk` needs for one chunk (small: it travels to a worker).

    Attributes
    ----------
    zip_path, state_dir, leak_scan
        As in the plan.
    members
        The chunk's members.
    labels
        The release's ``labels.json`` (None: label values are not checked).
    defacing
        The recorded cylinders of the chunk's cases.
    zip_index, digest_file
        As in :class:`VerifyChunk`.
    release
        The name the build manifest is found by, when it is not the zip's
        (a part of a release in parts: the folder's name).
    """

    zip_path: str
    state_dir: str | None
    leak_scan: bool
    members: tuple[MemberRef, ...]
    labels: ReleaseLabels | None
    defacing: dict[str, tuple[DefaceCylinder, bool]]
    zip_index: int = 0
    release: str = ""
    digest_file: bool = False


@dataclass(frozen=True)
class MemberResult:
    """What :func:`verify_chunk` found in one member.

    Attributes
    ----------
    name, order
        The member.
    digest
        sha256 of its content, or None when it could not be read intact (or
        is not an image of the layout: only images are hashed by the chunks).
    shape, affine
        The image's grid, when it was readable.
    read_problems, value_problems, defacing_problems
        The member's problems: reading and header, label values, defacing.
    """

    name: str
    order: int
    digest: str | None = None
    shape: tuple[int, ...] | None = None
    affine: tuple[tuple[float, ...], ...] | None = None
    read_problems: tuple[str, ...] = ()
    value_problems: tuple[str, ...] = ()
    defacing_problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChunkResult:
    """What :func:`verify_chunk` found in one chunk.

    Attributes
    ----------
    members
        One result per member, in the chunk's order.
    leaks
        Leak-scan findings (see :func:`finish_verify` for the order).
    file_digest
        For a ``digest_file`` job: ``(the zip's file name, its sha256)``.
    """

    members: tuple[MemberResult, ...]
    leaks: tuple[tuple[tuple[int, ...], str], ...] = ()
    file_digest: tuple[str, str] | None = None


# ---------------------------------------------------------------------------
# reading


def _rel(name: str, top: str) -> str:
    return name[len(top) + 1 :]


def _read_region(fh: Any, start: int, end: int, margin: int, size: int) -> tuple[int, bytes]:
    """Bytes ``[start - margin, end + margin)`` of an open file (clamped to it), and where they begin."""
    base = max(start - margin, 0)
    return base, os.pread(fh.fileno(), min(end + margin, size) - base, base)


def _member_content(region: bytes, base: int, ref: MemberRef) -> tuple[memoryview, int]:
    """A member's stored bytes, inflated if it was deflated, checked against the directory's CRC; where its data start.

    ``region`` holds the file's bytes from ``base``, including the member's local
    header.  The offset is the file's, of the member's data (for a stored
    member, of the content itself).

    Raises
    ------
    zipfile.BadZipFile
        A damaged local header, an unknown compression or a CRC mismatch.
    """
    at = ref.header_offset - base
    head = region[at : at + _LOCAL_HEADER.size]
    if len(head) < _LOCAL_HEADER.size or head[:4] != _LOCAL_SIGNATURE:
        raise zipfile.BadZipFile(f"bad local file header at offset {ref.header_offset}")
    fields = _LOCAL_HEADER.unpack(head)
    name_length, extra_length = fields[-2], fields[-1]
    start = at + _LOCAL_HEADER.size
    if region[start : start + name_length] != ref.name.encode("utf-8") and region[
        start : start + name_length
    ] != ref.name.encode("cp437", errors="replace"):
        raise zipfile.BadZipFile(f"file name in directory {ref.name!r} and local header differ")
    start += name_length + extra_length
    data = memoryview(region)[start : start + ref.compress_size]
    if len(data) != ref.compress_size:
        raise zipfile.BadZipFile(f"truncated: {len(data)} of {ref.compress_size} bytes")
    if ref.compress_type == zipfile.ZIP_STORED:
        content = data
    elif ref.compress_type == zipfile.ZIP_DEFLATED:
        content = memoryview(isal_zlib.decompress(data, wbits=-15))
    else:
        raise zipfile.BadZipFile(f"compression method {ref.compress_type} is not stored or deflated")
    if len(content) != ref.file_size or isal_zlib.crc32(content) != ref.crc:
        raise zipfile.BadZipFile(f"Bad CRC-32 for file {ref.name!r}")
    return content, base + start


def _nifti(payload: bytes | memoryview) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The image of a NIfTI-1 stream and its voxels (scaled as nibabel reads them), without a copy.

    Raises
    ------
    ValueError, nibabel.filebasedimages.ImageFileError, nibabel.spatialimages.HeaderDataError
        Not a NIfTI-1 stream, or shorter than its header says.
    """
    # nibabel parses the header and its extensions, which end at vox_offset: only those bytes are copied
    head = bytes(payload[:352])
    end = int(nib.Nifti1Header(head[:348], check=False).get_data_offset()) if len(head) == 352 else len(payload)
    img = nib.Nifti1Image.from_bytes(bytes(payload[: max(end, 352)]))
    proxy = img.dataobj  # where the file's voxels are (the image's own header says offset 0)
    shape, dtype, offset = tuple(proxy.shape), np.dtype(proxy.dtype), int(proxy.offset)
    count = int(np.prod(shape, dtype=np.int64))
    if offset + count * dtype.itemsize > len(payload):
        raise ValueError(f"{len(payload) - offset} bytes of voxel data, the header says {count * dtype.itemsize}")
    data = np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(shape, order="F")
    slope, inter = proxy.slope, proxy.inter
    if (slope, inter) != (1.0, 0.0):
        data = data * slope + inter
    return img, data


# ---------------------------------------------------------------------------
# the leak scan's values


_MATCHERS: dict[tuple[Any, ...], Matcher] = {}


def _matcher(zip_path: Path, state_dir: Path) -> Matcher:
    """The matcher of the state's sensitive values, built once per process for the same value files.

    Raises
    ------
    ValueError
        When the values cannot be read.
    """
    files = StatePaths(state_dir).sensitive_files()
    dates = _dates_are_secret(zip_path, state_dir)
    key = (str(state_dir), dates, tuple((str(p), *_stamp(p)) for p in files))
    if key not in _MATCHERS:
        _MATCHERS.clear()
        _MATCHERS[key] = Matcher(load_sensitive_values(state_dir, include_dates=dates))
    return _MATCHERS[key]


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def _leak_line(leak: Leak) -> str:
    return f"{leak.file}: an identifying value ({leak.kind}, sha256 {leak.value_digest[:12]}…) at offset {leak.offset}"


def _unscannable_line(exc: Exception) -> str:
    return f"the leak scan could not read the whole zip: {exc}"


def _zip_leaks(leaks: Iterable[Leak], zip_index: int = 0) -> list[tuple[tuple[int, ...], str]]:
    """Leaks in the zip's own bytes: first, by zip (a release in parts), in offset order."""
    return [((0, zip_index, leak.offset), _leak_line(leak)) for leak in leaks]


def _member_leaks(order: int, leaks: Iterable[Leak]) -> list[tuple[tuple[int, ...], str]]:
    """Leaks in a member: after the zip's own, by member, in the scan's order."""
    return [((1, order, n), _leak_line(leak)) for n, leak in enumerate(leaks)]


def _scan_member_or_say_why(
    ref: MemberRef, content: bytes | None, zip_name: str, matcher: Matcher, *,
    gunzipped: bytes | memoryview | None = None, error: Exception | None = None,
) -> tuple[list[tuple[tuple[int, ...], str]], list[Leak] | None]:
    """The member's leak lines, and the leaks of its own bytes (layer ``bytes``; None when it was not scanned)."""
    name = f"{zip_name}!{ref.name}"
    if content is None:
        return [((1, ref.order, 0), _unscannable_line(UnscannableError(f"{name}: member cannot be read ({error})")))], None
    try:
        found = scan_member(bytes(content), matcher, name, gunzipped=gunzipped)
    except UnscannableError as exc:
        return [((1, ref.order, 0), _unscannable_line(exc))], None
    return _member_leaks(ref.order, found), [leak for leak in found if leak.file == name and leak.kind.startswith("bytes:")]


def _zip_bytes_leaks(region: bytes, base: int, ref: MemberRef, matcher: Matcher, zip_name: str, margin: int,
                     stored: tuple[int, int, list[Leak]] | None) -> list[Leak]:
    """The leaks starting in the zip's own bytes of one member (``[header_offset, region_end)``), in offset order.

    ``stored`` is, for a stored member whose content was scanned as such, the
    file offset and length of its data and the leaks of that scan.  The data
    are the content: a match starting ``margin`` bytes or more inside both
    ends decides on the same bytes in both scans (:func:`context_bytes`), so
    it is taken from the content's scan, and only the local header and the
    two ends of the data are scanned again here (the CT's 60 MB are not
    scanned twice).
    """
    if stored is None or stored[1] < 4 * margin:
        return scan_region(region, matcher, zip_name, base=base, start=ref.header_offset, end=ref.region_end)
    start, length, member_leaks = stored
    inner_start, inner_end = start + margin, start + length - margin
    head = scan_region(region[: inner_start + margin - base], matcher, zip_name, base=base,
                       start=ref.header_offset, end=inner_start)
    tail_base = inner_end - margin
    tail = scan_region(region[tail_base - base :], matcher, zip_name, base=tail_base, start=inner_end,
                       end=ref.region_end)
    inner = sorted((dataclasses.replace(leak, file=zip_name, offset=start + leak.offset) for leak in member_leaks
                    if margin <= leak.offset < length - margin), key=lambda leak: leak.offset)
    return head + inner + tail


# ---------------------------------------------------------------------------
# 1. the plan


def _top_folder(infos: Iterable[zipfile.ZipInfo]) -> str:
    """The top folder most members are under."""
    counts: dict[str, int] = {}
    for info in infos:
        top = info.filename.split("/", 1)[0]
        counts[top] = counts.get(top, 0) + 1
    return max(sorted(counts), key=lambda t: counts[t])


def _layout(infos: list[zipfile.ZipInfo], zip_path: Path, problems: list[str], *, top: str | None = None,
            seen: dict[str, str] | None = None, whole: bool = True) -> tuple[
    str, dict[str, zipfile.ZipInfo], dict[tuple[str, str], zipfile.ZipInfo]
]:
    """The top folder, the top files and the images by (case, kind); layout problems appended.

    For one part of a release in parts: ``top`` is the release's, ``seen``
    (member name -> the part it was found in) spans the parts, and with
    ``whole`` False a missing top file is not this zip's problem.
    """
    tops = sorted({i.filename.split("/", 1)[0] for i in infos})
    if top is None:
        top = _top_folder(infos)
        if len(tops) > 1:
            problems.append(f"{zip_path}: members under more than one top folder: {', '.join(tops)}")
    elif tops != [top]:
        problems.append(f"{zip_path}: members under {', '.join(t for t in tops if t != top)}, "
                        f"not the release's top folder {top}")
    seen = {} if seen is None else seen
    files: dict[str, zipfile.ZipInfo] = {}
    images: dict[tuple[str, str], zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        if name in seen:
            where = seen[name]
            problems.append(f"{name}: appears twice in the zip" if where == zip_path.name
                            else f"{name}: appears in both {where} and {zip_path.name}")
            continue
        seen[name] = zip_path.name
        if not name.startswith(top + "/"):
            continue  # reported above as another top folder
        rel = _rel(name, top)
        if info.is_dir():
            if rel not in _LAYOUT_DIRS:
                problems.append(f"{name}: a folder outside the release layout")
            continue
        if info.flag_bits & 0x1:
            problems.append(f"{name}: encrypted")
            continue
        if rel in _TOP_FILES:
            files[rel] = info
            continue
        match = _IMAGE_RE.match(rel) or _LABEL_RE.match(rel)
        if match is None:
            problems.append(f"{name}: not part of the release layout")
            continue
        kind, case = match.groups()
        if kind not in ("CT", "PT") and kind not in CATEGORIES:
            problems.append(f"{name}: {kind!r} is not a label category (expected one of {', '.join(CATEGORIES)})")
            continue
        if format_case_number(int(case)) != case:
            problems.append(f"{name}: case number {case!r} is not written as the release writes it")
            continue
        images[(case, kind)] = info
    for rel in _TOP_FILES if whole else ():
        if rel not in files:
            problems.append(f"{top}/{rel}: missing")
    return top, files, images


def _read_labels(top: str, data: bytes | None, problems: list[str]) -> ReleaseLabels | None:
    if data is None:
        return None
    try:
        return release_labels_from_dict(json.loads(data.decode("utf-8")), f"{top}/labels.json")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{top}/labels.json: not valid UTF-8 JSON ({exc})")
    except LabelTableError as exc:
        problems.append(str(exc))
    return None


def _load_manifest(zip_path: Path, state_dir: Path, problems: list[str]) -> dict[str, Any] | None:
    path = StatePaths(state_dir).release_manifest(zip_path.name)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"{path}: no build manifest for {zip_path.name} in the state folder")
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{path}: the build manifest cannot be read ({exc})")
        return None
    case_keys = {"case", "defaced", "cylinder", "clear_labels"}
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != MANIFEST_FORMAT
        or not isinstance(manifest.get("members"), dict)
        or not isinstance(manifest.get("cases"), list)
        or not all(isinstance(c, dict) and case_keys <= set(c) for c in manifest["cases"])
    ):
        problems.append(f"{path}: not a build manifest of format {MANIFEST_FORMAT} (written by assemble_release)")
        return None
    return manifest


def _defacing(manifest: dict[str, Any], problems: list[str]) -> dict[str, tuple[DefaceCylinder, bool]]:
    found = {}
    for entry in manifest["cases"]:
        if entry["defaced"]:
            if entry["cylinder"] is None:
                problems.append(f"case {entry['case']}: defaced but no cylinder recorded in the manifest")
                continue
            found[entry["case"]] = (from_jsonable(DefaceCylinder, entry["cylinder"]), bool(entry["clear_labels"]))
    return found


def _check_spreadsheets(top: str, cases: Sequence[str], small: dict[str, bytes | None]) -> list[str]:
    problems: list[str] = []
    cases = list(cases)
    for rel in ("CT-details.xlsx", "PT-details.xlsx"):
        data = small.get(rel)
        if data is None:
            continue
        name = f"{top}/{rel}"
        try:
            header, rows = read_details_xlsx(io.BytesIO(data))
        except Exception as exc:  # openpyxl raises many types for a broken workbook
            problems.append(f"{name}: not a readable workbook ({type(exc).__name__}: {exc})")
            continue
        try:
            check_column_names(header)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
        if not header or header[0] != "Case":
            problems.append(f"{name}: the first column is {header[:1]!r}, expected 'Case'")
            continue
        listed = [str(r[0]) if r and r[0] is not None else "" for r in rows]
        if len(listed) != len(cases):
            problems.append(f"{name}: {len(listed)} rows for {len(cases)} cases")
        if listed != cases:
            extra = [c for c in listed if c not in cases]
            missing = [c for c in cases if c not in listed]
            if extra or missing:
                problems.append(f"{name}: rows for cases not in the zip {extra[:10]}, no row for cases {missing[:10]}")
            elif len(listed) == len(cases):
                problems.append(f"{name}: rows are not in case order")
            else:
                problems.append(f"{name}: a case has more than one row")
    return problems


def _refs(infos: list[zipfile.ZipInfo], central_directory: int, images: dict[int, tuple[str, str]],
          base: int = 0) -> list[MemberRef]:
    """Every member's place in the file: its bytes run to the next local header (by offset).

    ``images`` gives (case, kind) by position in ``infos`` (a name given twice is one image);
    ``base`` is added to each position (the members of earlier parts of a release in parts).
    """
    starts = sorted({i.header_offset for i in infos} | {central_directory})
    following = {start: starts[n + 1] for n, start in enumerate(starts[:-1])}
    refs = []
    for order, info in enumerate(infos):
        case, kind = images.get(order, (None, None))
        refs.append(MemberRef(
            name=info.filename, order=base + order, header_offset=info.header_offset,
            region_end=following.get(info.header_offset, central_directory),
            compress_type=info.compress_type, compress_size=info.compress_size, file_size=info.file_size,
            crc=info.CRC, case=case, kind=kind,
        ))
    return refs


#: What checking a stored gzip byte costs against an inflated byte: it is read, CRC-checked, hashed,
#: scanned and inflated (bench case on one core: the CT, 62 MB stored and 168 MB inflated, 1.60 s;
#: a label map, 0.6 MB stored and 168 MB inflated, 0.26 s)
STORED_GZIP_WEIGHT = 8


def _work(fh: Any, ref: MemberRef, size: int) -> int:
    """What checking a member costs, in inflated bytes: its stored bytes (weighted) plus its bytes inflated.

    A gzip stream's size is in its last 4 bytes, a file of gzip members' in each
    member's (:func:`curation.nifti.inflated_size`).  A stored gzip image's
    bytes weigh :data:`STORED_GZIP_WEIGHT` each, so a case's CT gets a chunk of
    its own rather than a label map beside it.
    """
    work = ref.compress_size + ref.file_size
    if ref.kind is None or ref.compress_type != zipfile.ZIP_STORED or ref.file_size < 18:
        return work
    work = STORED_GZIP_WEIGHT * ref.compress_size
    head = os.pread(fh.fileno(), _LOCAL_HEADER.size, ref.header_offset)
    if len(head) < _LOCAL_HEADER.size or head[:4] != _LOCAL_SIGNATURE:
        return work
    fields = _LOCAL_HEADER.unpack(head)
    start = ref.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]
    end = start + ref.compress_size
    if end > size:
        return work
    members = inflated_size(lambda at, count: os.pread(fh.fileno(), count, start + at), ref.compress_size)
    if members is not None:  # written by curation.nifti: the sum of its members' sizes
        return work + members
    (inflated,) = struct.unpack("<I", os.pread(fh.fileno(), 4, end - 4).ljust(4, b"\0"))
    return work + inflated


def _cut(refs: Sequence[MemberRef], works: Sequence[int], chunks: int | None,
         workers: int = 1) -> tuple[VerifyChunk, ...]:
    """Members into chunks of about equal work (``chunks`` of them, or :data:`CHUNK_BYTES` each).

    Without ``chunks``, their number is rounded up to a multiple of ``workers``,
    so the workers finish together (7 chunks on 2 workers would leave one
    worker idle for the last).

    The members go largest first, each to the chunk with the least work so far
    (a chunk's members need not be neighbours: each is read on its own), so a
    case's CT gets a chunk of its own when its work is a chunk's share; in a
    chunk they stay in zip order.  The chunks come largest first: workers
    taking them in turn then finish close together (a large chunk started
    last would finish alone).
    """
    if not refs:
        return ()
    total = sum(works)
    if chunks is not None:
        count = chunks
    else:
        workers = max(1, int(workers))
        count = -(-max(1, -(-total // CHUNK_BYTES)) // workers) * workers
    count = max(1, min(count, len(refs)))
    bins: list[list[int]] = [[] for _ in range(count)]
    loads = [0] * count
    emptiest = [(0, k) for k in range(count)]  # a heap of (work so far, chunk): ties go to the first chunk
    for at in sorted(range(len(refs)), key=lambda i: (-works[i], i)):
        load, k = heapq.heappop(emptiest)
        bins[k].append(at)
        loads[k] = load + works[at]
        heapq.heappush(emptiest, (loads[k], k))
    out = [VerifyChunk(tuple(refs[i] for i in sorted(members)), load)
           for members, load in zip(bins, loads, strict=True) if members]
    return tuple(sorted(out, key=lambda chunk: (-chunk.work, chunk.members[0].order)))


def _leak_matcher(release: Path, state: Path | None, scan: bool) -> tuple[Matcher | None, list[str]]:
    """The leak scan's matcher (None when it does not run) and why it cannot run, if so."""
    if not scan or state is None:
        return None, []
    try:
        matcher = _matcher(release, state)
    except ValueError as exc:
        return None, [f"the sensitive values cannot be read, so the leak scan did not run: {exc}"]
    if matcher.empty:
        return None, [f"{state}: no sensitive values recorded; the leak scan has nothing to look for"]
    return matcher, []


def _read_small(zf: zipfile.ZipFile, files: dict[str, zipfile.ZipInfo], problems: list[str]) -> tuple[
    dict[str, bytes | None], dict[str, Exception], dict[str, str]
]:
    """The small files, read whole through zipfile's CRC: content (None: unreadable), errors, sha256."""
    small: dict[str, bytes | None] = {}
    unreadable: dict[str, Exception] = {}
    digests: dict[str, str] = {}
    for rel, info in sorted(files.items()):
        try:
            data = zf.read(info)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
            problems.append(f"{info.filename}: cannot be read intact ({exc})")
            small[rel], unreadable[rel] = None, exc
        else:
            small[rel] = data
            digests[rel] = hashlib.sha256(data).hexdigest()
    return small, unreadable, digests


def _scan_outside_chunks(
    fh: Any, zip_name: str, refs: Sequence[MemberRef], read_here: set[int], start_dir: int, size: int,
    matcher: Matcher, small: dict[str, bytes | None], unreadable: dict[str, Exception], top: str, zip_index: int,
) -> list[tuple[tuple[int, ...], str]]:
    """Leaks the plan finds: in a zip's own bytes outside the chunks' members, and in the small files.

    The zip's own bytes: before the first member, the directory, and the
    members read by the plan (folders, small files).
    """
    margin = context_bytes(matcher)
    leaks: list[tuple[tuple[int, ...], str]] = []
    first = min((r.header_offset for r in refs), default=start_dir)
    regions = [(0, first), (start_dir, size)]
    regions += [(r.header_offset, r.region_end) for r in refs if r.order in read_here]
    for start, end in regions:
        if end > start:
            base, data = _read_region(fh, start, end, margin, size)
            leaks += _zip_leaks(scan_region(data, matcher, zip_name, base=base, start=start, end=end), zip_index)
    for ref in refs:
        rel = _rel(ref.name, top)
        if ref.order in read_here and rel in small:
            leaks += _scan_member_or_say_why(ref, small[rel], zip_name, matcher, error=unreadable.get(rel))[0]
    return leaks


@dataclass(frozen=True)
class _ReleaseFacts:
    labels: ReleaseLabels | None
    cases: tuple[str, ...]
    manifest: dict[str, Any] | None
    defacing: dict[str, tuple[DefaceCylinder, bool]]
    sheet_problems: tuple[str, ...]
    checked: tuple[str, ...]


def _release_facts(top: str, images: dict[tuple[str, str], Any], small: dict[str, bytes | None], release: Path,
                   state: Path | None, scan: bool, problems: list[str]) -> _ReleaseFacts:
    """labels.json, the cases, the build manifest and its cylinders, the spreadsheets' check."""
    labels = _read_labels(top, small.get("labels.json"), problems)
    cases = tuple(sorted({case for case, _ in images}, key=int))
    checked = ["cases", "geometry", "dtypes", "label-values"]
    manifest = _load_manifest(release, state, problems) if state is not None else None
    defacing = _defacing(manifest, problems) if manifest is not None else {}
    if manifest is not None:
        checked.append("defacing")
    checked += ["spreadsheets", "checksums"]
    if scan:
        checked.append("leak-scan")
    return _ReleaseFacts(labels, cases, manifest, defacing, tuple(_check_spreadsheets(top, cases, small)),
                         tuple(checked))


def plan_verify(
    zip_path: Path, *, state_dir: Path | None = None, leak_scan: bool = True, chunks: int | None = None,
    workers: int = 1,
) -> VerifyPlan:
    """Read a release zip's directory and small files, check what they show, and cut the rest into chunks.

    Parameters
    ----------
    zip_path
        The release zip, or a folder of parts (then :func:`plan_verify_parts`).
    state_dir
        The state folder it was built from, or None (see :func:`verify_release`).
    leak_scan
        With ``state_dir``: scan for the state's identifying values.
    chunks
        How many chunks to cut the members into; None for one per
        :data:`CHUNK_BYTES` of work, rounded up to a multiple of ``workers``.
    workers
        How many workers will check the chunks at once.

    Returns
    -------
    VerifyPlan
        What was found so far and the chunks left (none when the zip cannot be read).
    """
    zip_path = Path(zip_path)
    if zip_path.is_dir():
        return plan_verify_parts(zip_path.name, release_files_of(zip_path), state_dir=state_dir,
                                 leak_scan=leak_scan, folder=zip_path)
    state = Path(state_dir) if state_dir is not None else None
    scan = leak_scan and state is not None
    problems: list[str] = []
    empty = dict(zip_path=str(zip_path), state_dir=str(state) if state else None, leak_scan=scan, top="",
                 members=0, cases=(), images={}, labels=None, defacing={}, chunks=(), sheet_problems=(), sums=None,
                 digests={}, file_names=(), manifest=None, scan_problems=(), leaks=(), checked=())
    if not zip_path.is_file():
        return VerifyPlan(problems=(f"{zip_path}: no such file",), **empty)  # type: ignore[arg-type]
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        return VerifyPlan(problems=(f"{zip_path}: not a readable zip ({exc})",), **empty)  # type: ignore[arg-type]
    with zf, open(zip_path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        infos = zf.infolist()
        if not infos:
            return VerifyPlan(problems=(f"{zip_path}: the zip is empty",), **empty)  # type: ignore[arg-type]
        top, files, images = _layout(infos, zip_path, problems)
        position = {id(info): order for order, info in enumerate(infos)}
        refs = _refs(infos, zf.start_dir, {position[id(info)]: key for key, info in images.items()})
        planned = {position[id(info)] for info in files.values()}  # the small files, read here
        folders = {r.order for r in refs if infos[r.order].is_dir()}
        matcher, scan_problems = _leak_matcher(zip_path, state, scan)
        small, unreadable, digests = _read_small(zf, files, problems)
        leaks = (_scan_outside_chunks(fh, zip_path.name, refs, planned | folders, zf.start_dir, size, matcher,
                                      small, unreadable, top, 0) if matcher is not None else [])
        facts = _release_facts(top, images, small, zip_path, state, scan, problems)
        rest = [r for r in refs if r.order not in planned and r.order not in folders]
        chunk_list = _cut(rest, [_work(fh, r, size) for r in rest], chunks, workers)
    return VerifyPlan(
        zip_path=str(zip_path), state_dir=str(state) if state else None, leak_scan=scan and matcher is not None,
        top=top, members=len(infos), cases=facts.cases,
        images={key: info.filename for key, info in images.items()}, labels=facts.labels, defacing=facts.defacing,
        chunks=chunk_list, problems=tuple(problems), sheet_problems=facts.sheet_problems,
        sums=small.get(SUMS_NAME), digests=digests,
        file_names=tuple(i.filename for i in infos if not i.is_dir()), manifest=facts.manifest,
        scan_problems=tuple(scan_problems), leaks=tuple(leaks), checked=("integrity", "layout", *facts.checked),
    )


def plan_verify_parts(
    release: str,
    files: Mapping[str, Path],
    *,
    state_dir: Path | None = None,
    leak_scan: bool = True,
    folder: Path | None = None,
) -> VerifyPlan:
    """Plan the verification of a release in parts: every part as :func:`plan_verify` does, and the whole.

    The parts' members are cut into chunks part by part (a chunk never spans
    two parts) and every zip gets one more job, hashing it whole; all of them
    are one pool of jobs for :func:`verify_chunk`.  What only the whole shows
    is checked here and in :func:`finish_verify`: each member in the part its
    folder and case range name, no member in two parts, every case with its CT,
    PT and seven maps across the parts, the loose files equal to
    ``metadata.zip``'s, and the parts' sha256 against ``SHA256SUMS``.

    Parameters
    ----------
    release
        The release's folder name, ``<name>-<version>`` (it names the build manifest).
    files
        File name -> path of every file of the release (the folder's files, or
        during a build the staged and published ones).
    state_dir, leak_scan
        As :func:`plan_verify`.
    folder
        The folder, for the problem sentences (default: ``release``).

    Returns
    -------
    VerifyPlan
        The plan, with ``release`` and ``parts`` set.
    """
    where = str(folder) if folder is not None else release
    state = Path(state_dir) if state_dir is not None else None
    scan = leak_scan and state is not None
    problems: list[str] = []
    data_parts = sorted((n for n in files if parse_part_name(n)),
                        key=lambda n: (FOLDERS.index(parse_part_name(n)[0]), parse_part_name(n)[1]))  # type: ignore[index]
    for name in sorted(files):
        if not (name in data_parts or name == METADATA_ZIP or name in LOOSE_FILES):
            problems.append(f"{where}/{name}: not a file of a release in parts (a part <Folder>_<first>-<last>.zip, "
                            f"{METADATA_ZIP}, or one of {', '.join(LOOSE_FILES)})")
    if METADATA_ZIP not in files:
        problems.append(f"{where}/{METADATA_ZIP}: missing")
    if not data_parts:
        problems.append(f"{where}: no part (<Folder>_<first>-<last>.zip)")
    matcher, scan_problems = _leak_matcher(Path(release), state, scan)

    opened: list[tuple[str, zipfile.ZipFile, list[zipfile.ZipInfo]]] = []
    for name in ([METADATA_ZIP] if METADATA_ZIP in files else []) + data_parts:
        try:
            zf = zipfile.ZipFile(files[name])
        except (zipfile.BadZipFile, OSError) as exc:
            problems.append(f"{files[name]}: not a readable zip ({exc})")
            continue
        if not zf.infolist():
            problems.append(f"{files[name]}: the zip is empty")
        opened.append((name, zf, zf.infolist()))
    top = _top_folder(i for _, _, infos in opened for i in infos) if any(infos for _, _, infos in opened) else ""

    seen: dict[str, str] = {}
    images: dict[tuple[str, str], zipfile.ZipInfo] = {}
    small: dict[str, bytes | None] = {}
    unreadable: dict[str, Exception] = {}
    digests: dict[str, str] = {}
    leaks: list[tuple[tuple[int, ...], str]] = []
    chunk_list: list[VerifyChunk] = []
    hashing: list[VerifyChunk] = []
    file_names: list[str] = []
    base = 0
    for index, (name, zf, infos) in enumerate(opened):
        path = files[name]
        with zf, open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            hashing.append(VerifyChunk((), size, zip_path=str(path), zip_index=index, digest_file=True))
            if not infos:
                continue
            _, top_files, part_images = _layout(infos, path, problems, top=top, seen=seen, whole=False)
            spec = parse_part_name(name)
            if spec is not None:
                kind, first, last = spec
                for info in top_files.values():
                    problems.append(f"{info.filename}: in {name}; the metadata files belong in {METADATA_ZIP}")
                for (case, image_kind), info in sorted(part_images.items()):
                    if image_kind != kind or not first <= int(case) <= last:
                        problems.append(f"{info.filename}: in {name}, which holds {kind} of cases "
                                        f"{format_case_number(first)}-{format_case_number(last)}")
                top_files = {}  # misplaced metadata files are checked as members only
            else:
                for info in part_images.values():
                    problems.append(f"{info.filename}: in {METADATA_ZIP}, which holds only the metadata files")
            images.update(part_images)
            position = {id(info): order for order, info in enumerate(infos)}
            refs = _refs(infos, zf.start_dir, {position[id(info)]: key for key, info in part_images.items()}, base)
            planned = {base + position[id(info)] for info in top_files.values()}
            folders = {r.order for r in refs if infos[r.order - base].is_dir()}
            if top_files:
                part_small, part_unreadable, part_digests = _read_small(zf, top_files, problems)
                small.update(part_small)
                unreadable.update(part_unreadable)
                digests.update(part_digests)
            if matcher is not None:
                leaks += _scan_outside_chunks(fh, name, refs, planned | folders, zf.start_dir, size, matcher,
                                              small, unreadable, top, index)
            rest = [r for r in refs if r.order not in planned and r.order not in folders]
            chunk_list += [dataclasses.replace(c, zip_path=str(path), zip_index=index)
                           for c in _cut(rest, [_work(fh, r, size) for r in rest], None)]
            file_names += [i.filename for i in infos if not i.is_dir()]
            base += len(infos)
    for rel in _TOP_FILES:
        if top and rel not in small and METADATA_ZIP in files:
            problems.append(f"{top}/{rel}: missing from {METADATA_ZIP}")
    # the loose files: the same bytes as metadata.zip's, and released bytes of their own for the leak scan
    for n, rel in enumerate(LOOSE_FILES):
        if rel not in files:
            problems.append(f"{where}/{rel}: missing (beside the parts)")
            continue
        data = files[rel].read_bytes()
        if rel in small and small[rel] is not None and data != small[rel]:
            problems.append(f"{where}/{rel}: differs from {top}/{rel} in {METADATA_ZIP}")
        if matcher is not None:
            try:
                found = scan_member(data, matcher, f"{release}/{rel}")
            except UnscannableError as exc:
                leaks.append(((2, n, 0), _unscannable_line(exc)))
            else:
                leaks += [((2, n, k), _leak_line(leak)) for k, leak in enumerate(found)]
    facts = _release_facts(top, images, small, Path(release), state, scan, problems)
    return VerifyPlan(
        zip_path=where, state_dir=str(state) if state else None, leak_scan=scan and matcher is not None,
        top=top, members=base, cases=facts.cases, images={key: info.filename for key, info in images.items()},
        labels=facts.labels, defacing=facts.defacing, chunks=(*hashing, *chunk_list), problems=tuple(problems),
        sheet_problems=facts.sheet_problems, sums=small.get(SUMS_NAME), digests=digests,
        file_names=tuple(file_names), manifest=facts.manifest, scan_problems=tuple(scan_problems),
        leaks=tuple(leaks), checked=("integrity", "layout", "parts", *facts.checked), release=release,
        parts=tuple(name for name, _, _ in opened),
    )


# ---------------------------------------------------------------------------
# 2. a chunk


def _check_header(name: str, img: nib.Nifti1Image, role: str) -> list[str]:
    problems = []
    dtype = img.get_data_dtype()
    if dtype != _EXPECTED_DTYPE[role]:
        problems.append(f"{name}: stored as {dtype}, expected {_EXPECTED_DTYPE[role]}")
    if len(img.shape) != 3:
        problems.append(f"{name}: {len(img.shape)}-D image of shape {img.shape}, expected 3-D")
    slope, inter = img.dataobj.slope, img.dataobj.inter
    if role != "PT" and not (slope == 1.0 and inter == 0.0):
        problems.append(f"{name}: has a scaling (scl_slope {slope}, scl_inter {inter}); stored values must be final")
    hdr = img.header
    for field_name in ("descrip", "aux_file", "intent_name", "db_name"):
        if field_name in hdr and np.asarray(hdr[field_name]).tobytes().strip(b"\x00 "):
            problems.append(f"{name}: header field {field_name} is not empty")
    if hdr.extensions:
        problems.append(f"{name}: carries {len(hdr.extensions)} header extension(s)")
    return problems


def _check_values(name: str, data: np.ndarray, category: str, labels: ReleaseLabels) -> list[str]:
    allowed = set(labels.categories[category]) | {0}
    if data.dtype == np.uint8:
        lut = np.zeros(256, dtype=bool)
        lut[sorted(allowed)] = True
        top = int(data.max()) if data.size else 0
        if lut[: top + 1].all():  # one cheap max() proves the usual map clean
            return []
        outside = ~lut[data]  # a lookup table: one byte-sized pass, no sort, no int64 copy
        bad = np.unique(data[outside]).tolist() if outside.any() else []
    else:
        bad = [v for v in np.unique(data).tolist() if v not in allowed]
    if bad:
        shown = ", ".join(str(v) for v in bad[:10])
        return [f"{name}: values {shown} are not in labels.json for {category}"]
    return []


def _check_defaced(case: str, name: str, img: nib.Nifti1Image, data: np.ndarray, kind: str,
                   cylinder: tuple[DefaceCylinder, bool]) -> list[str]:
    if (kind in CATEGORIES and not cylinder[1]) or data.ndim != 3:
        return []
    inside = cylinder_values(cylinder[0], data, img.affine)  # only the cylinder's box is read
    if not inside.size:
        return [f"{name}: the recorded defacing cylinder of case {case} holds no voxel of this grid"]
    expected = {"CT": -1000, "PT": 0}.get(kind, 0)
    wrong = int(np.count_nonzero(inside != expected))
    if wrong:
        return [f"{name}: {wrong} of {inside.size} voxels inside the recorded defacing cylinder are not {expected}"]
    return []


def _check_image(job: ChunkJob, ref: MemberRef, content: memoryview) -> tuple[MemberResult, bytes | None]:
    """Every check of one image of the layout on its bytes; also its inflated stream (for the scan)."""
    assert ref.case is not None and ref.kind is not None
    digest = hashlib.sha256(content).hexdigest()
    try:
        # every member (isal_zlib.decompress would stop after the first), on this thread: the
        # chunks are the parallelism, one per worker, and threads beside them only contend
        # (8 bench cases on 2 workers: 8.0 s with 2 inflating threads each, 7.3 s with one)
        payload = gunzip(content, threads=1)
    except (isal_zlib.error, EOFError, ValueError, OSError) as exc:
        return MemberResult(ref.name, ref.order, digest, read_problems=(
            f"{ref.name}: not a readable gzip file ({exc})",)), None
    try:
        img, data = _nifti(payload)
    except (ValueError, ImageFileError, HeaderDataError, EOFError) as exc:
        return MemberResult(ref.name, ref.order, digest, read_problems=(
            f"{ref.name}: not a readable NIfTI-1 image ({type(exc).__name__}: {exc})",)), payload
    role = ref.kind if ref.kind in ("CT", "PT") else "label"
    values = _check_values(ref.name, data, ref.kind, job.labels) if role == "label" and job.labels else []
    cylinder = job.defacing.get(ref.case)
    defaced = _check_defaced(ref.case, ref.name, img, data, ref.kind, cylinder) if cylinder is not None else []
    result = MemberResult(
        ref.name, ref.order, digest, shape=tuple(int(n) for n in img.shape),
        affine=tuple(tuple(float(v) for v in row) for row in img.affine),
        read_problems=tuple(_check_header(ref.name, img, role)), value_problems=tuple(values),
        defacing_problems=tuple(defaced),
    )
    return result, payload


def verify_chunk(job: ChunkJob) -> ChunkResult:
    """Check the members of one chunk: each read once, for every check and the leak scan.

    Parameters
    ----------
    job
        ``plan.job(index)`` of a :func:`plan_verify` plan.

    Returns
    -------
    ChunkResult
        Per member: its digest, grid and problems; the leak-scan findings.
    """
    zip_path = Path(job.zip_path)
    if job.digest_file:
        return ChunkResult((), (), file_digest=(zip_path.name, sha256_file(zip_path)))
    release = Path(job.release) if job.release else zip_path
    matcher = _matcher(release, Path(job.state_dir)) if job.leak_scan and job.state_dir else None
    margin = context_bytes(matcher) if matcher is not None else 0
    results: list[MemberResult] = []
    leaks: list[tuple[tuple[int, ...], str]] = []
    with open(zip_path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        for ref in job.members:
            base, region = _read_region(fh, ref.header_offset, ref.region_end, margin, size)
            data_start = -1
            try:
                content: memoryview | None
                content, data_start = _member_content(region, base, ref)
            except (zipfile.BadZipFile, isal_zlib.error) as exc:
                content, error = None, exc
                if ref.kind is not None:
                    results.append(MemberResult(ref.name, ref.order,
                                                read_problems=(f"{ref.name}: cannot be read intact ({exc})",)))
                else:
                    results.append(MemberResult(ref.name, ref.order))
            payload = None
            if content is not None:
                if ref.kind is not None:
                    result, payload = _check_image(job, ref, content)
                    results.append(result)
                else:
                    results.append(MemberResult(ref.name, ref.order))  # outside the layout: scanned only
            if matcher is not None:
                member_lines, own = _scan_member_or_say_why(ref, content, zip_path.name, matcher, gunzipped=payload,
                                                            error=None if content is not None else error)
                leaks += member_lines
                stored = (data_start, len(content), own) if (
                    content is not None and own is not None and ref.compress_type == zipfile.ZIP_STORED) else None
                leaks += _zip_leaks(_zip_bytes_leaks(region, base, ref, matcher, zip_path.name, margin, stored),
                                    job.zip_index)  # the zip's own bytes of this member
            del region, content, payload
    return ChunkResult(tuple(results), tuple(leaks))


# ---------------------------------------------------------------------------
# 3. putting it together


def finish_verify(plan: VerifyPlan, results: Iterable[ChunkResult]) -> VerifyReport:
    """The report of a release from its plan and every chunk's result.

    Parameters
    ----------
    plan
        From :func:`plan_verify`.
    results
        :func:`verify_chunk` of every chunk of ``plan``, in any order.

    Returns
    -------
    VerifyReport
        Problems in this order: layout and small files, the cases (each case's
        missing members, then per member in CT, PT, category order: reading and
        header, grid, label values, defacing), spreadsheets, checksums, the
        build manifest, the leak scan (the zip's own bytes by offset, then each
        member in the zip's order).

    Raises
    ------
    ValueError
        When ``results`` do not cover the plan's chunks.
    """
    chunks = list(results)
    if len(chunks) != len(plan.chunks):
        raise ValueError(f"{len(chunks)} chunk results for a plan of {len(plan.chunks)} chunks")
    results = {m.order: m for chunk in chunks for m in chunk.members}
    image_at = {(m.case, m.kind): m.order for chunk in plan.chunks for m in chunk.members if m.kind is not None}
    problems = list(plan.problems)
    digests = dict(plan.digests)
    for member in results.values():
        if member.digest is not None:
            digests[_rel(member.name, plan.top)] = member.digest

    for case in plan.cases:
        missing = [k for k in _KINDS if (case, k) not in plan.images]
        if missing:
            problems.append(f"case {case}: missing {', '.join(missing)}")
        ct_grid = None
        for kind in _KINDS:
            name = plan.images.get((case, kind))
            member = results.get(image_at[(case, kind)]) if (case, kind) in image_at else None
            if member is None:
                continue
            problems += member.read_problems
            if kind == "CT" and member.shape is not None:
                ct_grid = (member.shape, np.array(member.affine))
            if kind in CATEGORIES and ct_grid is not None and member.shape is not None:
                shape, affine = ct_grid
                if member.shape != shape:
                    problems.append(f"{name}: shape {member.shape} is not the CT's {shape}")
                elif not np.allclose(member.affine, affine, rtol=0, atol=_AFFINE_TOL_MM):
                    worst = float(np.abs(np.array(member.affine) - affine).max())
                    problems.append(f"{name}: affine differs from the CT's by up to {worst:.4g} mm")
            problems += member.value_problems
            problems += member.defacing_problems

    problems += plan.sheet_problems
    problems += _check_sums(plan, digests)
    found = {chunk.file_digest[0]: chunk.file_digest[1] for chunk in chunks if chunk.file_digest is not None}
    if plan.release:
        problems += _check_part_sums(plan, found)
    if plan.manifest is not None:
        built = {e["case"] for e in plan.manifest["cases"]}
        for case in sorted(set(plan.cases) - built, key=int):
            problems.append(f"case {case}: in the zip but not in the build manifest")
        for case in sorted(built - set(plan.cases), key=int):
            problems.append(f"case {case}: in the build manifest but not in the zip")
        for rel, digest in sorted(plan.manifest["members"].items()):
            if rel in digests and digests[rel] != digest:
                problems.append(f"{rel}: content differs from what was built (manifest sha256 {digest[:12]}…)")
        built_parts = plan.manifest.get("parts") if plan.release else None
        if isinstance(built_parts, dict):
            for part, facts in sorted(built_parts.items()):
                digest = facts.get("sha256") if isinstance(facts, dict) else None
                if part in found and found[part] != digest:
                    problems.append(f"{part}: not the part that was built (manifest sha256 {str(digest)[:12]}…)")
    problems += plan.scan_problems
    leaks = sorted([*plan.leaks, *(leak for chunk in chunks for leak in chunk.leaks)], key=lambda item: item[0])
    unscannable = [line for _, line in leaks if line.startswith("the leak scan could not read")]
    # as scan_zip: a zip the scan cannot read to its end gives that one line, not a partial list
    problems += unscannable[:1] if unscannable else [line for _, line in leaks]
    return VerifyReport(tuple(problems), len(plan.cases), plan.checked, plan.members,
                        part_digests=tuple(sorted(found.items())))


def _check_sums(plan: VerifyPlan, digests: dict[str, str]) -> list[str]:
    if plan.sums is None:
        return []
    top = plan.top
    try:
        text = plan.sums.decode("utf-8")
    except UnicodeDecodeError:
        return [f"{top}/{SUMS_NAME}: not UTF-8 text"]
    members_text, parts_text = split_sums(text)
    listed, problems = parse_sha256sums(members_text, source=f"{top}/{SUMS_NAME}")
    problems = list(problems)
    if parts_text.strip() and not plan.release:
        problems.append(f"{top}/{SUMS_NAME}: lists part files after a blank line, but this is one zip "
                        "(verify the folder of parts)")
    members = {_rel(n, top) for n in plan.file_names if n.startswith(top + "/")}
    members.discard(SUMS_NAME)
    for rel in sorted(members - set(listed)):
        problems.append(f"{top}/{rel}: not listed in {SUMS_NAME}")
    for rel in sorted(set(listed) - members):
        problems.append(f"{top}/{rel}: listed in {SUMS_NAME} but not in the zip")
    for rel in sorted(members & set(listed)):
        got = digests.get(rel)
        if got is not None and got != listed[rel]:
            problems.append(f"{top}/{rel}: sha256 {got} does not match {SUMS_NAME} ({listed[rel]})")
    return problems


def _check_part_sums(plan: VerifyPlan, found: dict[str, str]) -> list[str]:
    """The data parts' sha256 against the second section of SHA256SUMS: none missing, none extra, all equal."""
    if plan.sums is None:
        return []
    try:
        _, parts_text = split_sums(plan.sums.decode("utf-8"))
    except UnicodeDecodeError:
        return []  # said by _check_sums
    listed, problems = parse_sha256sums(parts_text, source=f"{plan.top}/{SUMS_NAME} (parts)")
    problems = list(problems)
    present = {name: digest for name, digest in found.items() if parse_part_name(name)}
    for name in sorted(set(listed) - set(present)):
        problems.append(f"{name}: listed in {SUMS_NAME} but not in {plan.zip_path} (a part is missing)")
    for name in sorted(set(present) - set(listed)):
        problems.append(f"{plan.zip_path}/{name}: a part not listed in {SUMS_NAME}")
    for name in sorted(set(present) & set(listed)):
        if present[name] != listed[name]:
            problems.append(f"{name}: sha256 {present[name]} does not match {SUMS_NAME} ({listed[name]})")
    return problems


def _dates_are_secret(zip_path: Path, state_dir: Path) -> bool:
    """Whether the release was built with a date policy that hides the original dates.

    From the build manifest's ``dates``; a release without a readable manifest
    is scanned for the dates too (the safe side: ``as-delivered`` is the one
    policy that publishes them on purpose).
    """
    try:
        manifest = json.loads(StatePaths(state_dir).release_manifest(zip_path.name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True
    return not (isinstance(manifest, dict) and manifest.get("dates") == DatePolicy.AS_DELIVERED.value)


def leak_scan_problems(zip_path: Path, state_dir: Path) -> list[str]:
    """The leak scan of a release on its own: every decompressed byte against the state's sensitive values.

    :func:`verify_release` scans while it checks (each member is read once for
    both); this is the scan alone, as :func:`anonymization.leakscan.scan_zip`
    reads the zip.  The original dates of every header are among the values
    unless the release publishes dates as delivered (its build manifest says
    which).

    Parameters
    ----------
    zip_path
        The release zip.
    state_dir
        The state folder it was built from (its recorded sensitive values).

    Returns
    -------
    list[str]
        One line per leak (file, kind, a digest prefix of the value, never the
        value itself), or a line saying why the scan could not run; empty
        when the zip is clean.
    """
    try:
        values = load_sensitive_values(state_dir, include_dates=_dates_are_secret(zip_path, state_dir))
    except ValueError as exc:
        return [f"the sensitive values cannot be read, so the leak scan did not run: {exc}"]
    if not values:
        return [f"{state_dir}: no sensitive values recorded; the leak scan has nothing to look for"]
    try:
        leaks = scan_zip(zip_path, values)
    except UnscannableError as exc:
        return [_unscannable_line(exc)]
    return [_leak_line(leak) for leak in leaks]


def verify_release(
    zip_path: Path, *, state_dir: Path | None = None, leak_scan: bool = True, chunks: int | None = None,
    workers: int = 1,
) -> VerifyReport:
    """Check a release zip or a folder of parts (:func:`plan_verify`, every :func:`verify_chunk`, :func:`finish_verify`).

    Parameters
    ----------
    zip_path
        The release zip, or the folder of a release in parts.
    state_dir
        The ``state_dir`` the release was built from: adds the leak scan over
        every decompressed byte (for the sensitive values of every site) and the
        defacing check of the recorded cylinders.
    leak_scan
        With ``state_dir``: scan for the state's identifying values (default),
        in the same pass over each member as the checks.
    chunks
        How many chunks the members of a zip are checked in (it changes
        nothing but the memory and time of each step; parts are cut by size).
    workers
        Processes checking the chunks at once (1: one after the other in this process).

    Returns
    -------
    VerifyReport
        ``ok`` only when every check passed; otherwise one line per problem.
    """
    plan = plan_verify(Path(zip_path), state_dir=state_dir, leak_scan=leak_scan, chunks=chunks)
    jobs = [plan.job(i) for i in range(len(plan.chunks))]
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            results = list(pool.map(verify_chunk, jobs))
    else:
        results = [verify_chunk(job) for job in jobs]
    report = finish_verify(plan, results)
    for line in report.problems:
        logger.warning("%s", line)
    return report


__all__ = [
    "CHUNK_BYTES",
    "ChunkJob",
    "ChunkResult",
    "MemberRef",
    "MemberResult",
    "VerifyChunk",
    "VerifyPlan",
    "VerifyReport",
    "finish_verify",
    "leak_scan_problems",
    "plan_verify",
    "plan_verify_parts",
    "verify_chunk",
    "verify_release",
]

