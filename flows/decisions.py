"""What a run decided, in the audit log and in its summary (no Prefect here).

The flows hand every :class:`~curation.stage.StageResult` to
:func:`record_result`: it files the outcome in the run's :class:`Tally` and
appends the stage's decision to the audit log from what the stage declares
(its done event, input fingerprint, output hashes and parameters), so a new
stage needs nothing written here.

A decision is appended when the stage did its work in this run (``fresh``),
or when the log lacks exactly this decision (same event, study, input and
output hashes): a run killed after a stage wrote its record but before the
flow wrote the audit line leaves such a gap, and the resuming run fills it
(``recorded_late``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.atomic import sha256_file
from curation.model import Phase, Rejection, study_key
from curation.stage import CaseStage, StageResult
from curation.state import StatePaths
from flows.audit import AuditEvent, AuditLog

#: The audit event of a rejection, by the phase it happened in.
REJECTION_EVENTS: dict[Phase, AuditEvent] = {
    Phase.INGEST: AuditEvent.STUDY_REJECTED,
    Phase.BUILD: AuditEvent.CASE_HELD_BACK,
}


@dataclass(frozen=True)
class RunSummary:
    """What one flow run did; the CLI prints it and derives the exit code.

    Attributes
    ----------
    converted
        Studies converted (ingest outcomes of the sites this run looked at).
    rejected
        Reason code -> studies rejected at ingest or cases held back at build.
    released
        Cases in the zip.
    failed
        Tasks that raised an unexpected error in this run.
    zip_path
        The release zip, or None when none was built (or it failed verify).
    flow_run_id
        The Prefect flow run.
    nothing_to_do
        True when every study, case and the zip were already up to date.
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
        """True when verify found no problem."""
        return not self.problems


@dataclass
class Tally:
    """What the flow's process has collected so far in one run.

    Attributes
    ----------
    done
        Stage name -> study key -> the stage's record, for every case a stage
        finished (made now or reused).
    rejected
        Rejections and hold-backs, in the order they came.
    failed
        ``(site, step, error)`` for every task that raised.
    fresh
        Records (re)written and decisions recorded in this run.
    released
        Site -> case numbers in the zip.
    studies
        Site -> studies seen by the index.
    zip_path, zip_reused
        The release zip, and whether it was reused unchanged.
    sensitive
        Values never to show in an artifact.
    recorded
        Decisions the audit log holds (see :func:`recorded_decisions`).
    """

    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    fresh: int = 0
    released: dict[str, list[str]] = field(default_factory=dict)
    studies: dict[str, int] = field(default_factory=dict)
    zip_path: str | None = None
    zip_reused: bool = True
    sensitive: set[str] = field(default_factory=set)
    recorded: set[str] = field(default_factory=set)

    def finished(self, stage: str) -> dict[str, Any]:
        """Study key -> record of every case ``stage`` finished in this run."""
        return self.done.get(stage, {})

    def rejected_by_reason(self) -> dict[str, int]:
        """Reason code -> count, sorted by code."""
        return dict(sorted(Counter(r.reason.value for r in self.rejected).items()))

    def summary(self, *, flow_run_id: str, converted_by: str) -> RunSummary:
        """The run's :class:`RunSummary`; ``converted_by`` names the stage whose cases count as converted."""
        return RunSummary(
            converted=len(self.finished(converted_by)),
            rejected=self.rejected_by_reason(),
            released=sum(len(v) for v in self.released.values()),
            failed=len(self.failed),
            zip_path=self.zip_path,
            flow_run_id=flow_run_id,
            nothing_to_do=self.fresh == 0 and self.zip_reused and not self.failed,
        )


def _decision_key(event: str, study: str, inputs: Mapping[str, str], outputs: Mapping[str, str]) -> str:
    return json.dumps([event, study, dict(inputs), dict(outputs)], sort_keys=True)


def recorded_decisions(audit: AuditLog) -> set[str]:
    """The per-study decisions the audit log already holds (event, study, input and output hashes)."""
    return {
        _decision_key(r["event"], r["study"], r["inputs"], r["outputs"])
        for r in audit.records()
        if r["study"]
    }


