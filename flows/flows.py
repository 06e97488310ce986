"""The Prefect flows: ``ingest_site``, ``build_release`` and ``curate``.

Every command of the CLI and every deployment run goes through these flows, so
a run by hand and a scheduled run are the same code and leave the same audit
trail.  The division of work:

* **Tasks** are thin wrappers around one stage function each (index a site,
  ingest one study, prepare one case, number, package, verify).  They take and
  return paths and small frozen records, never volumes, so they run the same on
  threads, processes or a Dask cluster.  Only transient file I/O is retried.
* **The flow's own process** submits the tasks, collects their results as they
  complete, writes the audit records, reports progress, takes the build lock
  and publishes the run's artifacts.

Resumption is by content: :func:`curation.ingest.ingest_study` and
:func:`curation.prepare.prepare_case` skip a study whose recorded outcome has
the same content fingerprint, and the release zip is reused when its content
would be identical.  Prefect's own result cache is switched off (it would key
on path strings).  A data problem (:class:`~curation.errors.CurationError`) is
a normal :class:`~curation.model.Rejection` with its reason code; an unexpected
exception fails that one task, is recorded with outcome ``failed``, the run
goes on with the other cases, and the flow run ends Failed with the count.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture, as_completed
from prefect.states import Failed, State

from anonymization.leakscan import load_sensitive_values
from curation.atomic import atomic_write_json
from curation.config import Config, SiteConfig, load_config
from curation.dicomindex import index_site
from curation.errors import RejectReason
from curation.ingest import index_identifiers, ingest_study
from curation.labels import ReleaseLabels, SourceLabelTable, load_release_labels, load_source_table
from curation.model import (
    ConvertedCase,
    PreparedCase,
    Rejection,
    SiteIndex,
    StudyRecord,
    from_jsonable,
    to_jsonable,
)
from curation.prepare import prepare_case
from curation.registry import NumberingCandidate, Registry, format_case_number
from curation.state import StatePaths, site_outcomes
from flows import progress
from flows.audit import AuditLog
from flows.runners import make_task_runner, prefect_api
from release.assemble import ReleaseEntry, ReleaseResult
from release.assemble import build_release as assemble_release
from release.spreadsheets import read_clinical_sheet
from release.verify import leak_scan_problems, verify_release

logger = logging.getLogger(__name__)


def _pipeline_version() -> str:
    try:
        return importlib.metadata.version("petct-release")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "0.0.0+source"


PIPELINE_VERSION = _pipeline_version()


# ---------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class RunSummary:
    """What one flow run did; the CLI prints it and derives the exit code.

    ``converted`` and ``rejected`` count the studies of the sites this run
    looked at (ingest rejections and cases held back at build, by reason code);
    ``released`` is the number of cases in the zip; ``failed`` the tasks that
    raised an unexpected error in this run; ``nothing_to_do`` is true when the
    run found every study, case and the zip already up to date.
    """

    converted: int
    rejected: dict[str, int]
    released: int
    failed: int
    zip_path: str | None
    flow_run_id: str
    nothing_to_do: bool


@dataclass(frozen=True)
class VerifySummary:
    """The problems ``verify`` found (empty when the release is sound)."""

    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


class BuildInProgressError(RuntimeError):
    """Another build of the same release holds ``state_dir/build.lock``."""


@dataclass(frozen=True)
class StepResult:
    """A per-case task's result: the stage's record and whether it did work now."""

    outcome: ConvertedCase | Rejection | PreparedCase
    fresh: bool  # the stage (re)wrote its record in this call: False when it was up to date
    seconds: float  # wall time of the stage function itself


@dataclass
class _Tally:
    """What the flow's process has collected so far in one run."""

    converted: dict[str, ConvertedCase] = field(default_factory=dict)  # key -> case
    rejected: list[Rejection] = field(default_factory=list)
    prepared: dict[str, PreparedCase] = field(default_factory=dict)  # key -> prepared
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (site, step, error)
    fresh: int = 0  # records (re)written by a stage in this run
    released: dict[str, list[str]] = field(default_factory=dict)  # site -> case numbers
    studies: dict[str, int] = field(default_factory=dict)  # site -> studies seen
    zip_path: str | None = None
    zip_reused: bool = True
    sensitive: set[str] = field(default_factory=set)  # values never to show in an artifact
    recorded: set[str] = field(default_factory=set)  # decisions already in the audit log

    def rejected_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(r.reason.value for r in self.rejected).items()))


# ---------------------------------------------------------------------------
# tasks (thin: one stage function each; paths and small records in and out)


