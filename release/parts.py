"""A release in parts (``[release] packaging = "parts"``): one zip per release folder.

The public ENHANCE.PET 1.6k release ships as one zip per folder (``CT``, ``PT``
and each of the seven ground-truth categories; a folder larger than the
hosting cap split by case range) plus the metadata files.  This module writes
that form of the same tree, into ``<output_dir>/<name>-<version>/``::

    CT_0001-1000.zip  CT_1001-1683.zip  PT_0001-1683.zip  Organs_0001-1683.zip ...
    metadata.zip                      labels.json, the two spreadsheets, README.md, SHA256SUMS
    labels.json  CT-details.xlsx  PT-details.xlsx  README.md  SHA256SUMS   (the same files, loose)

Every member keeps its path of the single zip (``<name>/imaging-data/...``), so
unzipping every part into one folder gives the single zip's tree; only
``README.md`` (a closing "Parts" section) and ``SHA256SUMS`` (a second section,
after a blank line, with the sha256 of every part but ``metadata.zip``, which
holds it) say that the release came in parts.

How it is built, in steps the flow runs as tasks:

1. :func:`plan_parts` lays out the case ranges (:func:`layout_parts`): the
   ranges of the last published build (``state_dir/parts/<name>.json``) stay as
   they are; a case outside them goes into the part before it while that part
   stays under ``max_part_size`` (sized from the prepared NIfTI files, which the
   zip stores as they are), else into a new part.  One :class:`PartJob` per part.
2. :func:`write_part` writes one part, deterministically, into
   ``<output_dir>/.staging/<name>-<version>/`` (atomically: a temporary file,
   then a rename), unless a part with the same content is published or staged
   already (its record in ``state_dir/parts/<name>-<version>/`` names its
   content and sha256): an unchanged part is never rewritten.
3. :func:`finish_parts` writes the card, ``SHA256SUMS``, ``metadata.zip`` and
   the loose files (staged too), and the build manifest.
4. After verify, :func:`publish_parts` moves the staged files into place (data
   parts first, ``SHA256SUMS`` last, each rename durable), removes the parts the
   new layout no longer has and records the layout; :func:`quarantine_parts`
   moves a release that failed verify aside instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from bisect import insort
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from curation.atomic import (
    atomic_output,
    atomic_write_bytes,
    atomic_write_json,
    durable_replace,
    fsync_dir,
    sha256_file,
)
from curation.config import Config
from curation.labels import ReleaseLabels
from curation.model import CATEGORIES
from curation.registry import format_case_number
from curation.state import StatePaths
from release.assemble import (
    STAGING_DIR,
    SUMS_NAME,
    ReleaseEntry,
    ReleaseExistsError,
    case_images,
    check_entries,
    image_member,
    label_member,
    manifest_case,
    read_json,
    small_files,
    write_manifest,
)
from release.card import CardPart, parts_section
from release.checksums import sha256sums_text
from release.zipper import ZipMember, write_zip

logger = logging.getLogger(__name__)

#: The release folders, one zip (or several, by case range) each.
FOLDERS: tuple[str, ...] = ("CT", "PT", *CATEGORIES)
#: The part holding the metadata files.
METADATA_ZIP = "metadata.zip"
#: The metadata files, beside the parts and in :data:`METADATA_ZIP` (paths inside ``<name>/``).
LOOSE_FILES: tuple[str, ...] = ("CT-details.xlsx", "PT-details.xlsx", "README.md", SUMS_NAME, "labels.json")
LAYOUT_FORMAT = 1
#: Part records of another format are not reused (bump when the zip writer's bytes change).
PART_FORMAT = 1
_MEMBER_OVERHEAD = 128  # a member's local header and central directory entry, besides its name (twice)
_PART_RE = re.compile(r"^(?P<folder>[A-Za-z-]+)_(?P<first>[0-9]{4,})-(?P<last>[0-9]{4,})\.zip$")

Layout = dict[str, list[tuple[int, int]]]


# ---------------------------------------------------------------------------
# names


def part_name(folder: str, first: int, last: int) -> str:
    """The file name of a part: ``<Folder>_<first>-<last>.zip`` (``CT_0001-1000.zip``).

    Parameters
    ----------
    folder
        ``CT``, ``PT`` or a label category.
    first, last
        The part's case range (inclusive).

    Returns
    -------
    str
        The name, with the case numbers written as the release writes them.
    """
    return f"{folder}_{format_case_number(first)}-{format_case_number(last)}.zip"


def parse_part_name(name: str) -> tuple[str, int, int] | None:
    """``(folder, first, last)`` of a part's file name, or None when it is not one.

    Parameters
    ----------
    name
        A file name such as ``Organs_0001-0500.zip``.

    Returns
    -------
    tuple or None
        The folder and case range; None for any other name (``metadata.zip`` too).
    """
    match = _PART_RE.match(name)
    if not match or match["folder"] not in FOLDERS:
        return None
    first, last = int(match["first"]), int(match["last"])
    if first > last or part_name(match["folder"], first, last) != name:
        return None
    return match["folder"], first, last


def folder_path(folder: str, case: str) -> str:
    """A case's file of ``folder`` inside ``<name>/`` (an image or a label map)."""
    return image_member(case, folder) if folder in ("CT", "PT") else label_member(case, folder)


