"""Index a site's DICOM drop: one walk, header-only reads, grouped by study and series.

Every file under ``dicom_dir`` is read exactly once, into memory: its bytes are
hashed (the study fingerprint is built from these content digests) and its
header is parsed from the same buffer with ``stop_before_pixels`` and only the
tags the index needs.  Whether a file is DICOM is decided by content, never by
name.  Files that are not usable DICOM (text, DICOMDIR, truncated or corrupt
files, links leaving the site) are skipped and recorded with the reason; they
never stop the walk.  Sources are opened read-only and never modified.

Cost follows change: with the site's stat cache (:mod:`curation.statcache`,
``state_dir/sites/<site>/stat-cache.json``) a file whose size, mtime, ctime and
inode are unchanged since it was read is not read again; a run over an
unchanged drop reads no DICOM byte.  ``rehash`` reads every file again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from curation.dicomlimits import MAX_FILE_BYTES
from curation.model import (
    ENHANCED_PET_CORRECTIONS,
    SeriesRecord,
    SiteIndex,
    SkippedFile,
    StudyRecord,
)
from curation.statcache import FileStat, StatCache, now_ns

logger = logging.getLogger(__name__)

#: The tags the index reads (everything else in the header is skipped).
INDEX_TAGS: tuple[str, ...] = (
    "SOPClassUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "StudyDate",
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "ImageType",
    "FrameOfReferenceUID",
    "CorrectedImage",
    "Units",
    "Rows",
    "Columns",
    "BitsAllocated",
    "SamplesPerPixel",
    "NumberOfFrames",
    # enhanced (multi-frame) objects keep ImageType's frame part, Units and the
    # geometry in functional groups, and Enhanced PET its corrections as flags
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    *(keyword for keyword, _ in ENHANCED_PET_CORRECTIONS),
)

#: What reading a file gives (the header values, why a file is skipped): raise it when that
#: changes, and the stat caches made before are not used (every file is read again once).
READER_VERSION = 1



@dataclass(frozen=True)
class IndexTiming:
    """How long the last :func:`index_site` took (for logs and benchmarks).

    Attributes
    ----------
    files
        Files indexed.
    bytes_read
        Bytes read (whole files: they are hashed).
    seconds
        Wall-clock time of the index.
    files_read
        Files read (the others' digests and headers came from the stat cache).
    """

    files: int
    bytes_read: int
    seconds: float
    files_read: int = 0

    @property
    def mb_per_s(self) -> float:
        """Read throughput in MB/s (infinite for an instantaneous run)."""
        return self.bytes_read / 1e6 / self.seconds if self.seconds > 0 else float("inf")


LAST_TIMING: IndexTiming | None = None


@dataclass(frozen=True)
class IndexHeader:
    """What the index keeps of one file's header: plain values, read once, checked (:mod:`curation.indexheader`)."""

    study_uid: str
    series_uid: str
    patient_id: str
    study_date: str
    series: dict[str, object]  # the SeriesRecord fields taken from the series' first file


def _read_header(path: Path) -> tuple[str, IndexHeader | None, str]:
    """Read one file: (sha256 hex, header or None, reason when None).

    The reader (:func:`curation.indexheader.read_index_header`) and pydicom are
    imported the first time a file has to be read: a run whose every file comes
    from the stat cache imports neither.
    """
    from curation.indexheader import read_index_header

    return read_index_header(path)


def _cached(header: IndexHeader) -> dict[str, object]:
    """A header as the stat cache keeps it (JSON)."""
    return dataclasses.asdict(header)


def _uncached(value: dict[str, object]) -> IndexHeader:
    """A header from the stat cache (JSON lists back to the tuples a SeriesRecord holds)."""
    series = dict(value["series"])  # type: ignore[call-overload]
    for key in ("ImageType", "CorrectedImage"):
        series[key] = tuple(series[key])
    return IndexHeader(str(value["study_uid"]), str(value["series_uid"]), str(value["patient_id"]),
                   str(value["study_date"]), series)


def _walk(root: Path, skipped: list[SkippedFile]) -> list[Path]:
    """Every regular file under ``root``, never leaving it through a link."""
    files: list[Path] = []
    links = False
    real_root = root.resolve()
    for folder, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in list(dirnames):
            sub = Path(folder) / name
            if sub.is_symlink():
                skipped.append(SkippedFile(str(sub), "symbolic link to a folder, not followed"))
        for name in sorted(filenames):
            path = Path(folder) / name
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(real_root):
                    skipped.append(SkippedFile(str(path), f"symbolic link leaving dicom_dir (to {target})"))
                    continue
                if not target.is_file():
                    skipped.append(SkippedFile(str(path), "symbolic link to something that is not a file"))
                    continue
                links = True
            elif not path.is_file():
                skipped.append(SkippedFile(str(path), "not a regular file"))
                continue
            files.append(path)
    # a link inside the site to a file of the site would count that file twice; a file that is
    # not a link is where the walk found it (links to folders are not followed): no resolve()
    if not links:
        return files
    real_files = {real_root / p.relative_to(root) for p in files if not p.is_symlink()}
    kept = []
    for path in files:
        if path.is_symlink() and path.resolve() in real_files:
            skipped.append(SkippedFile(str(path), f"symbolic link to {path.resolve()}, which is indexed itself"))
        else:
            kept.append(path)
    return kept


def index_site(site_id: str, dicom_dir: Path, *, cache: Path | None = None, rehash: bool = False) -> SiteIndex:
    """Walk ``dicom_dir`` once and group its DICOM files by study and series.

    Parameters
    ----------
    site_id
        The site's public id (copied into every record).
    dicom_dir
        The site's DICOM folder (any nesting, any file names).
    cache
        The site's stat cache (:mod:`curation.statcache`): a file whose size,
        mtime, ctime and inode are those recorded there (and were not racy) is
        not read again, its digest and header values are taken from the cache;
        the cache is updated.  None: every file is read.
    rehash
        Read and hash every file whatever the cache says (and rewrite it).

    Returns
    -------
    SiteIndex
        Studies sorted by StudyInstanceUID, their series by SeriesInstanceUID,
        each series' files sorted by path; skipped files with the reason.

    Raises
    ------
    FileNotFoundError
        If ``dicom_dir`` is not a folder.
    """
    global LAST_TIMING
    dicom_dir = Path(dicom_dir)
    if not dicom_dir.is_dir():
        raise FileNotFoundError(f"site {site_id!r}: dicom_dir {dicom_dir} is not a folder")
    started = time.perf_counter()
    stats = StatCache(cache, rehash=rehash, context={"tags": list(INDEX_TAGS), "reader": READER_VERSION,
                                                     "max_file_bytes": MAX_FILE_BYTES})
    headers: dict[int, IndexHeader] = {}  # a cached header shared by many files is converted once
    skipped: list[SkippedFile] = []
    files = _walk(dicom_dir, skipped)
    not_walked = len(skipped)
    by_series: dict[str, list[tuple[Path, str, IndexHeader]]] = defaultdict(list)
    study_of_series: dict[str, str] = {}
    bytes_read = 0
    for path in files:
        try:
            stat = FileStat.of(path.stat())
            known = stats.get(str(path), stat)
            if known is None:
                read_ns = now_ns()
                digest, header, why = _read_header(path)
                stats.put(str(path), stat, [digest, why], read_ns=read_ns,
                          shared=_cached(header) if header is not None else None)
                bytes_read += stat.size
            else:
                (digest, why), cached = known
                header = None
                if cached is not None:
                    header = headers.get(id(cached)) or headers.setdefault(id(cached), _uncached(cached))
        except OSError as exc:
            skipped.append(SkippedFile(str(path), f"cannot be read: {exc.strerror or exc}"))
            continue
        except MemoryError:
            skipped.append(SkippedFile(str(path), "reading it ran out of memory"))
            continue
        if header is None:
            skipped.append(SkippedFile(str(path), why))
            continue
        series_uid = header.series_uid
        study_uid = header.study_uid
        if study_of_series.setdefault(series_uid, study_uid) != study_uid:
            skipped.append(
                SkippedFile(
                    str(path),
                    f"series {series_uid} also appears in study {study_of_series[series_uid]}; "
                    f"this file says study {study_uid}",
                )
            )
            continue
        by_series[series_uid].append((path, digest, header))
    stats.save()

    series_by_study: dict[str, list[SeriesRecord]] = defaultdict(list)
    digests_by_study: dict[str, list[str]] = defaultdict(list)
    first_header: dict[str, IndexHeader] = {}
    for series_uid in sorted(by_series):
        members = sorted(by_series[series_uid], key=lambda m: str(m[0]))
        _, _, header = members[0]
        study_uid = study_of_series[series_uid]
        series_by_study[study_uid].append(
            SeriesRecord(
                SeriesInstanceUID=series_uid,
                **header.series,  # type: ignore[arg-type]
                files=tuple(str(m[0].absolute()) for m in members),
            )
        )
        digests_by_study[study_uid].extend(m[1] for m in members)
        first_header.setdefault(study_uid, header)

    studies = []
    for study_uid in sorted(series_by_study):
        header = first_header[study_uid]
        fingerprint = hashlib.sha256("\n".join(sorted(digests_by_study[study_uid])).encode()).hexdigest()
        studies.append(
            StudyRecord(
                site=site_id,
                StudyInstanceUID=study_uid,
                PatientID=header.patient_id,
                StudyDate=header.study_date,
                series=tuple(series_by_study[study_uid]),
                fingerprint=fingerprint,
            )
        )
    seconds = time.perf_counter() - started
    LAST_TIMING = IndexTiming(files=len(files), bytes_read=bytes_read, seconds=seconds, files_read=stats.read)
    logger.info(
        "site %s: %d files (%d read, %.1f MB) indexed in %.2f s (%.0f MB/s): %d studies, %d skipped",
        site_id,
        len(files),
        stats.read,
        bytes_read / 1e6,
        seconds,
        LAST_TIMING.mb_per_s,
        len(studies),
        len(skipped),
    )
    return SiteIndex(
        site=site_id,
        dicom_dir=str(dicom_dir.absolute()),
        files_seen=len(files) + not_walked,
        skipped=tuple(sorted(skipped, key=lambda s: s.path)),
        studies=tuple(studies),
    )