_PERMANENT_OS_ERRORS = (
    FileExistsError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def _transient_io_error(task: Any, task_run: Any, state: State[Any]) -> bool:
    """Retry only file I/O errors that may pass (NFS hiccup, EIO, EAGAIN)."""
    try:
        state.result()
    except _PERMANENT_OS_ERRORS:
        return False
    except OSError:
        return True
    except BaseException:  # any other error is not transient: no retry
        return False
    return False


_TASK_OPTIONS: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": 2,
    "retry_condition_fn": _transient_io_error,
    # Resumption keys on content inside the stages; Prefect's INPUTS cache
    # would key on path strings and return stale results for changed files.
    "cache_policy": NO_CACHE,
    "persist_result": False,
}


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


@task(name="index", task_run_name="index-{site_id}", **_TASK_OPTIONS)
def index_task(site_id: str, dicom_dir: str, state_root: str) -> tuple[SiteIndex, bool]:
    """Index one site's ``dicom_dir``; record the index when it changed.

    Returns
    -------
    tuple
        The index and whether it differs from the one recorded before.
    """
    index = index_site(site_id, Path(dicom_dir))
    path = StatePaths(Path(state_root)).site_index(site_id)
    data = to_jsonable(index)
    try:
        changed = from_jsonable(SiteIndex, _read_json(path)) != index
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        changed = True
    if changed:
        atomic_write_json(path, data)
    return index, changed


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@task(name="ingest-study", task_run_name="ingest-{site.id}", **_TASK_OPTIONS)
def ingest_task(study: StudyRecord, site: SiteConfig, state_root: str) -> StepResult:
    """Gate, select, check and convert one study (:func:`curation.ingest.ingest_study`)."""
    state = StatePaths(Path(state_root))
    record = state.study_outcome(site.id, study.key)
    before = _mtime_ns(record)
    start = time.perf_counter()
    outcome = ingest_study(study, site, state)
    seconds = time.perf_counter() - start
    return StepResult(outcome, fresh=_mtime_ns(record) != before, seconds=seconds)


@task(name="prepare-case", task_run_name="prepare-{site.id}", **_TASK_OPTIONS)
def prepare_task(
    case: ConvertedCase,
    site: SiteConfig,
    state_root: str,
    config: Config,
    release_labels: ReleaseLabels,
    source_table: SourceLabelTable,
) -> StepResult:
    """Segmentations, lesion subtraction and defacing of one case (:func:`curation.prepare.prepare_case`)."""
    state = StatePaths(Path(state_root))
    record = state.prepared_dir(case.key) / "prepared.json"
    before = _mtime_ns(record)
    start = time.perf_counter()
    outcome = prepare_case(
        case,
        site,
        state,
        defacing=config.defacing,
        release_labels=release_labels,
        source_table=source_table,
    )
    seconds = time.perf_counter() - start
    fresh = isinstance(outcome, Rejection) or _mtime_ns(record) != before
    return StepResult(outcome, fresh=fresh, seconds=seconds)


@task(name="number", **_TASK_OPTIONS)
def number_task(registry_path: str, candidates: list[NumberingCandidate]) -> tuple[dict[str, int], list[str]]:
    """Give every releasable study its case number.

    Returns
    -------
    tuple
        StudyInstanceUID -> number for every candidate, and the UIDs numbered now.
    """
    registry = Registry(Path(registry_path))
    known = {e.StudyInstanceUID for e in registry.entries()}
    numbers = registry.assign(candidates)
    return numbers, sorted(uid for uid in numbers if uid not in known)


@task(name="package", **_TASK_OPTIONS)
def package_task(
    config: Config, entries: list[ReleaseEntry], labels: ReleaseLabels, force: bool
) -> ReleaseResult:
    """Spreadsheets, labels.json, dataset card, checksums and the zip."""
    return assemble_release(config, entries, labels, pipeline_version=PIPELINE_VERSION, force=force)


@task(name="verify", **_TASK_OPTIONS)
def verify_task(zip_path: str, state_dir: str | None) -> tuple[str, ...]:
    """Check a release zip's integrity, layout, images, spreadsheets and defacing (no leak scan)."""
    report = verify_release(Path(zip_path), state_dir=Path(state_dir) if state_dir else None, leak_scan=False)
    return tuple(report.problems)


@task(name="leak-scan", **_TASK_OPTIONS)
def leak_scan_task(zip_path: str, state_dir: str) -> tuple[str, ...]:
    """Scan every decompressed byte of a release for the state's identifying values."""
    problems = tuple(leak_scan_problems(Path(zip_path), Path(state_dir)))
    for line in problems:
        logger.warning("%s", line)
    return problems


