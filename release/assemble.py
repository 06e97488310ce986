"""Assemble the release zip from prepared cases.

:func:`assemble_release` plans every member (images, label maps, labels.json,
spreadsheets, dataset card, SHA256SUMS), then streams them into
``<output_dir>/<name>-<version>.zip`` with :func:`release.zipper.write_zip`.
A zip of the same name with the same content is reused untouched; one with
different content is refused unless ``force``.  A manifest for ``verify
--state`` goes to ``state_dir/releases/<name>-<version>.json``
(:meth:`curation.state.StatePaths.release_manifest`; internal: it holds study
keys).

The members and their layout (the public ENHANCE.PET 1.6k layout) are listed
in the README, section "The release"; :func:`image_member` and
:func:`label_member` name the volumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anonymization.dates import (
    load_or_create_secret,
    patient_offset_days,
    publish_metadata,
    published_columns,
)
from curation.atomic import (
    atomic_write_json,
    atomic_write_text,
    durable_replace,
    fsync_dir,
    sha256_file,
)
from curation.config import Config, DatePolicy, IdentityFlagPolicy
from curation.errors import RunRefusedError
from curation.labels import ReleaseLabels, labels_json_bytes
from curation.metadata import CT_FIELDS, PT_FIELDS
from curation.model import CATEGORIES, ConvertedCase, ImageFile, PreparedCase, to_jsonable
from curation.registry import format_case_number
from curation.state import StatePaths
from release.card import CardCase, CardSite, render_card
from release.checksums import sha256sums_text
from release.spreadsheets import build_details_xlsx
from release.zipper import ZipMember, write_zip

logger = logging.getLogger(__name__)

#: The leading columns of both details spreadsheets, before the metadata fields.
CASE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("Case", "str"),
    ("Site", "str"),
    ("License", "str"),
    ("Indication", "str"),
)

SUMS_NAME = "SHA256SUMS"
MANIFEST_FORMAT = 1
#: The folder beside the published zip where it is written and verified first.
STAGING_DIR = ".staging"


class ReleaseExistsError(RunRefusedError):
    """A release of the same name and version with different content exists already."""


@dataclass(frozen=True)
class ReleaseEntry:
    """One case to release: its number, its prepared and converted records, and site facts.

    Attributes
    ----------
    number
        The case number from the registry.
    prepared
        The prepared case (defaced images, label maps).
    converted
        The converted case (metadata for the spreadsheets).
    indication
        The clinical indication shown in the spreadsheets and the card.
    license
        The licence of the case's site.
    """

    number: int
    prepared: PreparedCase
    converted: ConvertedCase
    indication: str
    license: str


@dataclass(frozen=True)
class ReleaseResult:
    """What :func:`assemble_release` produced (or found already built).

    Attributes
    ----------
    zip_path
        Where the zip is now: the published zip (``<output_dir>/<name>-<version>.zip``)
        when ``published``, else the staged one (``<output_dir>/.staging/<same name>``),
        which :func:`publish_release` moves into place once it is verified.
    sha256
        The zip's sha256 (written to ``<zip>.sha256`` when it is published).
    cases
        How many cases it holds.
    members
        How many zip members it holds.
    bytes
        The zip's size.
    reused
        True when a zip with this content was already there, published or staged
        (nothing rewritten).
    published
        True when ``zip_path`` is the published zip with its ``.sha256``.
    removed_characters
        Characters no worksheet cell can hold, removed from spreadsheet text.
    blanked_values
        Header values published empty because they cannot be read as their
        kind (a date ``20211345``).
    """

    zip_path: str
    sha256: str
    cases: int
    members: int
    bytes: int
    reused: bool
    published: bool
    removed_characters: int = 0
    blanked_values: int = 0


def image_member(case: str, modality: str) -> str:
    """Path of a case's CT or PT inside ``<name>/``.

    Parameters
    ----------
    case
        The formatted case number (``"0001"``).
    modality
        ``"CT"`` or ``"PT"``.

    Returns
    -------
    str
        ``imaging-data/images/<modality>/<case>.nii.gz``.
    """
    return f"imaging-data/images/{modality}/{case}.nii.gz"


def label_member(case: str, category: str) -> str:
    """Path of a case's label map of ``category`` inside ``<name>/``.

    Parameters
    ----------
    case
        The formatted case number (``"0001"``).
    category
        One of :data:`curation.model.CATEGORIES`.

    Returns
    -------
    str
        ``imaging-data/ground-truth/<category>/<case>.nii.gz``.
    """
    return f"imaging-data/ground-truth/{category}/{case}.nii.gz"


def details_columns(fields: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The columns of a details spreadsheet: the case columns, then every metadata field.

    Parameters
    ----------
    fields
        ``(name, kind)`` of the metadata fields (:data:`curation.metadata.CT_FIELDS` or ``PT_FIELDS``).

    Returns
    -------
    tuple[tuple[str, str], ...]
        :data:`CASE_COLUMNS` followed by ``fields``.

    Raises
    ------
    ValueError
        When a field has the name of a case column.
    """
    leading = {name for name, _ in CASE_COLUMNS}
    clash = [name for name, _ in fields if name in leading]
    if clash:
        raise ValueError(f"metadata fields {clash} clash with the case columns {sorted(leading)}")
    return (*CASE_COLUMNS, *fields)