def rejection_parameters(rejection: Rejection) -> dict[str, Any]:
    """Reason, sentence, phase, stage and the attributes behind it (by tag and keyword, never a value)."""
    parameters: dict[str, Any] = {
        "reason": rejection.reason.value,
        "message": rejection.message,
        "phase": rejection.phase.value,
        "stage": rejection.stage,
    }
    if rejection.findings:
        parameters["gate_findings"] = sorted({f"{f.tag} {f.keyword}" for f in rejection.findings})
    return parameters


def record_result(
    stage: CaseStage[Any], result: StageResult[Any], tally: Tally, audit: AuditLog, *, flow_run_id: str
) -> None:
    """File one stage result in ``tally`` and append its decision to the audit log (see the module docstring).

    Parameters
    ----------
    stage
        The stage that produced ``result`` (its declarations name the event,
        inputs, outputs and parameters).
    result
        What the stage's task returned.
    tally
        The run's tally.
    audit
        The release's audit log.
    flow_run_id
        The Prefect flow run.
    """
    outcome = result.outcome
    inputs = {stage.input_name: outcome.fingerprint}
    if isinstance(outcome, Rejection):
        tally.rejected.append(outcome)
        event: str = REJECTION_EVENTS[outcome.phase]
        outputs: dict[str, str] = {}
        parameters = rejection_parameters(outcome)
        verdict = "rejected"
    else:
        tally.done.setdefault(stage.name, {})[study_key(outcome.StudyInstanceUID)] = outcome
        event = stage.done_event
        outputs = {name: file.sha256 for name, file in stage.outputs(outcome).items()}
        parameters = stage.parameters(outcome)
        verdict = stage.done
    key = _decision_key(event, outcome.StudyInstanceUID, inputs, outputs)
    if not result.fresh and key in tally.recorded:
        return
    if not result.fresh:
        parameters = {**parameters, "recorded_late": True}
    audit.append(event, site=outcome.site, study=outcome.StudyInstanceUID, inputs=inputs, outputs=outputs,
                 parameters=parameters, outcome=verdict, flow_run_id=flow_run_id)
    tally.recorded.add(key)
    tally.fresh += 1


def record_failure(
    tally: Tally, audit: AuditLog, *, site: str, study: str, step: str, error: str, flow_run_id: str
) -> None:
    """Record a stage or task that raised: in the tally and as ``<step>-failed`` in the audit log.

    Parameters
    ----------
    tally, audit
        The run's tally and the audit log.
    site, study
        The site and StudyInstanceUID concerned.
    step
        The stage (or task) name.
    error
        The error as one line (``"TypeName: message"``).
    flow_run_id
        The Prefect flow run.
    """
    tally.failed.append((site, step, error))
    audit.append(f"{step}-failed", site=site, study=study, parameters={"error": error}, outcome="failed",
                 flow_run_id=flow_run_id)


def verify_and_record(zip_path: Path, state_dir: Path | None, *, workers: int | None = None) -> VerifySummary:
    """Verify a release zip or a folder of parts on its own (``petct-release verify``): no Prefect, no server.

    With ``state_dir`` the leak scan and the defacing check run too, and the
    result is appended to that state folder's audit log (for a folder of
    parts: its digest under the folder's name and every file's sha256).

    Parameters
    ----------
    zip_path
        The release zip, or the folder of a release in parts.
    state_dir
        The state folder that built it, or None.
    workers
        Processes checking the chunks at once; default: one for a zip (as
        before), every core this process may use for a folder of parts.

    Returns
    -------
    VerifySummary
        The problems found.
    """
    import os

    from release.parts import LOOSE_FILES, parts_digest  # nibabel and friends: only when verifying
    from release.verify import verify_release

    folder = zip_path.is_dir()
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if folder else 1
    report = verify_release(zip_path, state_dir=state_dir, leak_scan=state_dir is not None, workers=workers)
    if state_dir is not None:
        if folder:
            files = dict(report.part_digests)
            files.update({rel: sha256_file(zip_path / rel) for rel in LOOSE_FILES if (zip_path / rel).is_file()})
            inputs = {zip_path.name: parts_digest(files), **files}
        else:
            try:
                digest = sha256_file(zip_path)
            except OSError:
                digest = ""
            inputs = {zip_path.name: digest}
        AuditLog(StatePaths(state_dir).audit_log).append(
            AuditEvent.RELEASE_VERIFIED,
            inputs=inputs,
            parameters={"problems": list(report.problems), "by": "verify command"},
            outcome="ok" if report.ok else "failed",
        )
    return VerifySummary(problems=tuple(report.problems))