def _verify(zip_path: str, state_dir: str | None) -> tuple[str, ...]:
    """:func:`release.verify.verify_release` as two tasks at once: the checks and the leak scan.

    Both read the whole zip; on two workers they take the time of the longer one.
    The problems come in the order the plain function gives them.
    """
    checks = verify_task.submit(zip_path, state_dir)
    scan = leak_scan_task.submit(zip_path, state_dir) if state_dir else None
    problems = checks.result()
    return problems + scan.result() if scan is not None else problems


# ---------------------------------------------------------------------------
# helpers run in the flow's own process


def _flow_run_id() -> str:
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else ""


def _collect(
    futures: Mapping[PrefectFuture[Any], tuple[str, str, str]],
    on_result: Callable[[Any, tuple[str, str, str]], None],
    tally: _Tally,
    audit: AuditLog,
) -> None:
    """Handle task results as they complete; record a task that raised as failed.

    ``futures`` maps each future to (site, study UID, step name).
    """
    for future in as_completed(list(futures)):
        site, study, step = futures[future]
        try:
            value = future.result()
        except Exception as error:  # the task failed: record it, go on with the others
            text = f"{type(error).__name__}: {error}"
            logger.error("site %s: %s of study %s failed: %s", site, step, study, text)
            tally.failed.append((site, step, text))
            audit.append(
                f"{step}-failed",
                site=site,
                study=study,
                parameters={"error": text},
                outcome="failed",
                flow_run_id=_flow_run_id(),
            )
        else:
            on_result(value, futures[future])
        progress.advance(step)


_DECISIONS = ("study-converted", "study-rejected", "case-prepared", "case-held-back")


def _decision_key(event: str, study: str, inputs: Mapping[str, str], outputs: Mapping[str, str]) -> str:
    return json.dumps([event, study, dict(inputs), dict(outputs)], sort_keys=True)


def recorded_decisions(audit: AuditLog) -> set[str]:
    """The per-study decisions the audit log already holds (event, study, input and output hashes)."""
    return {
        _decision_key(r["event"], r["study"], r["inputs"], r["outputs"])
        for r in audit.records()
        if r["event"] in _DECISIONS
    }


def _record_decision(
    tally: _Tally,
    audit: AuditLog,
    event: str,
    *,
    fresh: bool,
    site: str,
    study: str,
    inputs: dict[str, str],
    outputs: dict[str, str],
    parameters: dict[str, Any],
    outcome: str,
) -> None:
    """Append a stage's decision unless the log already holds exactly this decision.

    A stage that did its work now (``fresh``) is always recorded.  One that found
    its work done is recorded only when the log lacks it: a run killed after the
    stage wrote its outputs but before the flow wrote the record leaves such a
    gap, and the resuming run fills it (``recorded_late``).
    """
    key = _decision_key(event, study, inputs, outputs)
    if not fresh and key in tally.recorded:
        return
    if not fresh:
        parameters = {**parameters, "recorded_late": True}
    audit.append(event, site=site, study=study, inputs=inputs, outputs=outputs, parameters=parameters,
                 outcome=outcome, flow_run_id=_flow_run_id())
    tally.recorded.add(key)
    tally.fresh += 1


def _record_ingest(result: StepResult, tally: _Tally, audit: AuditLog) -> None:
    outcome = result.outcome
    if isinstance(outcome, ConvertedCase):
        tally.converted[outcome.key] = outcome
        _record_decision(
            tally,
            audit,
            "study-converted",
            fresh=result.fresh,
            site=outcome.site,
            study=outcome.StudyInstanceUID,
            inputs={"dicom": outcome.fingerprint},
            outputs={"CT.nii.gz": outcome.ct.sha256, "PT.nii.gz": outcome.pt.sha256},
            parameters={
                "ct_series": outcome.ct_series,
                "pt_series": outcome.pt_series,
                "ignored_series": [{"series": s.SeriesInstanceUID, "why": s.why} for s in outcome.ignored],
                "private_attributes_for_review": list(outcome.private_review),
            },
            outcome="converted",
        )
    else:
        assert isinstance(outcome, Rejection)
        tally.rejected.append(outcome)
        _record_rejection(outcome, result.fresh, tally, audit)