def parts_digest(files: Mapping[str, str]) -> str:
    """The digest of a release in parts: sha256 of the ``SHA256SUMS``-style listing of all its files.

    Parameters
    ----------
    files
        File name (in the release's folder: every part, ``metadata.zip`` and the
        loose files) -> sha256.

    Returns
    -------
    str
        Hex sha256; it stands for the whole folder as the single zip's sha256 does.
    """
    return hashlib.sha256(sha256sums_text(files).encode("ascii")).hexdigest()


def split_sums(text: str) -> tuple[str, str]:
    """``SHA256SUMS`` text as its two sections: the members, and (after a blank line) the part files.

    Parameters
    ----------
    text
        The file's text.

    Returns
    -------
    tuple[str, str]
        The member lines, and the part lines (``""`` for a single zip's file).
    """
    head, sep, tail = text.partition("\n\n")
    return (head + "\n" if sep else head), tail


# ---------------------------------------------------------------------------
# 1. the layout


def layout_parts(
    sizes: Mapping[str, Mapping[int, int]],
    previous: Mapping[str, Sequence[tuple[int, int]]],
    max_part_size: int,
) -> Layout:
    """Case ranges per folder: the previous ranges stay; any other case joins a neighbour while it fits.

    A case inside a previous range goes into that range's part, whatever its
    size.  A case outside every range goes into the part just before it (the
    first part, for a case before every range), extending its range, while the
    part's estimated size stays within ``max_part_size``; otherwise it starts a
    new part.  From no previous ranges this cuts each folder greedily in case
    order.  A range whose cases are all gone stays in the layout (no part is
    written for it), so its numbers never move to another part.

    Parameters
    ----------
    sizes
        Folder -> case number -> estimated bytes of that case's member in a zip.
    previous
        Folder -> ``(first, last)`` ranges of the last published build.
    max_part_size
        Bytes a part may hold.

    Returns
    -------
    dict
        Folder -> sorted, non-overlapping ``(first, last)`` ranges, for every
        folder of ``sizes`` or ``previous``.
    """
    out: Layout = {}
    for folder in sorted(set(sizes) | set(previous), key=lambda f: (FOLDERS.index(f) if f in FOLDERS else len(FOLDERS), f)):
        cases = sizes.get(folder, {})
        ranges: list[list[int]] = sorted([int(a), int(b), 0] for a, b in previous.get(folder, ()))
        outside = []
        for number in sorted(cases):
            inside = next((r for r in ranges if r[0] <= number <= r[1]), None)
            if inside is None:
                outside.append(number)
            else:
                inside[2] += cases[number]
        for number in outside:
            before = [r for r in ranges if r[0] <= number]
            joined = before[-1] if before else (ranges[0] if ranges else None)
            if joined is not None and joined[2] + cases[number] <= max_part_size:
                joined[0], joined[1] = min(joined[0], number), max(joined[1], number)
                joined[2] += cases[number]
            else:
                insort(ranges, [number, number, cases[number]])
        out[folder] = [(first, last) for first, last, _ in ranges]
    return out


