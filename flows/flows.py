"""The Prefect flows: ``ingest_site``, ``build_release`` and ``curate``.

Every command of the CLI and every deployment run goes through these flows, so
a run by hand and a scheduled run are the same code and leave the same audit
trail.  The flow's own process submits the tasks (:mod:`flows.tasks`), files
their results as they complete (:mod:`flows.decisions`: the run's tally and the
audit log), reports progress, holds the build lock (:mod:`flows.lock`) and
publishes the run's artifacts (:mod:`flows.artifacts`).

Per-case work is a chain of stages (:mod:`curation.stage`): ingest, then the
build stages of :func:`build_stages`.  Each case moves to its next stage as
soon as its previous one completes, so workers never wait for the slowest case
of a phase.  Adding a stage is one line in :func:`build_stages`.

A data problem is a :class:`~curation.model.Rejection` with its reason code; an
unexpected exception fails that one task, is recorded with outcome ``failed``,
the run goes on with the other cases, and the flow run ends Failed with the
count.  The plain entry points at the end (``run_curate`` ...) are what the
CLI calls.
"""

from __future__ import annotations

import heapq
import importlib.metadata
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any, TypeVar, cast

from prefect import Flow, flow
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.states import Failed, State
from prefect.utilities.annotations import quote

from curation.clinical import read_clinical_sheet
from curation.config import Config, Packaging, SiteConfig, load_config
from curation.labels import ReleaseLabels, SourceLabelTable, load_release_labels, load_site_tables
from curation.model import ConvertedCase, PreparedCase, SiteIndex, StudyRecord, index_identifiers
from curation.registry import Registry, format_case_number
from curation.stage import CaseStage, ChainError, StageResult
from curation.state import StatePaths, site_outcomes
from curation.threads import stage_threads
from flows import progress
from flows.artifacts import publish
from flows.audit import AuditEvent, AuditLog, check_verification_record
from flows.decisions import (
    RunSummary,
    Tally,
    record_failure,
    record_result,
    recorded_decisions,
)
from flows.lock import BuildLock
from flows.runners import make_task_runner, prefect_api
from flows.tasks import (
    case_task,
    index_task,
    number_task,
    package_task,
    part_task,
    parts_finish_task,
    plan_parts_task,
    report_task,
    verify_chunk_task,
    verify_parts_plan_task,
    verify_plan_task,
)

if TYPE_CHECKING:
    from release.assemble import ReleaseEntry, ReleaseResult
    from release.parts import PartsResult
    from release.verify import VerifyPlan

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


def _pipeline_version() -> str:
    try:
        return importlib.metadata.version("petct-release")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "0.0.0+source"


PIPELINE_VERSION = _pipeline_version()
#: The stage whose finished cases a run counts as converted: ``curation.ingest.IngestStage.name``
#: (that module, with pydicom and the converter, is imported only when there is a study to ingest).
CONVERTED_BY = "ingest"


def _flow_run_id() -> str:
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else ""


# ---------------------------------------------------------------------------
# the per-case stages


@dataclass(frozen=True)
class BuildInputs:
    """What every case's build stages need, loaded once per run in the flow's process.

    Attributes
    ----------
    release_labels
        The release label set.
    source_tables
        Site id -> the site's source label table (``[[site]] label_table``).
    withdrawn
        StudyInstanceUIDs of withdrawn cases (never built again).
    indications
        (site, StudyInstanceUID) -> the indication of a site's clinical sheet.
    """

    release_labels: ReleaseLabels
    source_tables: dict[str, SourceLabelTable]
    withdrawn: frozenset[str]
    indications: dict[tuple[str, str], str]

    @classmethod
    def load(cls, config: Config, state: StatePaths) -> BuildInputs:
        """Read the label tables, the registry's withdrawals and the clinical sheets."""
        withdrawn = frozenset(e.StudyInstanceUID for e in Registry(state.registry).entries() if e.withdrawn)
        release_labels = load_release_labels(config.release.labels)
        return cls(release_labels, load_site_tables(config.sites, release_labels), withdrawn, indications(config))


def build_stages(config: Config, site: SiteConfig, state: StatePaths, inputs: BuildInputs) -> tuple[CaseStage[Any], ...]:
    """The per-case stages of a build, in order; a case is released when it finishes all of them."""
    from curation.prepare import PrepareStage
    from curation.qc import QCStage

    return (
        PrepareStage(site=site, state=state, defacing=config.defacing,
                     release_labels=inputs.release_labels, source_table=inputs.source_tables[site.id]),
        QCStage(state=state, release_labels=inputs.release_labels, source_table=inputs.source_tables[site.id]),
    )