def _record_rejection(rejection: Rejection, fresh: bool, tally: _Tally, audit: AuditLog) -> None:
    ingest = rejection.stage == "ingest"
    _record_decision(
        tally,
        audit,
        "study-rejected" if ingest else "case-held-back",
        fresh=fresh,
        site=rejection.site,
        study=rejection.StudyInstanceUID,
        inputs={"dicom" if ingest else "case": rejection.fingerprint},
        outputs={},
        parameters=_rejection_parameters(rejection),
        outcome="rejected",
    )


_GATE_REASONS = (RejectReason.PHI_DETECTED, RejectReason.BURNED_IN_ANNOTATION)
_ATTRIBUTE_RE = re.compile(r"\([0-9A-Fa-fx]{4},[0-9A-Fa-fx]{4}\) [A-Za-z][A-Za-z0-9]*")


def _rejection_parameters(rejection: Rejection) -> dict[str, Any]:
    """Reason, sentence and, for the de-identification gate, the attributes it named.

    The gate's sentence names each finding by tag and keyword, never by value.
    """
    parameters: dict[str, Any] = {
        "reason": rejection.reason.value,
        "message": rejection.message,
        "stage": rejection.stage,
    }
    if rejection.reason in _GATE_REASONS:
        parameters["gate_findings"] = sorted(set(_ATTRIBUTE_RE.findall(rejection.message)))
    return parameters


def _ingest_sites(
    config: Config,
    sites: Sequence[SiteConfig],
    state: StatePaths,
    tally: _Tally,
    audit: AuditLog,
    *,
    on_converted: Callable[[ConvertedCase], None] | None = None,
) -> None:
    """Index every site, then ingest all their studies on the task runner.

    ``on_converted`` is called in the flow's process with each case as soon as
    its ingest completes (``curate`` submits the case's preparation right away,
    so workers never wait for the slowest study of the ingest phase).
    """
    root = str(state.root)
    index_futures = {site.id: index_task.submit(site.id, str(site.dicom_dir), root) for site in sites}
    indexes: dict[str, SiteIndex] = {}
    for site in sites:
        try:
            index, changed = index_futures[site.id].result()
        except Exception as error:  # the site's other work cannot start; the other sites go on
            text = f"{type(error).__name__}: {error}"
            logger.error("site %s: indexing %s failed: %s", site.id, site.dicom_dir, text)
            tally.failed.append((site.id, "index", text))
            audit.append("index-failed", site=site.id, parameters={"error": text}, outcome="failed",
                         flow_run_id=_flow_run_id())
            continue
        indexes[site.id] = index
        tally.studies[site.id] = len(index.studies)
        for study in index.studies:
            tally.sensitive.update(index_identifiers(study))
        if changed:
            audit.append(
                "site-indexed",
                site=site.id,
                parameters={
                    "dicom_dir": str(site.dicom_dir),
                    "files_seen": index.files_seen,
                    "files_skipped": len(index.skipped),
                    "studies": len(index.studies),
                },
                flow_run_id=_flow_run_id(),
            )
    progress.start(sum(len(i.studies) for i in indexes.values()), "ingest " + ", ".join(indexes))
    futures: dict[PrefectFuture[Any], tuple[str, str, str]] = {}
    for site in sites:
        if site.id not in indexes:
            continue
        for study in indexes[site.id].studies:
            futures[ingest_task.submit(study, site, root)] = (site.id, study.StudyInstanceUID, "ingest")
    def handle(result: StepResult, _: tuple[str, str, str]) -> None:
        _record_ingest(result, tally, audit)
        if on_converted is not None and isinstance(result.outcome, ConvertedCase):
            on_converted(result.outcome)

    _collect(futures, handle, tally, audit)
    progress.finish()


def _record_prepare(result: StepResult, tally: _Tally, audit: AuditLog) -> None:
    outcome = result.outcome
    if isinstance(outcome, Rejection):
        # a held-back case writes no record of its own: it is new when the log lacks it
        tally.rejected.append(outcome)
        _record_rejection(outcome, False, tally, audit)
        return
    assert isinstance(outcome, PreparedCase)
    tally.prepared[outcome.key] = outcome
    outputs = {"CT.nii.gz": outcome.ct.sha256, "PT.nii.gz": outcome.pt.sha256}
    outputs.update({f"{cat}.nii.gz": img.sha256 for cat, img in sorted(outcome.labels.items())})
    _record_decision(
        tally,
        audit,
        "case-prepared",
        fresh=result.fresh,
        site=outcome.site,
        study=outcome.StudyInstanceUID,
        inputs={"case": outcome.fingerprint},
        outputs=outputs,
        parameters={
            "defaced": outcome.defaced,
            "cylinder": to_jsonable(outcome.cylinder),
            "head_missing_released": outcome.head_missing_released,
            "dropped_labels": outcome.dropped_labels,
            "lesion_voxels_removed": outcome.lesion_voxels_removed,
        },
        outcome="prepared",
    )


