"""The flow's case pipeline: the largest waiting case goes first, a window at a time, filed while the flow waits."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, ClassVar

from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

from curation.model import ConvertedCase, ImageFile, Phase, SeriesRecord, StudyRecord
from curation.stage import CaseStage, StudySubject
from curation.state import StatePaths
from flows.audit import AuditLog
from flows.decisions import Tally
from flows.flows import _Pipeline, work_estimate


@dataclasses.dataclass(frozen=True)
class Ran:
    site: str
    StudyInstanceUID: str
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class LogOrderStage(CaseStage[Ran]):
    """Appends the study's UID to ``log`` when it runs (one worker: the order the runner got the cases)."""

    name: ClassVar[str] = "order"
    phase: ClassVar[Phase] = Phase.BUILD
    version: ClassVar[int] = 1
    record_type: ClassVar[type] = Ran
    done: ClassVar[str] = "ran"
    done_event: ClassVar[str] = "case-ran"
    input_name: ClassVar[str] = "study"

    state: StatePaths
    log: str

    def record_path(self, subject: StudySubject) -> Path:
        return self.state.root / "order" / subject.key / "record.json"

    def fingerprint_parts(self, upstream: tuple[Any, ...]) -> dict[str, Any]:
        return {"study": upstream[0].StudyInstanceUID}

    def produce(self, upstream: tuple[Any, ...], fingerprint: str) -> Ran:
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(upstream[0].StudyInstanceUID + "\n")
        return Ran(upstream[0].site, upstream[0].StudyInstanceUID, fingerprint)


def study(uid: str, ct_files: int, pt_files: int) -> StudyRecord:
    def series(modality: str, n: int) -> SeriesRecord:
        return SeriesRecord(f"{uid}.{modality}", modality, "", modality, 1, (), "", (), "",
                            tuple(f"/nowhere/{uid}/{modality}{i:04d}.dcm" for i in range(n)))

    return StudyRecord("s1", uid, "anon", "", (series("CT", ct_files), series("PT", pt_files)), uid)


@task
def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_the_work_estimate_counts_a_study_s_files_and_a_converted_case_s_slices() -> None:
    assert work_estimate(study("1.2.3", 300, 120)) == 420
    image = ImageFile(path="x.nii.gz", sha256="0", shape=(512, 512, 250), dtype="int16", affine=())
    case = ConvertedCase("s1", "1.2.3", "anon", "", "0", "1.2.3.1", "1.2.3.2", image,
                         dataclasses.replace(image, shape=(200, 200, 110)), {}, {}, (), ())
    assert work_estimate(case) == 360
    assert work_estimate(object()) == 0


def test_the_largest_case_goes_first_and_a_window_of_cases_is_on_the_runner(
    tmp_path: Path, prefect_api_url: str
) -> None:
    state = StatePaths(tmp_path / ".petct")
    state.root.mkdir(parents=True)
    log = tmp_path / "order.txt"
    sizes = {"1.1": (10, 5), "1.2": (300, 100), "1.3": (50, 50), "1.4": (300, 100), "1.5": (0, 1), "1.6": (200, 0)}
    stage = LogOrderStage(state=state, log=str(log))

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def cases() -> tuple[int, int, int]:
        pipeline = _Pipeline(Tally(), AuditLog(state.audit_log), workers=1)
        for uid, (ct, pt) in sizes.items():
            pipeline.submit((stage,), (study(uid, ct, pt),))
        queued = len(pipeline.waiting)
        pipeline._fill()
        on_runner = len(pipeline.pending)
        pipeline.drain()
        return queued, on_runner, len(pipeline.tally.done["order"])

    queued, on_runner, filed = cases()
    assert (queued, on_runner, filed) == (6, 2, 6)  # nothing goes before the batch is queued; 2 per worker
    # largest first; equal estimates in the order they were queued
    assert log.read_text().split() == ["1.2", "1.4", "1.6", "1.3", "1.1", "1.5"]


def test_cases_finished_while_the_flow_waits_for_an_index_are_filed_and_replaced(
    tmp_path: Path, prefect_api_url: str
) -> None:
    state = StatePaths(tmp_path / ".petct")
    state.root.mkdir(parents=True)
    stage = LogOrderStage(state=state, log=str(tmp_path / "order.txt"))

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def cases() -> tuple[int, int, int]:
        pipeline = _Pipeline(Tally(), AuditLog(state.audit_log), workers=2)
        index = slow.submit(4.0)  # another site's index, holding one worker
        for n in range(8):
            pipeline.submit((stage,), (study(f"2.{n}", 10 + n, 1),))
        pipeline.wait_for(index)
        filed_while_waiting = len(pipeline.tally.done.get("order", {}))
        left = len(pipeline.pending) + len(pipeline.waiting)
        pipeline.drain()
        return filed_while_waiting, left, len(AuditLog(state.audit_log).records())

    filed_while_waiting, left, recorded = cases()
    # 8 cases, a window of 4: the other worker ran all of them while the index ran,
    # each filed (tally and audit log) as it finished and its place given to the next
    assert (filed_while_waiting, left, recorded) == (8, 0, 8)