# ---------------------------------------------------------------------------
# planning


@dataclass(frozen=True)
class _Plan:
    members: tuple[ZipMember, ...]  # every member, SHA256SUMS included, arcnames with <name>/
    digests: dict[str, str]  # path inside <name>/ -> sha256, SHA256SUMS excluded
    sums: bytes
    manifest_cases: tuple[dict[str, Any], ...]
    removed_characters: int = 0
    blanked_values: int = 0


def check_entries(config: Config, entries: Sequence[ReleaseEntry]) -> list[ReleaseEntry]:
    """The entries in case order, after checking they can be released together.

    Raises
    ------
    ValueError
        A number given twice, records of different studies, an unknown site, a category missing.
    FileNotFoundError
        A prepared volume is missing.
    """
    site_ids = [s.id for s in config.sites]
    ordered = sorted(entries, key=lambda e: e.number)
    seen: dict[int, str] = {}
    for e in ordered:
        p, c = e.prepared, e.converted
        where = f"case {e.number} (site {p.site}, study {p.key})"
        if e.number in seen:
            raise ValueError(f"{where}: case number {e.number} is given twice")
        seen[e.number] = p.key
        if p.StudyInstanceUID != c.StudyInstanceUID or p.site != c.site:
            raise ValueError(f"{where}: the prepared and converted records are of different studies")
        if p.site not in site_ids:
            raise ValueError(f"{where}: site {p.site!r} is not in the config ({', '.join(site_ids)})")
        if set(p.labels) != set(CATEGORIES):
            raise ValueError(
                f"{where}: label maps for {sorted(p.labels)}, expected exactly {', '.join(CATEGORIES)}"
            )
        for image in (p.ct, p.pt, *p.labels.values()):
            if not Path(image.path).is_file():
                raise FileNotFoundError(f"{where}: {image.path} does not exist (prepare the case again)")
    return ordered


@dataclass(frozen=True)
class _Sheet:
    name: str
    data: bytes
    removed_characters: int
    blanked_values: int


def _date_offsets(config: Config, entries: Sequence[ReleaseEntry]) -> dict[int, int]:
    """Case number -> the patient's date offset in days (all 0 unless the policy is ``shift``).

    The offsets stay in memory: they are written nowhere, logged nowhere.
    """
    if config.release.dates is not DatePolicy.SHIFT:
        return {e.number: 0 for e in entries}
    secret = load_or_create_secret(config.release.state_dir)
    return {
        e.number: patient_offset_days(secret, e.converted.site, e.converted.PatientID, e.converted.StudyInstanceUID)
        for e in entries
    }