def read_layout(state_dir: Path, name: str) -> Layout:
    """The case ranges recorded by the last publication of release ``name`` (empty when none).

    Parameters
    ----------
    state_dir
        The state folder.
    name
        ``[release] name`` (the ranges outlive versions).

    Returns
    -------
    dict
        Folder -> ranges; an unreadable record counts as none (the parts are laid out afresh).
    """
    path = StatePaths(state_dir).parts_layout(name)
    data = read_json(path)
    if data is None:
        return {}
    try:
        if data["format"] != LAYOUT_FORMAT:
            raise ValueError(f"format {data['format']!r}")
        return {str(folder): [(int(a), int(b)) for a, b in ranges] for folder, ranges in data["folders"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        logger.warning("%s: not a parts layout (%s); the parts are laid out afresh", path, exc)
        return {}


def _save_layout(state_dir: Path, name: str, layout: Layout) -> None:
    path = StatePaths(state_dir).parts_layout(name)
    data = {"format": LAYOUT_FORMAT, "name": name,
            "folders": {folder: [list(r) for r in ranges] for folder, ranges in layout.items()}}
    if read_json(path) != data:
        atomic_write_json(path, data)


@dataclass(frozen=True)
class PartJob:
    """One part to write: its name, members and where it goes (small: it travels to a worker).

    Attributes
    ----------
    name
        The part's file name.
    folder, first, last
        The release folder and the case range (``""``, 0, 0 for ``metadata.zip``).
    cases
        The case numbers it holds.
    members
        Its members, with the paths of the single zip.
    final, staged
        Its path when published, and in the staging folder.
    record
        Its record in the state folder (content and sha256 of the written part).
    """

    name: str
    folder: str
    first: int
    last: int
    cases: tuple[str, ...]
    members: tuple[ZipMember, ...]
    final: str
    staged: str
    record: str

    @property
    def content(self) -> str:
        """sha256 of what the part holds (member names and content digests, the writer's format)."""
        listing = [[m.arcname, m.sha256 or hashlib.sha256(m.data or b"").hexdigest()]
                   for m in sorted(self.members, key=lambda m: m.arcname)]
        return hashlib.sha256(json.dumps([PART_FORMAT, listing]).encode("utf-8")).hexdigest()

    def estimated_size(self) -> int:
        """The part's size in bytes as the sizes of its members' files say (stored members)."""
        return 22 + sum(m.size() + 2 * len(m.arcname.encode("utf-8")) + _MEMBER_OVERHEAD for m in self.members)


@dataclass(frozen=True)
class PartsPlan:
    """The parts of a build (:func:`plan_parts`).

    Attributes
    ----------
    jobs
        One per data part with at least one case, in folder then range order.
    layout
        Folder -> case ranges (recorded when the build is published).
    """

    jobs: tuple[PartJob, ...]
    layout: Layout


def _places(config: Config) -> tuple[Path, Path]:
    """The published folder and the staging folder of the config's release in parts."""
    release = config.release
    return release.output_dir / release.parts_name, release.output_dir / STAGING_DIR / release.parts_name


def _job(config: Config, name: str, members: Sequence[ZipMember], *, folder: str = "", first: int = 0,
         last: int = 0, cases: Sequence[str] = ()) -> PartJob:
    final, staging = _places(config)
    record = StatePaths(config.release.state_dir).part_record(config.release.parts_name, name)
    return PartJob(name, folder, first, last, tuple(cases), tuple(sorted(members, key=lambda m: m.arcname)),
                   str(final / name), str(staging / name), str(record))


def plan_parts(config: Config, entries: Sequence[ReleaseEntry]) -> PartsPlan:
    """Lay out the parts of a release (:func:`layout_parts`) and make one :class:`PartJob` per data part.

    Parameters
    ----------
    config
        The configuration (name, folders, ``max_part_size``).
    entries
        The cases to release.

    Returns
    -------
    PartsPlan
        The jobs and the layout.

    Raises
    ------
    ValueError, FileNotFoundError
        As :func:`release.assemble.assemble_release` for inconsistent entries or a missing volume.
    """
    if not entries:
        raise ValueError(f"{config.path}: no case to release")
    ordered = check_entries(config, entries)
    name, limit = config.release.name, config.release.max_part_size
    members: dict[str, dict[int, ZipMember]] = {folder: {} for folder in FOLDERS}
    for entry in ordered:
        case = format_case_number(entry.number)
        images = case_images(entry)
        for folder in FOLDERS:
            image = images[folder_path(folder, case)]
            members[folder][entry.number] = ZipMember(f"{name}/{folder_path(folder, case)}", path=Path(image.path),
                                                      sha256=image.sha256)
    sizes = {folder: {n: m.size() + 2 * len(m.arcname) + _MEMBER_OVERHEAD for n, m in by_case.items()}
             for folder, by_case in members.items()}
    layout = layout_parts(sizes, read_layout(config.release.state_dir, name), limit)
    jobs = []
    for folder in FOLDERS:
        for first, last in layout.get(folder, ()):
            held = [n for n in sorted(members[folder]) if first <= n <= last]
            if not held:
                continue
            job = _job(config, part_name(folder, first, last), [members[folder][n] for n in held], folder=folder,
                       first=first, last=last, cases=[format_case_number(n) for n in held])
            estimate = job.estimated_size()
            if estimate > limit:
                logger.warning("%s: about %d bytes, over max_part_size %d (%s): its case range is fixed by an "
                               "earlier release, or one case alone is larger", job.name, estimate, limit,
                               "one case" if len(held) == 1 else f"{len(held)} cases")
            jobs.append(job)
    return PartsPlan(tuple(jobs), layout)


# ---------------------------------------------------------------------------
# 2. one part


@dataclass(frozen=True)
class ReleaseFile:
    """One file of a release in parts, where it is now.

    Attributes
    ----------
    name
        Its file name in the release's folder.
    path
        Where it is: the published folder, or the staging folder until publication.
    sha256, bytes
        Its digest and size.
    staged
        True while it waits in the staging folder (new or changed bytes).
    reused
        True when this build did not write it (the same content was there).
    folder, first, last, cases
        For a data part: its release folder, case range and the cases it holds.
    """

    name: str
    path: str
    sha256: str
    bytes: int
    staged: bool
    reused: bool
    folder: str = ""
    first: int = 0
    last: int = 0
    cases: tuple[str, ...] = ()


def _remove_temporaries(target: Path) -> None:
    # atomic_output's temporaries (".<stem>.<random>.tmp.zip"): never complete, never renamed
    for stale in target.parent.glob(f".{target.stem}.*.tmp{target.suffix}"):
        logger.warning("%s: removing the temporary file of an interrupted build", stale)
        stale.unlink(missing_ok=True)


def _earlier_version(job: PartJob, content: str) -> tuple[Path, str] | None:
    """A published part of another version of the release with this content, and its sha256, if any."""
    record_dir = Path(job.record).parent  # state_dir/parts/<name>-<version>
    name = Path(job.final).name
    output_dir = Path(job.final).parent.parent
    for other in sorted(record_dir.parent.glob(f"*/{name}.json")):
        record = read_json(other)
        if other.parent == record_dir or not (isinstance(record, dict) and record.get("content") == content):
            continue
        published = output_dir / other.parent.name / name
        if published.is_file() and sha256_file(published) == record.get("sha256"):
            return published, str(record["sha256"])
    return None


def write_part(job: PartJob) -> ReleaseFile:
    """Write one part into the staging folder, or find it written already (published or staged).

    A part is reused, not rewritten, when its record says the same content was
    written with a sha256 that the published (else the staged) file still
    has.  A part that another version of the release published with the same
    content (same name, same members) is linked into the staging folder (a hard
    link, else a copy), not written again.  Otherwise it is written
    (deterministically: the same members give the same bytes) to the staging
    folder and recorded; a published part with exactly those bytes is kept and
    the staged copy dropped.

    Parameters
    ----------
    job
        From :func:`plan_parts` (or the metadata part of :func:`finish_parts`).

    Returns
    -------
    ReleaseFile
        Where the part is, its sha256 and size, whether it was written now.

    Raises
    ------
    release.zipper.MemberChangedError
        When a member's file does not have its recorded sha256.
    """
    final, staged, content = Path(job.final), Path(job.staged), job.content
    facts = {"folder": job.folder, "first": job.first, "last": job.last, "cases": job.cases}
    record = read_json(Path(job.record))
    known = record.get("sha256") if isinstance(record, dict) and record.get("content") == content else None
    if known:
        for where, is_staged in ((final, False), (staged, True)):
            if where.is_file() and sha256_file(where) == known:
                if not is_staged:
                    staged.unlink(missing_ok=True)  # an older staged copy must not be published over it
                return ReleaseFile(job.name, str(where), known, where.stat().st_size, is_staged, True, **facts)
    staged.parent.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(staged)
    earlier = _earlier_version(job, content)
    if earlier is not None:
        source, digest = earlier
        atomic_write_json(Path(job.record), {"content": content, "sha256": digest, "part": job.name})
        staged.unlink(missing_ok=True)
        try:
            os.link(source, staged)  # atomic: the part appears whole under its staged name
        except OSError:  # another file system, or no hard links there
            with atomic_output(staged) as tmp:
                shutil.copyfile(source, tmp)
        logger.info("%s: the same part as %s (another version); linked, not written again", staged, source)
        return ReleaseFile(job.name, str(staged), digest, staged.stat().st_size, True, True, **facts)
    written: list[str] = []

    def record_it(tmp: Path) -> None:  # before the rename: a part under its staged name is always recorded
        written.append(sha256_file(tmp))
        atomic_write_json(Path(job.record), {"content": content, "sha256": written[0], "part": job.name})

    write_zip(staged, job.members, on_complete=record_it)
    digest = written[0]
    if record is None and final.is_file() and sha256_file(final) == digest:  # published, its record lost
        staged.unlink()
        return ReleaseFile(job.name, str(final), digest, final.stat().st_size, False, True, **facts)
    logger.info("%s: written (%d members, sha256 %s)", staged, len(job.members), digest)
    return ReleaseFile(job.name, str(staged), digest, staged.stat().st_size, True, False, **facts)


# ---------------------------------------------------------------------------
# 3. the metadata and the whole


@dataclass(frozen=True)
class PartsResult:
    """What :func:`finish_parts` produced: every file of the release in parts, and where it is.

    Attributes
    ----------
    folder
        The published folder, ``<output_dir>/<name>-<version>``.
    digest
        :func:`parts_digest` of every file (recorded as the release's sha256).
    files
        The data parts (by name), ``metadata.zip``, then the loose files.
    layout
        Folder -> case ranges (recorded at publication).
    cases, members
        Cases released; members over all parts.
    bytes
        Size of all the zips.
    reused
        True when nothing was written by this build.
    published
        True when every file is in the published folder and the release was published before.
    removed_characters, blanked_values
        As :class:`release.assemble.ReleaseResult`.
    obsolete
        Files of the published folder the new layout does not have (removed at publication).
    """

    folder: str
    digest: str
    files: tuple[ReleaseFile, ...]
    layout: Layout
    cases: int
    members: int
    bytes: int
    reused: bool
    published: bool
    removed_characters: int = 0
    blanked_values: int = 0
    obsolete: tuple[str, ...] = ()

    @property
    def zip_path(self) -> str:
        """The release's folder (what a single zip's result calls its zip)."""
        return self.folder

    @property
    def sha256(self) -> str:
        """The release's digest (:func:`parts_digest`)."""
        return self.digest

    @property
    def parts(self) -> tuple[ReleaseFile, ...]:
        """The zips: data parts and ``metadata.zip``."""
        return tuple(f for f in self.files if f.name.endswith(".zip"))

    def locations(self) -> dict[str, str]:
        """File name -> where it is now (what verify reads before publication)."""
        return {f.name: f.path for f in self.files}

    def hashes(self) -> dict[str, str]:
        """File name -> sha256, for the audit log."""
        return {f.name: f.sha256 for f in self.files}


def _place_loose(rel: str, data: bytes, final_dir: Path, staging: Path) -> ReleaseFile:
    digest = hashlib.sha256(data).hexdigest()
    final, staged = final_dir / rel, staging / rel
    if final.is_file() and sha256_file(final) == digest:
        staged.unlink(missing_ok=True)
        return ReleaseFile(rel, str(final), digest, len(data), False, True)
    if staged.is_file() and sha256_file(staged) == digest:
        return ReleaseFile(rel, str(staged), digest, len(data), True, True)
    atomic_write_bytes(staged, data)
    return ReleaseFile(rel, str(staged), digest, len(data), True, False)


def _release_files(folder: Path) -> list[Path]:
    """The files of a release in parts found in ``folder`` (parts, metadata.zip, loose files)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and (parse_part_name(p.name) or p.name == METADATA_ZIP or p.name in LOOSE_FILES))


def finish_parts(
    config: Config,
    entries: Sequence[ReleaseEntry],
    labels: ReleaseLabels,
    parts: Sequence[ReleaseFile],
    layout: Layout,
    *,
    pipeline_version: str,
    force: bool = False,
) -> PartsResult:
    """Write the metadata of a release in parts (card, SHA256SUMS, metadata.zip, loose files) and its manifest.

    Parameters
    ----------
    config
        The configuration.
    entries
        The cases released (as given to :func:`plan_parts`).
    labels
        The release label set.
    parts
        :func:`write_part` of every job of the plan.
    layout
        The plan's layout.
    pipeline_version
        The petct-release version, written into the card.
    force
        Replace a published release of the same name and version whose content differs.

    Returns
    -------
    PartsResult
        Every file and where it is; ``published`` when nothing is left to publish.

    Raises
    ------
    ReleaseExistsError
        When the release is published with other content and ``force`` is False
        (the new parts stay staged for a build with ``--force``).
    """
    ordered = check_entries(config, entries)
    name, release = config.release.name, config.release.parts_name
    final_dir, staging = _places(config)
    data_parts = sorted(parts, key=lambda f: (FOLDERS.index(f.folder), f.first))
    small = small_files(config, ordered, labels, pipeline_version=pipeline_version)
    files = dict(small.files)
    files["README.md"] += parts_section(
        name=name, version=config.release.version, max_part_size=config.release.max_part_size,
        parts=[CardPart(p.name, p.folder, f"{format_case_number(p.first)}-{format_case_number(p.last)}",
                        len(p.cases), p.bytes, p.sha256) for p in data_parts],
    ).encode("utf-8")
    digests = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    for entry in ordered:
        digests.update({rel: image.sha256 for rel, image in case_images(entry).items()})
    sums = sha256sums_text(digests) + "\n" + sha256sums_text({p.name: p.sha256 for p in data_parts})
    files[SUMS_NAME] = sums.encode("ascii")

    metadata = write_part(_job(config, METADATA_ZIP, [ZipMember(f"{name}/{rel}", data=files[rel]) for rel in files]))
    loose = [_place_loose(rel, files[rel], final_dir, staging) for rel in LOOSE_FILES]
    everything = (*data_parts, metadata, *loose)
    digest = parts_digest({f.name: f.sha256 for f in everything})
    names = {f.name for f in everything}
    obsolete = tuple(p.name for p in _release_files(final_dir) if p.name not in names)
    keep = {Path(f.path).name for f in everything if f.staged}
    if staging.is_dir():  # what an earlier build staged and this one does not publish
        for stale in staging.iterdir():
            if stale.name not in keep:
                logger.info("%s: staged by an earlier build, not part of this one; removed", stale)
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()

    changed = bool(obsolete) or any(f.staged for f in everything)
    manifest_path = StatePaths(config.release.state_dir).release_manifest(release)
    old = read_json(manifest_path)
    old = old if isinstance(old, dict) else {}
    verified = old.get("verified")
    # a build killed while publishing these very bytes (verified, partly moved) is finished, not refused
    continuing = isinstance(verified, dict) and verified.get("zip_sha256") == digest
    if changed and _release_files(final_dir) and not continuing:
        if not force:
            raise ReleaseExistsError(
                f"{final_dir}: a release {name} {config.release.version} in parts already exists with other "
                "content; give the release a new version, or rebuild with --force to replace it (the new parts "
                f"are kept in {staging} and are not written again)"
            )
        logger.warning("%s: exists with different content; the changed parts replace it once they pass verify "
                       "(force)", final_dir)
    published = not changed and old.get("published") == digest
    write_manifest(
        config, release, digest, digests, [manifest_case(config, e) for e in ordered],
        pipeline_version=pipeline_version,
        extra={"packaging": "parts", "published": digest if published else None,
               "parts": {f.name: {"sha256": f.sha256, "bytes": f.bytes, "folder": f.folder, "first": f.first,
                                  "last": f.last, "cases": list(f.cases)} for f in (*data_parts, metadata)},
               "loose": {f.name: f.sha256 for f in loose}},
    )
    zips = (*data_parts, metadata)
    result = PartsResult(
        folder=str(final_dir), digest=digest, files=everything, layout=layout, cases=len(ordered),
        members=sum(len(p.cases) for p in data_parts) + len(files), bytes=sum(p.bytes for p in zips),
        reused=not changed, published=published, removed_characters=small.removed_characters,
        blanked_values=small.blanked_values, obsolete=obsolete,
    )
    logger.info("%s: %d parts (%d written now), %d cases, %d bytes, digest %s", final_dir, len(zips),
                sum(1 for p in zips if not p.reused), result.cases, result.bytes, digest)
    return result


def assemble_parts(
    config: Config,
    entries: Sequence[ReleaseEntry],
    labels: ReleaseLabels,
    *,
    pipeline_version: str,
    force: bool = False,
    map_parts: Callable[[Callable[[PartJob], ReleaseFile], Sequence[PartJob]], Iterable[ReleaseFile]] = map,
) -> PartsResult:
    """Steps 1 to 3 in one call (the flow runs them as tasks): plan, write every part, finish.

    Parameters
    ----------
    config, entries, labels, pipeline_version, force
        As :func:`plan_parts` and :func:`finish_parts`.
    map_parts
        How the parts are written: ``map`` (one after the other, the default)
        or a pool's ``map``.

    Returns
    -------
    PartsResult
        Staged and reused files, not yet published (:func:`publish_parts` after verify).
    """
    plan = plan_parts(config, entries)
    parts = list(map_parts(write_part, plan.jobs))
    return finish_parts(config, entries, labels, parts, plan.layout, pipeline_version=pipeline_version, force=force)


# ---------------------------------------------------------------------------
# 4. publication


def publish_parts(result: PartsResult, config: Config) -> PartsResult:
    """Move the staged files of a verified release in parts into its folder and record the layout.

    Data parts first, then ``metadata.zip`` and the loose files, ``SHA256SUMS``
    last; each rename is durable.  Parts the layout no longer has are removed
    after, the case ranges recorded for the next build and the release
    recorded as published in its manifest.

    Parameters
    ----------
    result
        From :func:`finish_parts`, verified.
    config
        The configuration.

    Returns
    -------
    PartsResult
        Every file in the published folder, ``published``.

    Raises
    ------
    ValueError
        When a staged file is no longer the bytes that were verified.
    """
    state = StatePaths(config.release.state_dir)
    final_dir, staging = _places(config)
    final_dir.mkdir(parents=True, exist_ok=True)
    ordered = sorted(result.files, key=lambda f: (f.name == SUMS_NAME, f.name in LOOSE_FILES, f.name == METADATA_ZIP))
    placed = []
    for f in ordered:
        if f.staged:
            staged = Path(f.path)
            if sha256_file(staged) != f.sha256:
                raise ValueError(f"{staged}: changed since it was verified (sha256 is not {f.sha256}); build again")
            durable_replace(staged, final_dir / f.name)
        placed.append(dataclasses.replace(f, path=str(final_dir / f.name), staged=False))
    for name in result.obsolete:
        (final_dir / name).unlink(missing_ok=True)
        logger.info("%s: no longer part of the release; removed", final_dir / name)
    fsync_dir(final_dir)
    with contextlib.suppress(OSError):  # tidy: the staging folders are empty now
        staging.rmdir()
        staging.parent.rmdir()
    _save_layout(config.release.state_dir, config.release.name, result.layout)
    records = state.part_record(config.release.parts_name, "x").parent
    names = {f.name for f in result.files}
    for path in records.glob("*.json") if records.is_dir() else ():
        if path.name.removesuffix(".json") not in names:
            path.unlink(missing_ok=True)
    manifest_path = state.release_manifest(config.release.parts_name)
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("zip_sha256") != result.digest:
        raise ValueError(f"{manifest_path}: no build manifest of {config.release.parts_name} with digest {result.digest}")
    manifest["published"] = result.digest
    atomic_write_json(manifest_path, manifest)
    fsync_dir(manifest_path.parent)
    logger.info("%s: verified and published (%d parts, digest %s)", final_dir, len(result.parts), result.digest)
    files = sorted(placed, key=lambda f: [g.name for g in result.files].index(f.name))
    return dataclasses.replace(result, files=tuple(files), published=True, obsolete=())


def quarantine_parts(result: PartsResult, config: Config) -> Path:
    """Move a release in parts that failed verify aside: ``<name>-<version>.failed-verify/``.

    The staged files go there (the published folder keeps the last good
    release); when nothing was staged (a published release failed a later
    verify), the published folder itself goes there.

    Parameters
    ----------
    result
        From :func:`finish_parts`.
    config
        The configuration.

    Returns
    -------
    Path
        The folder it went to.
    """
    final_dir, staging = _places(config)
    target = final_dir.with_name(final_dir.name + ".failed-verify")
    if target.exists():
        shutil.rmtree(target)
    source = staging if any(f.staged for f in result.files) else final_dir
    durable_replace(source, target)
    manifest_path = StatePaths(config.release.state_dir).release_manifest(config.release.parts_name)
    manifest = read_json(manifest_path)
    if isinstance(manifest, dict) and manifest.get("published") is not None and source == final_dir:
        manifest["published"] = None
        atomic_write_json(manifest_path, manifest)
    logger.error("%s failed verify: moved to %s; it must not be published", source, target)
    return target


def release_files_of(folder: Path) -> dict[str, Path]:
    """Every file in a folder of parts, by name (what ``petct-release verify DIR`` reads).

    Parameters
    ----------
    folder
        The folder.

    Returns
    -------
    dict[str, Path]
        File name -> path, sorted by name; sub-folders are left out.
    """
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}


__all__ = [
    "FOLDERS",
    "LOOSE_FILES",
    "METADATA_ZIP",
    "PartJob",
    "PartsPlan",
    "PartsResult",
    "ReleaseFile",
    "assemble_parts",
    "finish_parts",
    "layout_parts",
    "parse_part_name",
    "part_name",
    "parts_digest",
    "plan_parts",
    "publish_parts",
    "quarantine_parts",
    "read_layout",
    "release_files_of",
    "split_sums",
    "write_part",
]