def indications(config: Config) -> dict[tuple[str, str], str]:
    """(site, StudyInstanceUID) -> indication from each site's own clinical sheet.

    Raises
    ------
    curation.clinical.ClinicalSheetError
        A configuration error naming the sheet, row and problem.
    """
    out: dict[tuple[str, str], str] = {}
    for site in config.sites:
        if site.clinical_sheet is not None:
            out.update({(site.id, uid): text for uid, text in read_clinical_sheet(site.clinical_sheet).items()})
    return out


def _opaque(value: _T) -> _T:
    """``value`` as a task argument Prefect passes on without walking through it (``quote``).

    Prefect visits every element of a task's arguments, on submission and again in
    the worker, looking for futures: a case's stages (label tables of hundreds of
    rows) and study records cost 35 ms a task in the worker alone.  Not on Dask:
    Dask rebuilds the tuples it finds in arguments, and ``quote`` is one.
    """
    context = FlowRunContext.get()
    if context is not None and type(context.task_runner).__module__.startswith("prefect_dask"):
        return value
    return cast(_T, quote(value))


def work_estimate(subject: Any) -> int:
    """A case's relative cost, for ordering: a study's files (a slice each, mostly), or a converted case's slices.

    Only compares cases of one phase with each other (a run's ingest chains, or a
    build's chains of cases converted before); a wrong guess costs a little idle
    time at the end of the phase, never a result.
    """
    if isinstance(subject, StudyRecord):
        return sum(len(series.files) for series in subject.series)
    if isinstance(subject, ConvertedCase):
        return int(subject.ct.shape[-1]) + int(subject.pt.shape[-1])
    return 0


class _Pipeline:
    """Runs each case through its stages (one task per case) and files the results as they complete.

    Cases wait in this process, the largest first (:func:`work_estimate`), and
    ``window`` of them are on the runner at a time: two per worker, so a worker
    that finishes a case finds the next one queued.  So the phase ends on small
    cases, not with one worker busy with a large one while the others idle; and a
    release of thousands of studies is not pickled onto the runner all at once.

    Parameters
    ----------
    tally, audit
        Where results are filed and decisions recorded.
    workers
        The runner's workers (``[execution] workers``).
    """

    def __init__(self, tally: Tally, audit: AuditLog, workers: int) -> None:
        self.tally = tally
        self.audit = audit
        self.window = 2 * max(1, workers)
        self.waiting: list[tuple[int, int, tuple[CaseStage[Any], ...], tuple[Any, ...]]] = []  # a heap
        self.pending: dict[PrefectFuture[Any], tuple[tuple[CaseStage[Any], ...], str, str]] = {}
        self.completed: SimpleQueue[PrefectFuture[Any]] = SimpleQueue()  # futures as they finish
        self.started: set[str] = set()  # study keys submitted in this run
        self._order = itertools.count()  # equal estimates keep their submission order

    def submit(self, stages: tuple[CaseStage[Any], ...], upstream: tuple[Any, ...]) -> None:
        """Queue one case's stages (a task), the first of which gets ``upstream``.

        It goes to the runner, the largest waiting case first, when this process next
        waits (:meth:`wait_for`, :meth:`drain`): queue a batch, then wait.
        """
        subject = upstream[0]
        self.started.add(subject.key)
        heapq.heappush(self.waiting, (-work_estimate(subject), next(self._order), stages, upstream))

    def _fill(self) -> None:
        while self.waiting and len(self.pending) < self.window:
            _, _, stages, upstream = heapq.heappop(self.waiting)
            subject = upstream[0]
            future = case_task.submit(_opaque(stages), _opaque(upstream), subject.site)
            self.pending[future] = (stages, subject.site, subject.StudyInstanceUID)
            future.add_done_callback(self.completed.put)

    def wait_for(self, future: PrefectFuture[Any]) -> None:
        """Wait until ``future`` (not a case's) is done, filing the cases that finish meanwhile."""
        self._fill()
        future.add_done_callback(self.completed.put)
        while (done := self.completed.get()) is not future:
            self._file(done)

    def drain(self) -> None:
        """Wait for every case, filing each stage's result in order (and a failure after them)."""
        self._fill()
        while self.pending:
            self._file(self.completed.get())

    def _file(self, future: PrefectFuture[Any]) -> None:
        stages, site, study = self.pending.pop(future)
        self._fill()  # the next case goes to the runner before this one's results are filed
        try:
            results: tuple[StageResult[Any], ...] = future.result()
            failure: ChainError | None = None
        except ChainError as error:
            results, failure = error.results, error
        except Exception as error:  # the task could not run at all
            results, failure = (), ChainError(stages[0].name, f"{type(error).__name__}: {error}", (), False)
        by_name = {stage.name: stage for stage in stages}
        for result in results:
            record_result(by_name[result.stage], result, self.tally, self.audit, flow_run_id=_flow_run_id())
            progress.advance(result.stage)
        if failure is not None:
            record_failure(self.tally, self.audit, site=site, study=study, step=failure.stage,
                           error=failure.error, flow_run_id=_flow_run_id())
            logger.error("site %s: %s of study %s failed: %s", site, failure.stage, study, failure.error)
            progress.advance(failure.stage)