def _details_sheet(
    config: Config,
    entries: Sequence[ReleaseEntry],
    offsets: dict[int, int],
    fields: Sequence[tuple[str, str]],
    modality: str,
) -> _Sheet:
    """A details spreadsheet with the ``[release] dates`` policy and ``age_cap`` applied."""
    policy = config.release.dates
    rows = []
    blanked = 0
    for e in entries:
        metadata = e.converted.ct_metadata if modality == "CT" else e.converted.pt_metadata
        values = publish_metadata(
            metadata, fields, policy=policy, offset_days=offsets[e.number], age_cap=config.release.age_cap
        )
        if values.blanked:
            blanked += len(values.blanked)
            logger.warning("case %s: %s-details %s cannot be read and are published empty",
                           format_case_number(e.number), modality, ", ".join(values.blanked))
        rows.append({
            "Case": format_case_number(e.number),
            "Site": e.prepared.site,
            "License": e.license,
            "Indication": e.indication,
            **values.values,  # a field the scanner did not write is an empty cell
        })
    name = f"{modality}-details"
    book = build_details_xlsx(details_columns(published_columns(fields, policy)), rows, title=name)
    return _Sheet(f"{name}.xlsx", book.data, book.removed_characters, blanked)


@dataclass(frozen=True)
class SmallFiles:
    """labels.json, the two spreadsheets and the card, and what writing the spreadsheets removed or blanked."""

    files: dict[str, bytes]  # path inside <name>/ -> content: labels.json, the spreadsheets, README.md
    removed_characters: int
    blanked_values: int


def small_files(
    config: Config, entries: Sequence[ReleaseEntry], labels: ReleaseLabels, *, pipeline_version: str
) -> SmallFiles:
    """labels.json, the two details spreadsheets and the dataset card (everything but the volumes and sums).

    Parameters
    ----------
    config
        The configuration (date policy, age cap, sites, defacing).
    entries
        The cases, in case order.
    labels
        The release label set.
    pipeline_version
        The petct-release version, written into the card.

    Returns
    -------
    SmallFiles
        Path inside ``<name>/`` -> content, and the spreadsheets' counts.
    """
    offsets = _date_offsets(config, entries)
    sheets = [_details_sheet(config, entries, offsets, CT_FIELDS, "CT"),
              _details_sheet(config, entries, offsets, PT_FIELDS, "PT")]
    small: dict[str, bytes] = {
        "labels.json": labels_json_bytes(labels),
        **{sheet.name: sheet.data for sheet in sheets},
        "README.md": render_card(
            name=config.release.name,
            version=config.release.version,
            pipeline_version=pipeline_version,
            cases=[
                CardCase(
                    case=format_case_number(e.number),
                    site=e.prepared.site,
                    license=e.license,
                    indication=e.indication,
                    defaced=e.prepared.defaced,
                    head_missing_released=e.prepared.head_missing_released,
                )
                for e in entries
            ],
            sites=[CardSite(s.id, s.license, s.deface, s.identity_removed_flag is IdentityFlagPolicy.OPTIONAL)
                   for s in config.sites],
            labels=labels,
            defacing=config.defacing,
            dates=config.release.dates,
            age_cap=config.release.age_cap,
        ).encode("utf-8"),
    }
    return SmallFiles(small, sum(sheet.removed_characters for sheet in sheets),
                       sum(sheet.blanked_values for sheet in sheets))


def case_images(entry: ReleaseEntry) -> dict[str, ImageFile]:
    """A case's volumes by their path inside ``<name>/``: CT, PT and the seven label maps.

    Parameters
    ----------
    entry
        The case.

    Returns
    -------
    dict[str, ImageFile]
        :func:`image_member` / :func:`label_member` path -> the prepared volume.
    """
    case = format_case_number(entry.number)
    files = {image_member(case, "CT"): entry.prepared.ct, image_member(case, "PT"): entry.prepared.pt}
    files.update({label_member(case, cat): entry.prepared.labels[cat] for cat in CATEGORIES})
    return files


def manifest_case(config: Config, entry: ReleaseEntry) -> dict[str, Any]:
    """A case's record in the build manifest: number, study key, site, defacing and its members' sha256."""
    files = case_images(entry)
    return {
        "number": entry.number,
        "case": format_case_number(entry.number),
        "study_key": entry.prepared.key,
        "site": entry.prepared.site,
        "license": entry.license,
        "defaced": entry.prepared.defaced,
        "cylinder": to_jsonable(entry.prepared.cylinder),
        "clear_labels": config.defacing.clear_labels,
        "members": {path: files[path].sha256 for path in sorted(files)},
    }


