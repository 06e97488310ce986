"""The Prefect tasks: each a few lines around one plain function.

Tasks take and return paths and small frozen records, never volumes, so they
run the same on threads, processes or a Dask cluster.  Each task imports the
module of its plain function when it runs: a command that never indexes, builds
or verifies does not import pydicom, NumPy, nibabel or the release's modules
(``ingest`` on an empty or unchanged site imports none of them).  Only transient file I/O
is retried; Prefect's result cache is off, because resumption keys on content
inside the stages (:mod:`curation.stage`) and Prefect's ``INPUTS`` cache would
key on path strings and return stale results for changed files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from curation.atomic import atomic_write_json
from curation.model import SiteIndex, from_jsonable, to_jsonable
from curation.registry import NumberingCandidate, Registry
from curation.stage import PERMANENT_OS_ERRORS, CaseStage, ChainError, StageResult, run_chain
from curation.state import StatePaths

if TYPE_CHECKING:
    from curation.config import Config
    from curation.labels import ReleaseLabels
    from release.assemble import ReleaseEntry, ReleaseResult
    from release.parts import Layout, PartJob, PartsPlan, PartsResult, ReleaseFile
    from release.verify import ChunkJob, ChunkResult, VerifyPlan

logger = logging.getLogger(__name__)

def _transient_io_error(task: Any, task_run: Any, state: State[Any]) -> bool:
    """Retry only file I/O errors that may pass (NFS hiccup, EIO, EAGAIN)."""
    try:
        state.result()
    except ChainError as exc:
        return exc.transient
    except PERMANENT_OS_ERRORS:
        return False
    except OSError:
        return True
    except BaseException:  # any other error is not transient: no retry
        return False
    return False


TASK_OPTIONS: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": 2,
    "retry_condition_fn": _transient_io_error,
    "cache_policy": NO_CACHE,
    "persist_result": False,
}


@task(name="index", task_run_name="index-{site_id}", **TASK_OPTIONS)
def index_task(site_id: str, dicom_dir: str, state_root: str, rehash: bool = False) -> tuple[SiteIndex, bool]:
    """Index one site's ``dicom_dir`` (unchanged files by their stat; ``rehash``: every file read); record it when it changed.

    Returns
    -------
    tuple
        The index and whether it differs from the one recorded before.
    """
    from curation.dicomindex import index_site


    state = StatePaths(Path(state_root))
    index = index_site(site_id, Path(dicom_dir), cache=state.stat_cache(site_id), rehash=rehash)
    path = state.site_index(site_id)
    try:
        changed = from_jsonable(SiteIndex, json.loads(path.read_text(encoding="utf-8"))) != index
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        changed = True
    if changed:
        atomic_write_json(path, to_jsonable(index))
    return index, changed


@task(name="case", task_run_name="case-{site_id}", **TASK_OPTIONS)
def case_task(stages: tuple[CaseStage[Any], ...], upstream: tuple[Any, ...], site_id: str) -> tuple[StageResult[Any], ...]:
    """Run one case through its stages (:func:`curation.stage.run_chain`): one task per case, whatever the stages."""
    return run_chain(stages, upstream)


@task(name="number", **TASK_OPTIONS)
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


@task(name="package", **TASK_OPTIONS)
def package_task(
    config: Config, entries: list[ReleaseEntry], labels: ReleaseLabels, force: bool, pipeline_version: str
) -> ReleaseResult:
    """Spreadsheets, labels.json, dataset card, checksums and the zip (:func:`release.assemble.assemble_release`)."""
    from release.assemble import assemble_release


    return assemble_release(config, entries, labels, pipeline_version=pipeline_version, force=force)


@task(name="plan-parts", **TASK_OPTIONS)
def plan_parts_task(config: Config, entries: list[ReleaseEntry]) -> PartsPlan:
    """Lay out a release in parts by fixed case ranges, one job per part (:func:`release.parts.plan_parts`)."""
    from release.parts import plan_parts


    return plan_parts(config, entries)


@task(name="part", task_run_name="part-{name}", **TASK_OPTIONS)
def part_task(job: PartJob, name: str) -> ReleaseFile:
    """Write one part, or find it unchanged (:func:`release.parts.write_part`)."""
    from release.parts import write_part


    return write_part(job)


@task(name="parts-metadata", **TASK_OPTIONS)
def parts_finish_task(
    config: Config, entries: list[ReleaseEntry], labels: ReleaseLabels, parts: list[ReleaseFile], layout: Layout,
    force: bool, pipeline_version: str,
) -> PartsResult:
    """Card, SHA256SUMS, metadata.zip, the loose files and the manifest of a release in parts."""
    from release.parts import finish_parts


    return finish_parts(config, entries, labels, parts, layout, pipeline_version=pipeline_version, force=force)


@task(name="verify-plan-parts", **TASK_OPTIONS)
def verify_parts_plan_task(release: str, files: dict[str, str], state_dir: str | None) -> VerifyPlan:
    """Plan the verification of a release in parts from where its files are now (:func:`release.verify.plan_verify_parts`)."""
    from release.verify import plan_verify_parts


    return plan_verify_parts(release, {name: Path(path) for name, path in files.items()},
                             state_dir=Path(state_dir) if state_dir else None)


@task(name="verify-plan", **TASK_OPTIONS)
def verify_plan_task(zip_path: str, state_dir: str | None, workers: int = 1) -> VerifyPlan:
    """Read a release's directory and small files, check them, cut the members into chunks.

    The chunk count is a multiple of ``workers`` (:func:`release.verify.plan_verify`).
    """
    from release.verify import plan_verify


    return plan_verify(Path(zip_path), state_dir=Path(state_dir) if state_dir else None, workers=workers)


@task(name="verify", task_run_name="verify-{index}", **TASK_OPTIONS)
def verify_chunk_task(job: ChunkJob, index: int) -> ChunkResult:
    """Check one chunk of members, each read once for every check and the leak scan (:func:`release.verify.verify_chunk`)."""
    from release.verify import verify_chunk


    return verify_chunk(job)


@task(name="report", **TASK_OPTIONS)
def report_task(config: Config) -> str:
    """Write the steward's QC report (:func:`flows.report.write_report`); returns its ``index.html``."""
    from flows.report import write_report

    return str(write_report(config))