# ---------------------------------------------------------------------------
# the phases


def _indexed(
    sites: Sequence[SiteConfig], state: StatePaths, pipeline: _Pipeline, *, rehash: bool = False
) -> Iterator[tuple[SiteConfig, SiteIndex]]:
    """Index every site (one task each; ``rehash``: every file read) and yield each index as it is ready.

    The sites are indexed at once and yielded in their order, each as soon as it
    and the sites before it are done, so a site's cases start while later sites
    are still indexed; what changed is recorded in that order.  A failed site is
    logged and skipped.
    """
    tally, audit = pipeline.tally, pipeline.audit
    futures = {site.id: index_task.submit(site.id, str(site.dicom_dir), str(state.root), rehash) for site in sites}
    for site in sites:
        pipeline.wait_for(futures[site.id])  # the cases of the sites before it go on meanwhile
        try:
            index, changed = futures.pop(site.id).result()
        except Exception as error:  # the site's other work cannot start; the other sites go on
            text = f"{type(error).__name__}: {error}"
            logger.error("site %s: indexing %s failed: %s", site.id, site.dicom_dir, text)
            tally.failed.append((site.id, "index", text))
            audit.append(AuditEvent.INDEX_FAILED, site=site.id, parameters={"error": text}, outcome="failed",
                         flow_run_id=_flow_run_id())
            continue
        tally.studies[site.id] = len(index.studies)
        for study in index.studies:
            tally.sensitive.update(index_identifiers(study))
        if changed:
            audit.append(
                AuditEvent.SITE_INDEXED,
                site=site.id,
                parameters={"dicom_dir": str(site.dicom_dir), "files_seen": index.files_seen,
                            "files_skipped": len(index.skipped), "studies": len(index.studies)},
                flow_run_id=_flow_run_id(),
            )
        yield site, index


def _ingest(
    sites: Sequence[SiteConfig],
    state: StatePaths,
    pipeline: _Pipeline,
    then: Callable[[SiteConfig], tuple[CaseStage[Any], ...]] = lambda site: (),
    withdrawn: frozenset[str] = frozenset(),
    rehash: bool = False,
) -> None:
    """Index the sites and submit every study's ingest followed by the stages ``then(site)``.

    A site's studies are submitted as soon as it is indexed, while later sites
    are indexed still (a worker never waits for the slowest site's index).  A
    withdrawn study is ingested (its identifiers are recorded) but goes no further.
    """
    progress.start(0, "ingest " + ", ".join(site.id for site in sites))
    for site, index in _indexed(sites, state, pipeline, rehash=rehash):
        progress.grow(len(index.studies), f"{site.id} indexed")
        if index.studies:
            ingest, later = _ingest_stage(site, state), then(site)
            for study in index.studies:
                stages = (ingest,) if study.StudyInstanceUID in withdrawn else (ingest, *later)
                pipeline.submit(stages, (study,))
    pipeline.drain()
    progress.finish()


def _ingest_stage(site: SiteConfig, state: StatePaths) -> CaseStage[ConvertedCase]:
    """The ingest stage of ``site``: its module (pydicom, the converter) is imported only when a site has studies."""
    from curation.ingest import IngestStage

    return IngestStage(site=site, state=state)