def _plan(
    config: Config, entries: Sequence[ReleaseEntry], labels: ReleaseLabels, *, pipeline_version: str
) -> _Plan:
    name = config.release.name
    small = small_files(config, entries, labels, pipeline_version=pipeline_version)
    digests = {path: hashlib.sha256(data).hexdigest() for path, data in small.files.items()}
    members = [ZipMember(f"{name}/{path}", data=data) for path, data in small.files.items()]
    for e in entries:
        for path, image in case_images(e).items():
            digests[path] = image.sha256
            members.append(ZipMember(f"{name}/{path}", path=Path(image.path), sha256=image.sha256))
    sums = sha256sums_text(digests).encode("ascii")
    members.append(ZipMember(f"{name}/{SUMS_NAME}", data=sums))
    return _Plan(
        tuple(members), digests, sums, tuple(manifest_case(config, e) for e in entries),
        removed_characters=small.removed_characters, blanked_values=small.blanked_values,
    )


# ---------------------------------------------------------------------------
# building


def _existing_matches(zip_path: Path, plan: _Plan, name: str) -> tuple[bool, str]:
    """Whether the zip at ``zip_path`` has the planned content, and if not, why."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = sorted(zf.namelist())
            planned = sorted(m.arcname for m in plan.members)
            if names != planned:
                extra = sorted(set(names) - set(planned))
                missing = sorted(set(planned) - set(names))
                return False, f"members differ ({len(missing)} missing, {len(extra)} not planned)"
            # SHA256SUMS covers every other member: equal sums means equal content
            if zf.read(f"{name}/{SUMS_NAME}") != plan.sums:
                return False, f"{SUMS_NAME} differs (some member has other content)"
    except (zipfile.BadZipFile, OSError, KeyError) as exc:
        return False, f"it cannot be read as a zip ({exc})"
    return True, ""


def read_json(path: Path) -> Any:
    """The parsed JSON at ``path``, or None when it is missing or unreadable (it is then rewritten)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _sidecar(zip_path: Path) -> Path:
    return zip_path.with_name(zip_path.name + ".sha256")