@dataclass(frozen=True)
class _BuildInputs:
    """What every case's preparation needs, loaded once per run in the flow's process."""

    release_labels: ReleaseLabels
    source_table: SourceLabelTable
    withdrawn: frozenset[str]  # StudyInstanceUIDs
    indications: dict[tuple[str, str], str]  # (site, StudyInstanceUID) -> clinical sheet's indication

    @classmethod
    def load(cls, config: Config, state: StatePaths) -> _BuildInputs:
        withdrawn = frozenset(e.StudyInstanceUID for e in Registry(state.registry).entries() if e.withdrawn)
        return cls(load_release_labels(config.release.labels), load_source_table(), withdrawn, _indications(config))


def _submit_prepare(
    case: ConvertedCase, config: Config, state: StatePaths, inputs: _BuildInputs
) -> PrefectFuture[Any]:
    site = config.site(case.site)
    return prepare_task.submit(case, site, str(state.root), config, inputs.release_labels, inputs.source_table)


def _build(
    config: Config,
    state: StatePaths,
    tally: _Tally,
    audit: AuditLog,
    *,
    force: bool,
    inputs: _BuildInputs | None = None,
    submitted: Mapping[str, PrefectFuture[Any]] | None = None,
) -> None:
    """Prepare every converted case, number, package, verify (under the build lock).

    ``submitted`` maps study keys to preparations already under way (submitted
    by ``curate`` as each ingest completed); every other converted case of the
    state folder is submitted here.
    """
    inputs = inputs or _BuildInputs.load(config, state)
    submitted = submitted or {}
    release_labels = inputs.release_labels
    sites = {site.id: site for site in config.sites}
    cases: list[ConvertedCase] = []
    for site in config.sites:
        for outcome in site_outcomes(state, site.id):
            if isinstance(outcome, ConvertedCase) and outcome.StudyInstanceUID not in inputs.withdrawn:
                cases.append(outcome)
                tally.sensitive.update({outcome.StudyInstanceUID, outcome.PatientID,
                                        outcome.ct_series, outcome.pt_series})
    converted = {case.key: case for case in cases}
    cases = list(converted.values())  # one task per study, whatever the state folder holds

    progress.start(len(cases), "prepare")
    futures: dict[PrefectFuture[Any], tuple[str, str, str]] = {}
    for case in cases:
        future = submitted.get(case.key) or _submit_prepare(case, config, state, inputs)
        futures[future] = (case.site, case.StudyInstanceUID, "prepare")
    _collect(futures, lambda r, _: _record_prepare(r, tally, audit), tally, audit)
    progress.finish()

    prepared = [tally.prepared[key] for key in sorted(tally.prepared)]
    if not prepared:
        logger.warning("%s: no case is ready for release; no zip was built", config.path)
        return
    rank = {site.id: i for i, site in enumerate(config.sites)}
    candidates = [
        NumberingCandidate(
            site_rank=rank[p.site],
            site=p.site,
            PatientID=converted[p.key].PatientID,
            StudyDate=converted[p.key].StudyDate,
            StudyInstanceUID=p.StudyInstanceUID,
        )
        for p in prepared
    ]
    numbers, new = number_task.submit(str(state.registry), candidates).result()
    for uid in new:
        key = next(p.key for p in prepared if p.StudyInstanceUID == uid)
        audit.append(
            "case-numbered",
            site=converted[key].site,
            study=uid,
            case=format_case_number(numbers[uid]),
            parameters={"number": numbers[uid], "cases": [format_case_number(numbers[uid])]},
            flow_run_id=_flow_run_id(),
        )
    tally.fresh += len(new)

    entries = sorted(
        (
            ReleaseEntry(
                number=numbers[p.StudyInstanceUID],
                prepared=p,
                converted=converted[p.key],
                indication=inputs.indications.get((p.site, p.StudyInstanceUID), sites[p.site].indication),
                license=sites[p.site].license,
            )
            for p in prepared
        ),
        key=lambda e: e.number,
    )
    progress.step("number, spreadsheets, card, checksums, zip")
    result = package_task.submit(config, entries, release_labels, force).result()
    case_numbers = [format_case_number(e.number) for e in entries]
    for entry in entries:
        tally.released.setdefault(entry.prepared.site, []).append(format_case_number(entry.number))
    tally.zip_path = result.zip_path
    tally.zip_reused = result.reused
    audit.append(
        "release-reused" if result.reused else "release-packaged",
        outputs={Path(result.zip_path).name: result.sha256},
        parameters={
            "cases": case_numbers,
            "members": result.members,
            "bytes": result.bytes,
            "pipeline_version": PIPELINE_VERSION,
            "force": force,
        },
        flow_run_id=_flow_run_id(),
    )
    if not result.reused or not _verified_before(audit, Path(result.zip_path).name, result.sha256):
        progress.step("verify")
        problems = _verify(result.zip_path, str(state.root))
        audit.append(
            "release-verified",
            inputs={Path(result.zip_path).name: result.sha256},
            parameters={"problems": list(problems), "cases": case_numbers},
            outcome="ok" if not problems else "failed",
            flow_run_id=_flow_run_id(),
        )
        if problems:
            for problem in problems:
                logger.error("%s: %s", result.zip_path, problem)
            quarantined = _quarantine(Path(result.zip_path))
            audit.append(
                "release-quarantined",
                inputs={Path(result.zip_path).name: result.sha256},
                outputs={quarantined.name: result.sha256},
                parameters={"problems": len(problems)},
                outcome="failed",
                flow_run_id=_flow_run_id(),
            )
            tally.zip_path = None
            tally.failed.append(("", "verify", f"{len(problems)} problem(s) in {Path(result.zip_path).name}; "
                                               f"moved aside as {quarantined.name}"))