def _build(
    config: Config, state: StatePaths, pipeline: _Pipeline, inputs: BuildInputs, *, force: bool
) -> None:
    """Run the build stages on every converted case not yet built in this run, number, package, verify."""
    from curation.prepare import PrepareStage
    from release.assemble import publish_release, quarantine_release, record_verification
    from release.entries import numbering_candidates, release_entries
    from release.parts import PartsResult, publish_parts, quarantine_parts

    tally, audit = pipeline.tally, pipeline.audit
    sites = {site.id: site for site in config.sites}
    converted: dict[str, ConvertedCase] = {}
    for site in config.sites:
        for outcome in site_outcomes(state, site.id):
            if isinstance(outcome, ConvertedCase) and outcome.StudyInstanceUID not in inputs.withdrawn:
                converted[outcome.key] = outcome  # one chain per study, whatever the state folder holds
                tally.sensitive.update({outcome.StudyInstanceUID, outcome.PatientID,
                                        outcome.ct_series, outcome.pt_series})
    progress.start(len(converted), "build stages")
    for key, case in converted.items():
        if key not in pipeline.started:  # curate chained the build stages after this run's ingest
            pipeline.submit(build_stages(config, sites[case.site], state, inputs), (case,))
    pipeline.drain()
    progress.finish()

    done = {stage.name for stage in build_stages(config, config.sites[0], state, inputs)}
    prepared: list[PreparedCase] = [
        tally.finished(PrepareStage.name)[key]
        for key in sorted(converted)
        if all(key in tally.finished(name) for name in done)  # released: every build stage finished
    ]
    if not prepared:
        logger.warning("%s: no case is ready for release; no zip was built", config.path)
        return
    numbers, new = number_task(str(state.registry), _opaque(numbering_candidates(config, prepared, converted)))
    for uid in new:
        case = next(c for c in converted.values() if c.StudyInstanceUID == uid)
        number = format_case_number(numbers[uid])
        audit.append(AuditEvent.CASE_NUMBERED, site=case.site, study=uid, case=number,
                     parameters={"number": numbers[uid], "cases": [number]}, flow_run_id=_flow_run_id())
    tally.fresh += len(new)

    entries = release_entries(config, prepared, converted, numbers, inputs.indications)
    parts = config.release.packaging is Packaging.PARTS
    result: ReleaseResult | PartsResult
    if parts:
        result = _package_parts(config, entries, inputs, force=force)
    else:
        progress.step("spreadsheets, card, checksums, zip")
        result = package_task(_opaque(config), _opaque(entries), _opaque(inputs.release_labels), force, PIPELINE_VERSION)
    case_numbers = [format_case_number(e.number) for e in entries]
    for entry in entries:
        tally.released.setdefault(entry.prepared.site, []).append(format_case_number(entry.number))
    tally.zip_reused = result.reused
    zip_name = config.release.release_path.name
    # a release in parts: its digest under the folder's name, and every file's sha256
    hashes = {zip_name: result.sha256, **(result.hashes() if isinstance(result, PartsResult) else {})}
    parameters: dict[str, Any] = {
        "cases": case_numbers, "members": result.members, "bytes": result.bytes,
        "pipeline_version": PIPELINE_VERSION, "force": force, "published": result.published,
        # the date policy only: offsets are never recorded
        "dates": config.release.dates.value, "age_cap": config.release.age_cap,
        "removed_characters": result.removed_characters, "blanked_values": result.blanked_values,
    }
    if isinstance(result, PartsResult):
        parameters.update(packaging="parts", max_part_size=config.release.max_part_size,
                          parts={p.name: {"bytes": p.bytes, "cases": list(p.cases), "written": not p.reused}
                                 for p in result.parts})
    audit.append(
        AuditEvent.RELEASE_REUSED if result.reused else AuditEvent.RELEASE_PACKAGED,
        outputs=hashes, parameters=parameters, flow_run_id=_flow_run_id(),
    )
    if result.published and _verified_before(state, audit, zip_name, result.sha256):
        tally.zip_path = result.zip_path
        return
    # a new zip is verified under its staging name and published only when sound; a published
    # zip whose verification the audit log no longer vouches for is verified again
    progress.step("verify")
    if isinstance(result, PartsResult):
        plan = verify_parts_plan_task(zip_name, _opaque(result.locations()), str(state.root))
    else:
        plan = verify_plan_task(result.zip_path, str(state.root), config.execution.workers)
    problems = _verify(plan)
    tally.zip_reused = tally.zip_reused and not problems
    verified = audit.append(AuditEvent.RELEASE_VERIFIED, inputs=hashes,
                            parameters={"problems": list(problems), "cases": case_numbers},
                            outcome="ok" if not problems else "failed", flow_run_id=_flow_run_id())
    if problems:
        for problem in problems:
            logger.error("%s: %s", result.zip_path, problem)
        if isinstance(result, PartsResult):
            quarantined = quarantine_parts(result, config)
        else:
            quarantined = quarantine_release(Path(result.zip_path))
        audit.append(AuditEvent.RELEASE_QUARANTINED, inputs=hashes,
                     outputs={quarantined.name: result.sha256}, parameters={"problems": len(problems)},
                     outcome="failed", flow_run_id=_flow_run_id())
        tally.failed.append(("", "verify", f"{len(problems)} problem(s) in {zip_name}; "
                                           f"moved aside as {quarantined.name}"))
        return
    tally.fresh += 1  # a verification is work done
    record_verification(state.root, zip_name, result.sha256, audit_seq=verified["seq"], audit_hash=verified["hash"])
    if not result.published:
        if isinstance(result, PartsResult):
            result = publish_parts(result, config)
            outputs = hashes
        else:
            result = publish_release(result, config)
            outputs = {zip_name: result.sha256, f"{zip_name}.sha256": result.sha256}
        audit.append(AuditEvent.RELEASE_PUBLISHED, outputs=outputs, parameters={"cases": case_numbers},
                     flow_run_id=_flow_run_id())
    tally.zip_path = result.zip_path