def _read_sidecar(zip_path: Path) -> str | None:
    try:
        text = _sidecar(zip_path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    match = re.fullmatch(r"([0-9a-f]{64})  (\S+)\n", text)
    if not match or match.group(2) != zip_path.name:
        return None
    return match.group(1)


def _write_sidecar(zip_path: Path, digest: str) -> None:
    atomic_write_text(_sidecar(zip_path), f"{digest}  {zip_path.name}\n")


def _remove_stale_temporaries(zip_path: Path) -> None:
    # atomic_output names its temporaries ".<stem>.<random>.tmp<suffix>"; one left behind
    # by a killed build is never a complete zip (it was never renamed), so it is removed.
    for stale in zip_path.parent.glob(f".{zip_path.stem}.*.tmp{zip_path.suffix}"):
        logger.warning("%s: removing the temporary file of an interrupted build", stale)
        stale.unlink(missing_ok=True)


def assemble_release(
    config: Config,
    entries: Sequence[ReleaseEntry],
    labels: ReleaseLabels,
    *,
    pipeline_version: str,
    force: bool = False,
    progress: Callable[[str, int], None] | None = None,
) -> ReleaseResult:
    """Write the release zip, its ``.sha256`` and its manifest.

    Parameters
    ----------
    config
        The validated configuration (name, version, output and state folders, sites, defacing).
    entries
        The cases to release, each with its case number (any order: written in number order).
    labels
        The release label set (written as ``labels.json``).
    pipeline_version
        The petct-release version, written into the dataset card.
    force
        Replace an existing zip of the same name and version whose content differs.
    progress
        Called after each member is written with its name and size.

    Returns
    -------
    ReleaseResult
        ``reused`` is True when an identical zip was already there (nothing rewritten).

    Raises
    ------
    ReleaseExistsError
        When the zip exists with different content and ``force`` is False.
    ValueError
        When the entries are inconsistent (a number twice, a category missing, ...).
    FileNotFoundError
        When a prepared volume is missing.
    release.zipper.MemberChangedError
        When a prepared volume no longer has its recorded sha256.
    """
    if not entries:
        raise ValueError(f"{config.path}: no case to release")
    ordered = check_entries(config, entries)
    name = config.release.name
    zip_path = config.release.zip_path
    plan = _plan(config, ordered, labels, pipeline_version=pipeline_version)

    reused = False
    if zip_path.exists():
        same, why = _existing_matches(zip_path, plan, name)
        if same:
            reused = True
        elif not force:
            raise ReleaseExistsError(
                f"{zip_path}: a release {name} {config.release.version} already exists and {why}; "
                "give the release a new version, or rebuild with --force to replace it"
            )
        else:
            logger.warning("%s: exists with different content (%s); it is replaced once the new "
                           "zip passes verify (force)", zip_path, why)
    if reused:
        # the member list and SHA256SUMS match; the bytes must also be the ones published
        digest = sha256_file(zip_path)
        recorded = _read_sidecar(zip_path)
        if recorded is None:  # killed between moving the zip into place and writing its .sha256
            logger.warning("%s: has no .sha256 (its publication was interrupted); verifying it again", zip_path)
        elif recorded != digest:
            if not force:
                raise ReleaseExistsError(
                    f"{zip_path}: its sha256 {digest} is not the {recorded or '(missing)'} recorded in "
                    f"{_sidecar(zip_path).name} when it was published: the zip changed after the build; "
                    "rebuild with --force to replace it"
                )
            logger.warning("%s: changed after it was published; replacing it (force)", zip_path)
            reused = False
        else:
            logger.info("%s: already published with the same content; reused", zip_path)
    published = reused and _read_sidecar(zip_path) is not None
    where = zip_path if reused else staging_path(zip_path)
    if not reused:
        where.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(zip_path)  # an older version's build wrote beside the published name
        _remove_stale_temporaries(where)
        if where.exists() and _existing_matches(where, plan, name)[0]:
            # a build killed before its zip was verified: the staged bytes are the plan
            logger.info("%s: staged by an earlier build with the same content; reused", where)
            reused = True
        else:
            write_zip(where, plan.members, progress=progress)
        digest = sha256_file(where)

    write_manifest(config, zip_path.name, digest, plan.digests, plan.manifest_cases,
                   pipeline_version=pipeline_version)
    result = ReleaseResult(
        zip_path=str(where),
        sha256=digest,
        cases=len(ordered),
        members=len(plan.members),
        bytes=where.stat().st_size,
        reused=reused,
        published=published,
        removed_characters=plan.removed_characters,
        blanked_values=plan.blanked_values,
    )
    logger.info("%s: %d cases, %d members, %d bytes, sha256 %s", where, result.cases, result.members, result.bytes, digest)
    return result


def write_manifest(
    config: Config,
    release_name: str,
    digest: str,
    digests: dict[str, str],
    cases: Sequence[dict[str, Any]],
    *,
    pipeline_version: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the build manifest of a release (``verify --state`` reads it), keeping a verification of the same bytes.

    Parameters
    ----------
    config
        The configuration.
    release_name
        The zip's file name, or the folder name of a release in parts.
    digest
        The zip's sha256, or the digest of a release in parts (:func:`release.parts.parts_digest`).
    digests
        Path inside ``<name>/`` -> sha256 of every member but SHA256SUMS.
    cases
        One record per case (number, study key, site, defacing, members).
    pipeline_version
        The petct-release version.
    extra
        More keys (a release in parts: ``packaging`` and ``parts``).

    Returns
    -------
    dict
        The manifest as written.
    """
    path = StatePaths(config.release.state_dir).release_manifest(release_name)
    old = read_json(path)
    # the record of a verification stands only for the bytes it verified
    verified = (old if isinstance(old, dict) else {}).get("verified")
    if not (isinstance(verified, dict) and verified.get("zip_sha256") == digest):
        verified = None
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": config.release.name,
        "version": config.release.version,
        "zip": release_name,
        "zip_sha256": digest,
        "verified": verified,
        "pipeline_version": pipeline_version,
        "defacing": to_jsonable(config.defacing),
        "dates": config.release.dates.value,  # the policy (never an offset): which dates the leak scan needs
        "age_cap": config.release.age_cap,
        "members": dict(sorted(digests.items())),
        "cases": list(cases),
        **(extra or {}),
    }
    if old != manifest:
        atomic_write_json(path, manifest)
    return manifest


def staging_path(zip_path: Path) -> Path:
    """Where a release zip is written and verified before it is published: ``.staging/`` beside it.

    The file name is the release's own, so ``verify`` finds its build manifest.
    """
    return zip_path.parent / STAGING_DIR / zip_path.name


def record_verification(state_dir: Path, zip_name: str, sha256: str, *, audit_seq: int, audit_hash: str) -> None:
    """Bind the manifest of ``zip_name`` to the audit record of its successful verification.

    A later build skips verifying the same bytes only while the audit log
    still holds that record at that line with that hash (``audit --verify``
    checks the same), so a rewritten or truncated log tail is caught.

    Parameters
    ----------
    state_dir
        The state folder.
    zip_name
        The release zip's file name.
    sha256
        The verified bytes' sha256.
    audit_seq, audit_hash
        The ``seq`` and ``hash`` of the ``release-verified`` audit record.

    Raises
    ------
    ValueError
        When the manifest is missing or is of other bytes.
    """
    path = StatePaths(state_dir).release_manifest(zip_name)
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("zip_sha256") != sha256:
        raise ValueError(f"{path}: no build manifest of {zip_name} with sha256 {sha256}")
    manifest["verified"] = {"zip_sha256": sha256, "audit_seq": audit_seq, "audit_hash": audit_hash}
    atomic_write_json(path, manifest)
    fsync_dir(path.parent)


def verification_record(state_dir: Path, zip_name: str, sha256: str) -> dict[str, Any] | None:
    """The manifest's record of the verification of these bytes (``audit_seq``, ``audit_hash``), if any."""
    manifest = read_json(StatePaths(state_dir).release_manifest(zip_name))
    verified = manifest.get("verified") if isinstance(manifest, dict) else None
    if isinstance(verified, dict) and verified.get("zip_sha256") == sha256:
        return verified
    return None


def publish_release(result: ReleaseResult, config: Config) -> ReleaseResult:
    """Move a verified staged zip into place and give it its ``.sha256`` (both renames made durable).

    Parameters
    ----------
    result
        What :func:`assemble_release` returned; a published result is returned as it is.
    config
        The configuration (where the zip goes).

    Returns
    -------
    ReleaseResult
        The same zip at ``config.release.zip_path``, published.

    Raises
    ------
    ValueError
        When the staged zip is no longer the bytes that were verified.
    """
    if result.published:
        return result
    staged, final = Path(result.zip_path), config.release.zip_path
    if sha256_file(staged) != result.sha256:
        raise ValueError(f"{staged}: changed since it was verified (sha256 is not {result.sha256}); build again")
    _sidecar(final).unlink(missing_ok=True)  # a replaced zip's .sha256 must not vouch for the new bytes
    if staged != final:
        durable_replace(staged, final)
        with contextlib.suppress(OSError):  # tidy: the staging folder is empty now
            staged.parent.rmdir()
    _write_sidecar(final, result.sha256)
    fsync_dir(final.parent)
    logger.info("%s: verified and published (sha256 %s)", final, result.sha256)
    return dataclasses.replace(result, zip_path=str(final), published=True)


def quarantine_release(zip_path: Path) -> Path:
    """Move a zip that failed verify out of the way (``<zip>.failed-verify``) and drop its ``.sha256``.

    Parameters
    ----------
    zip_path
        The staged or published zip.

    Returns
    -------
    Path
        Where it went, beside the published name, so nothing finished-looking is left to publish.
    """
    final = zip_path.parent.parent / zip_path.name if zip_path.parent.name == STAGING_DIR else zip_path
    target = final.with_name(final.name + ".failed-verify")
    durable_replace(zip_path, target)
    if final == zip_path:  # a published zip that fails a later verify loses its .sha256 too
        _sidecar(final).unlink(missing_ok=True)
    logger.error("%s failed verify: moved to %s; it must not be published", zip_path, target)
    return target