def _quarantine(zip_path: Path) -> Path:
    """Move a zip that failed verify out of the way, so nothing finished-looking is left to publish."""
    target = zip_path.with_name(zip_path.name + ".failed-verify")
    zip_path.replace(target)
    zip_path.with_name(zip_path.name + ".sha256").unlink(missing_ok=True)
    logger.error("%s failed verify: moved to %s; it must not be published", zip_path, target)
    return target


def _verified_before(audit: AuditLog, zip_name: str, sha256: str) -> bool:
    """Whether the last verification of this exact zip (by content) found no problem."""
    for record in reversed(audit.records()):
        if record["event"] == "release-verified" and record["inputs"].get(zip_name) == sha256:
            return bool(record["outcome"] == "ok")
    return False


def _indications(config: Config) -> dict[tuple[str, str], str]:
    """(site, StudyInstanceUID) -> indication from each site's own clinical sheet.

    Raises
    ------
    release.spreadsheets.ClinicalSheetError
        A configuration error naming the sheet, row and problem.
    """
    out: dict[tuple[str, str], str] = {}
    for site in config.sites:
        if site.clinical_sheet is not None:
            out.update({(site.id, uid): text for uid, text in read_clinical_sheet(site.clinical_sheet).items()})
    return out


class _BuildLock:
    """``state_dir/build.lock``: one build of a release at a time, refuse the second."""

    def __init__(self, state: StatePaths) -> None:
        state.root.mkdir(parents=True, exist_ok=True)
        self.path = state.build_lock
        self._lock = filelock.FileLock(str(self.path), timeout=0)

    def __enter__(self) -> _BuildLock:
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise BuildInProgressError(
                f"{self.path}: another build of this release is running (it holds this lock); "
                "wait for it to finish, then run again"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


# ---------------------------------------------------------------------------
# artifacts (seen by the whole team on the server: no identifiers)

_UID_RE = re.compile(r"\b\d+(?:\.\d+){2,}\b")
_PATH_RE = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^\s/\\'\"(),;:]+)+[/\\]?")


def public_sentence(text: str, identifiers: Iterable[str], roots: Iterable[str] = ()) -> str:
    """``text`` with every identifier, UID-looking number and file path replaced.

    Rejection sentences name series UIDs and files as evidence; artifacts go to
    a server a whole team reads, so these are blanked.  A path under one of
    ``roots`` (the configured folders) is blanked up to the ``": "`` that ends
    it in our sentences, so folder names with spaces (a patient's name, say)
    never reach the artifact in part.
    """
    for root in sorted((r for r in roots if r), key=len, reverse=True):
        text = re.sub(re.escape(root) + r".*?(?=: |$)", "<path>", text, flags=re.MULTILINE)
    for value in sorted((v for v in identifiers if len(v) >= 3), key=len, reverse=True):
        text = text.replace(value, "<id>")
    text = _UID_RE.sub("<uid>", text)
    return _PATH_RE.sub("<path>", text)


def _config_roots(config: Config) -> list[str]:
    folders = [config.release.state_dir, config.release.output_dir]
    for site in config.sites:
        folders += [site.dicom_dir, site.segmentations_dir, site.lesions_dir, site.clinical_sheet]
    return [str(f) for f in folders if f is not None]


def _publish(flow_name: str, config: Config, tally: _Tally, summary: RunSummary) -> None:
    roots = _config_roots(config)
    hidden = set(tally.sensitive)
    try:  # every identifying value ingest recorded (names too), not only the ones this run saw
        hidden |= load_sensitive_values(config.release.state_dir)
    except ValueError as exc:
        logger.warning("artifacts: the recorded sensitive values cannot be read (%s); UIDs and paths are still blanked", exc)
    sites = sorted(set(tally.studies) | {c.site for c in tally.converted.values()} |
                   {r.site for r in tally.rejected} | set(tally.released),
                   key=[s.id for s in config.sites].index)
    lines = [
        f"# {flow_name}: {config.release.name} {config.release.version}",
        "",
        f"Converted {summary.converted}, rejected {sum(summary.rejected.values())}, "
        f"released {summary.released}, failed {summary.failed}"
        + (" (nothing to do: everything was up to date)" if summary.nothing_to_do else "") + ".",
        "",
        "| site | studies seen | converted | rejected | released |",
        "|---|---|---|---|---|",
    ]
    for site in sites:
        lines.append(
            f"| {site} | {tally.studies.get(site, '-')} "
            f"| {sum(1 for c in tally.converted.values() if c.site == site)} "
            f"| {sum(1 for r in tally.rejected if r.site == site)} "
            f"| {len(tally.released.get(site, []))} |"
        )
    if summary.zip_path:
        lines += ["", f"Release: `{Path(summary.zip_path).name}`"]
    if tally.released:
        lines += ["", "## Released cases", ""]
        lines += [f"- {site}: {', '.join(nums)}" for site, nums in tally.released.items()]
    rows = [
        {"site": r.site, "stage": r.stage, "reason": r.reason.value,
         "sentence": public_sentence(r.message, hidden, roots)}
        for r in sorted(tally.rejected, key=lambda r: (r.site, r.reason.value, r.message))
    ]
    if rows:
        lines += ["", "## Rejected", "", "| site | reason | why |", "|---|---|---|"]
        lines += [f"| {r['site']} | `{r['reason']}` | {r['sentence']} |" for r in rows]
    if tally.failed:
        lines += ["", "## Failed (unexpected errors; see the logs and the audit log)", ""]
        lines += [f"- {site or '(release)'}: {step}: {public_sentence(error, hidden, roots)}"
                  for site, step, error in tally.failed]
    key = re.sub(r"[^a-z0-9-]", "-", f"{config.release.name}-{flow_name}".lower())
    create_markdown_artifact("\n".join(lines) + "\n", key=f"{key}-summary",
                             description=f"{flow_name} run summary (no identifiers)")
    create_table_artifact(rows, key=f"{key}-rejected",
                          description="Rejected studies: reason code and sentence (identifiers blanked)")


# ---------------------------------------------------------------------------
# flows


def _finish(flow_name: str, config: Config, tally: _Tally) -> RunSummary | State[Any]:
    summary = RunSummary(
        converted=len(tally.converted),
        rejected=tally.rejected_by_reason(),
        released=sum(len(v) for v in tally.released.values()),
        failed=len(tally.failed),
        zip_path=tally.zip_path,
        flow_run_id=_flow_run_id(),
        nothing_to_do=tally.fresh == 0 and tally.zip_reused and not tally.failed,
    )
    _publish(flow_name, config, tally, summary)
    if summary.failed:
        # The run went on with the other cases; its final state says how many failed.
        return Failed(message=f"{summary.failed} task(s) failed: see the audit log "
                              f"{StatePaths(config.release.state_dir).audit_log}", data=summary)
    return summary


def _context(config_path: str) -> tuple[Config, StatePaths, AuditLog]:
    config = load_config(config_path)
    state = StatePaths(config.release.state_dir)
    state.root.mkdir(parents=True, exist_ok=True)
    return config, state, AuditLog(state.audit_log)


@flow(name="ingest_site", log_prints=False, validate_parameters=False)
def ingest_site_flow(config_path: str, site_id: str | None = None) -> RunSummary | State[Any]:
    """Index, gate, select, check and convert the studies of one site (or all sites)."""
    config, state, audit = _context(config_path)
    sites = list(config.sites) if site_id is None else [config.site(site_id)]
    tally = _Tally(recorded=recorded_decisions(audit))
    _ingest_sites(config, sites, state, tally, audit)
    return _finish("ingest_site", config, tally)


@flow(name="build_release", log_prints=False, validate_parameters=False)
def build_release_flow(config_path: str, force: bool = False) -> RunSummary | State[Any]:
    """Prepare, number and package every converted case, then verify the zip."""
    config, state, audit = _context(config_path)
    tally = _Tally(recorded=recorded_decisions(audit))
    with _BuildLock(state):
        _build(config, state, tally, audit, force=force)
    return _finish("build_release", config, tally)


@flow(name="curate", log_prints=False, validate_parameters=False)
def curate_flow(config_path: str, force: bool = False) -> RunSummary | State[Any]:
    """Ingest every site, then build and verify the release (the main flow)."""
    config, state, audit = _context(config_path)
    tally = _Tally(recorded=recorded_decisions(audit))
    with _BuildLock(state):
        inputs = _BuildInputs.load(config, state)
        submitted: dict[str, PrefectFuture[Any]] = {}

        def prepare_now(case: ConvertedCase) -> None:
            if case.StudyInstanceUID not in inputs.withdrawn:
                submitted[case.key] = _submit_prepare(case, config, state, inputs)

        _ingest_sites(config, list(config.sites), state, tally, audit, on_converted=prepare_now)
        _build(config, state, tally, audit, force=force, inputs=inputs, submitted=submitted)
    return _finish("curate", config, tally)


@flow(name="verify_release", log_prints=False, validate_parameters=False)
def verify_flow(zip_path: str, state_dir: str | None = None) -> VerifySummary:
    """Check a release zip; with ``state_dir``, also the leak scan and the defacing."""
    problems = _verify(zip_path, state_dir)
    if state_dir:
        audit = AuditLog(StatePaths(Path(state_dir)).audit_log)
        audit.append(
            "release-verified",
            inputs={Path(zip_path).name: _sha256_or_missing(Path(zip_path))},
            parameters={"problems": list(problems)},
            outcome="ok" if not problems else "failed",
            flow_run_id=_flow_run_id(),
        )
    return VerifySummary(problems=tuple(problems))


def _sha256_or_missing(path: Path) -> str:
    from curation.atomic import sha256_file

    try:
        return sha256_file(path)
    except OSError:
        return ""


# ---------------------------------------------------------------------------
# plain entry points (the CLI calls these)


def _run(flow_obj: Any, config_path: str, **parameters: Any) -> RunSummary:
    config = load_config(config_path)  # a ConfigError surfaces before Prefect starts
    _indications(config)  # and so does an unreadable clinical sheet
    with prefect_api() as api_url:
        runner = make_task_runner(config.execution, api_url=api_url)
        state = flow_obj.with_options(task_runner=runner)(
            str(config.path), **parameters, return_state=True
        )
    result = state.result(raise_on_failure=False)
    if isinstance(result, RunSummary):
        return result
    if isinstance(result, BaseException):
        raise result
    raise RuntimeError(f"flow {flow_obj.name} ended {state.type.value}: {state.message}")


def curate(config_path: str, *, force: bool = False) -> RunSummary:
    """Ingest every site of ``config_path``, then build and verify the release.

    Raises
    ------
    curation.config.ConfigError
        When the configuration is invalid.
    BuildInProgressError
        When another build of the same release holds the build lock.
    """
    return _run(curate_flow, config_path, force=force)


def ingest_site(config_path: str, site_id: str | None = None) -> RunSummary:
    """Ingest one site (``site_id``) or, with ``None``, every site."""
    return _run(ingest_site_flow, config_path, site_id=site_id)


def build_release(config_path: str, *, force: bool = False) -> RunSummary:
    """Prepare, number, package and verify the release from the ingested cases."""
    return _run(build_release_flow, config_path, force=force)


def verify_release_flow(zip_path: str, state_dir: str | None) -> VerifySummary:
    """Verify a release zip through the ``verify_release`` flow."""
    with prefect_api():
        state = verify_flow(str(zip_path), str(state_dir) if state_dir else None, return_state=True)
    return state.result()


__all__ = [
    "PIPELINE_VERSION",
    "BuildInProgressError",
    "RunSummary",
    "VerifySummary",
    "build_release",
    "build_release_flow",
    "curate",
    "curate_flow",
    "ingest_site",
    "ingest_site_flow",
    "public_sentence",
    "verify_release_flow",
]