def _package_parts(config: Config, entries: list[ReleaseEntry], inputs: BuildInputs, *, force: bool) -> PartsResult:
    """A release in parts as tasks: the layout, one task per part at once, then the metadata and manifest."""
    progress.step("parts")
    plan = plan_parts_task(_opaque(config), _opaque(entries))
    futures = [part_task.submit(_opaque(job), job.name) for job in plan.jobs]
    parts = [future.result() for future in futures]
    progress.step("spreadsheets, card, checksums, metadata")
    return parts_finish_task(_opaque(config), _opaque(entries), _opaque(inputs.release_labels), _opaque(parts),
                             _opaque(plan.layout), force, PIPELINE_VERSION)


def _verify(plan: VerifyPlan) -> tuple[str, ...]:
    """:func:`release.verify.verify_release` as tasks: after the plan, one task per chunk of members at once.

    Each member is read once for the checks and the leak scan; the chunks (of
    every part, for a release in parts, and the hashing of each part) share the
    workers.  The problems come in the order the plain function gives them.
    """
    from release.verify import finish_verify

    futures = [verify_chunk_task.submit(_opaque(plan.job(i)), i) for i in range(len(plan.chunks))]
    return finish_verify(plan, [future.result() for future in futures]).problems


def _verified_before(state: StatePaths, audit: AuditLog, zip_name: str, sha256: str) -> bool:
    """Whether these exact bytes were verified and the audit log still holds that record as written.

    The build manifest binds the zip's sha256 to the ``seq`` and ``hash`` of its
    ``release-verified`` record; a cut or rewritten log tail breaks the binding
    and the zip is verified again.
    """
    from release.assemble import verification_record

    record = verification_record(state.root, zip_name, sha256)
    if record is None:
        return False
    problem = check_verification_record(audit.path, seq=int(record.get("audit_seq", 0)),
                                        record_hash=str(record.get("audit_hash", "")),
                                        zip_name=zip_name, sha256=sha256)
    if problem:
        logger.warning("%s; verifying the release again", problem)
    return not problem


# ---------------------------------------------------------------------------
# flows


def _context(config_path: str) -> tuple[Config, StatePaths, AuditLog, Tally]:
    config = load_config(config_path)
    state = StatePaths(config.release.state_dir)
    state.root.mkdir(parents=True, exist_ok=True)
    audit = AuditLog(state.audit_log)
    return config, state, audit, Tally(recorded=recorded_decisions(audit))


def _finish(flow_name: str, config: Config, tally: Tally, *, report: bool = False) -> RunSummary | State[Any]:
    summary = tally.summary(flow_run_id=_flow_run_id(), converted_by=CONVERTED_BY)
    report_path = None
    if report:
        progress.step("QC report")
        report_path = report_task(_opaque(config))
    publish(flow_name, config, tally, summary, converted_by=CONVERTED_BY, report=report_path)
    if summary.failed:
        # The run went on with the other cases; its final state says how many failed.
        return Failed(message=f"{summary.failed} task(s) failed: see the audit log "
                              f"{StatePaths(config.release.state_dir).audit_log}", data=summary)
    return summary


@flow(name="ingest_site", log_prints=False, validate_parameters=False)
def ingest_site_flow(config_path: str, site_id: str | None = None, rehash: bool = False) -> RunSummary | State[Any]:
    """Index, gate, select, check and convert the studies of one site (or all sites); ``rehash``: read every file."""
    config, state, audit, tally = _context(config_path)
    sites = list(config.sites) if site_id is None else [config.site(site_id)]
    _ingest(sites, state, _Pipeline(tally, audit, config.execution.workers), rehash=rehash)
    return _finish("ingest_site", config, tally)


@flow(name="build_release", log_prints=False, validate_parameters=False)
def build_release_flow(config_path: str, force: bool = False) -> RunSummary | State[Any]:
    """Run the build stages on every converted case, number and package them, then verify the zip."""
    config, state, audit, tally = _context(config_path)
    with BuildLock(state):
        inputs = BuildInputs.load(config, state)
        _build(config, state, _Pipeline(tally, audit, config.execution.workers), inputs, force=force)
    return _finish("build_release", config, tally, report=True)


@flow(name="curate", log_prints=False, validate_parameters=False)
def curate_flow(config_path: str, force: bool = False, rehash: bool = False) -> RunSummary | State[Any]:
    """Ingest every site, then build and verify the release (the main flow); ``rehash``: read every file."""
    config, state, audit, tally = _context(config_path)
    with BuildLock(state):
        inputs = BuildInputs.load(config, state)
        pipeline = _Pipeline(tally, audit, config.execution.workers)
        _ingest(config.sites, state, pipeline, then=lambda site: build_stages(config, site, state, inputs),
                withdrawn=inputs.withdrawn, rehash=rehash)
        _build(config, state, pipeline, inputs, force=force)
    return _finish("curate", config, tally, report=True)


# ---------------------------------------------------------------------------
# plain entry points (the CLI calls these)


def _run(flow_obj: Any, config_path: str, **parameters: Any) -> RunSummary:
    config = load_config(config_path)  # a ConfigError surfaces before Prefect starts
    indications(config)  # and so does an unreadable clinical sheet
    stage_threads()  # and a bad PETCT_RELEASE_STAGE_THREADS, not once in every case
    with prefect_api(config.release.state_dir) as api_url:
        runner = make_task_runner(config.execution, api_url=api_url)
        run_flow = _json_parameters(flow_obj.with_options(task_runner=runner))
        state = run_flow(str(config.path), **parameters, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, RunSummary):
        return result
    if isinstance(result, BaseException):
        raise result
    raise RuntimeError(f"flow {flow_obj.name} ended {state.type.value}: {state.message}")


def _json_parameters(flow_obj: Flow[..., Any]) -> Flow[..., Any]:
    """``flow_obj``, sending parameters that are JSON values already (our flows' str, bool, None) as they are.

    Prefect encodes a flow run's parameters with FastAPI's ``jsonable_encoder``,
    and importing FastAPI for it costs a command 0.1-0.15 s of CPU (its process
    imports nothing else of FastAPI); any other value still goes through Prefect's encoder.
    """
    encode = flow_obj.serialize_parameters

    def serialize_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
        if all(value is None or type(value) in (str, bool, int, float) for value in parameters.values()):
            return dict(parameters)
        return encode(parameters)

    flow_obj.serialize_parameters = serialize_parameters  # type: ignore[method-assign]
    return flow_obj


def run_curate(config_path: str, *, force: bool = False, rehash: bool = False) -> RunSummary:
    """Ingest every site of ``config_path``, then build and verify the release (``rehash``: read every DICOM file).

    Raises
    ------
    curation.config.ConfigError
        When the configuration is invalid.
    flows.lock.BuildInProgressError
        When another build of the same release holds the build lock.
    """
    return _run(curate_flow, config_path, force=force, rehash=rehash)


def run_ingest(config_path: str, site_id: str | None = None, *, rehash: bool = False) -> RunSummary:
    """Ingest one site (``site_id``) or, with ``None``, every site (``rehash``: read every DICOM file)."""
    return _run(ingest_site_flow, config_path, site_id=site_id, rehash=rehash)


def run_build(config_path: str, *, force: bool = False) -> RunSummary:
    """Build, number, package and verify the release from the ingested cases."""
    return _run(build_release_flow, config_path, force=force)
