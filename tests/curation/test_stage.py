"""The per-case stage framework (curation.stage) on a small stage declared here."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from curation import stage as stage_module
from curation import statcache
from curation.atomic import atomic_write_text, sha256_file
from curation.errors import AttributeFinding, PHIDetectedError, RejectReason
from curation.model import Phase, Rejection, study_key
from curation.stage import (
    REJECTED,
    CaseStage,
    ChainError,
    StudySubject,
    output_stats_path,
    read_record,
    run_chain,
)


@dataclasses.dataclass(frozen=True)
class Study:
    """A stand-in for the first upstream record (site, UID, key)."""

    site: str
    StudyInstanceUID: str
    source: str  # a file the stage reads

    @property
    def key(self) -> str:
        return study_key(self.StudyInstanceUID)


@dataclasses.dataclass(frozen=True)
class Written:
    path: str
    sha256: str


@dataclasses.dataclass(frozen=True)
class Shouted:
    """The record of the example stage."""

    site: str
    StudyInstanceUID: str
    fingerprint: str
    out: Written

    @property
    def key(self) -> str:
        return study_key(self.StudyInstanceUID)


@dataclasses.dataclass(frozen=True)
class ShoutStage(CaseStage[Shouted]):
    """Upper-cases a text file: the whole declaration a stage needs."""

    name: ClassVar[str] = "shout"
    phase: ClassVar[Phase] = Phase.BUILD
    version: ClassVar[int] = 1
    record_type: ClassVar[type] = Shouted
    done: ClassVar[str] = "shouted"
    done_event: ClassVar[str] = "case-shouted"
    input_name: ClassVar[str] = "text"

    root: Path
    exclaim: bool = False
    calls: list[str] = dataclasses.field(default_factory=list, compare=False)

    def record_path(self, subject: StudySubject) -> Path:
        return self.root / subject.key / "shout.json"

    def fingerprint_parts(self, upstream: tuple[Any, ...]) -> dict[str, Any]:
        return {"text": sha256_file(upstream[0].source), "exclaim": self.exclaim}

    def produce(self, upstream: tuple[Any, ...], fingerprint: str) -> Shouted:
        (study,) = upstream
        self.calls.append(study.key)
        text = Path(study.source).read_text()
        if "secret" in text:
            raise PHIDetectedError("the text names a secret",
                                   findings=(AttributeFinding("(0010,0010)", "PatientName", "X"),))
        if "huge" in text:
            raise MemoryError
        out = self.root / study.key / "out.txt"
        atomic_write_text(out, text.upper() + ("!" if self.exclaim else ""))
        return Shouted(study.site, study.StudyInstanceUID, fingerprint, Written(str(out), sha256_file(out)))

    def outputs(self, record: Shouted) -> dict[str, Written]:
        return {"out.txt": record.out}


@pytest.fixture
def study(tmp_path: Path) -> Study:
    source = tmp_path / "in.txt"
    source.write_text("hello")
    return Study("leipzig", "1.2.3", str(source))


def test_a_declared_stage_records_its_outcome_and_reuses_it_while_inputs_and_outputs_hold(
    tmp_path: Path, study: Study
) -> None:
    stage = ShoutStage(tmp_path / "state")
    first = stage.run((study,))
    assert first.fresh and first.stage == "shout"
    assert isinstance(first.outcome, Shouted)
    assert Path(first.outcome.out.path).read_text() == "HELLO"
    record = json.loads(stage.record_path(study).read_text())
    assert record["status"] == "shouted" and record["record"]["fingerprint"] == first.outcome.fingerprint

    again = stage.run((study,))
    assert not again.fresh and again.outcome == first.outcome
    assert stage.calls == [study.key]

    # an edited output is redone, and so is a changed input or setting
    Path(first.outcome.out.path).write_text("tampered")
    assert stage.run((study,)).fresh
    Path(study.source).write_text("hello again")
    changed = stage.run((study,))
    assert changed.fresh and changed.outcome.fingerprint != first.outcome.fingerprint
    louder = ShoutStage(tmp_path / "state", exclaim=True).run((study,))
    assert louder.fresh and Path(louder.outcome.out.path).read_text() == "HELLO AGAIN!"
    assert len(stage.calls) == 3


def test_reuse_hashes_an_output_again_only_when_its_stat_changed(
    tmp_path: Path, study: Study, monkeypatch: pytest.MonkeyPatch
) -> None:
    # files written a moment ago are "racy" (hashed every time); this test is about the stat check itself
    monkeypatch.setattr(statcache, "RACY_SECONDS", 0.0)
    hashed: list[str] = []
    real_sha256 = stage_module.sha256_file
    monkeypatch.setattr(stage_module, "sha256_file", lambda path: hashed.append(str(path)) or real_sha256(path))
    stage = ShoutStage(tmp_path / "state")
    out = Path(stage.run((study,)).outcome.out.path)

    assert not stage.run((study,)).fresh
    assert hashed == [str(out)]  # the first reuse hashes the output and keeps its stat
    kept = output_stats_path(stage.record_path(study))
    assert kept.name == ".shout.output-stats.json" and kept.is_file()
    hashed.clear()
    assert not stage.run((study,)).fresh
    assert hashed == []  # same size, mtime, ctime and inode: not read

    # the same size and mtime with other bytes: the write moved its ctime, so it is hashed and redone
    time.sleep(0.05)
    before = out.stat()
    out.write_text("HELLX")
    os.utime(out, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert out.stat().st_size == before.st_size and out.stat().st_mtime_ns == before.st_mtime_ns
    redo = stage.run((study,))
    assert redo.fresh and hashed == [str(out)]
    assert out.read_text() == "HELLO"

    # a file put in its place (another inode), even with the old size and times, is hashed again too
    hashed.clear()
    assert not stage.run((study,)).fresh and hashed == [str(out)]
    hashed.clear()
    time.sleep(0.05)
    stamp = out.stat()
    replacement = out.with_name("new.txt")
    replacement.write_text("HELLY")
    os.utime(replacement, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    os.replace(replacement, out)
    assert stage.run((study,)).fresh and hashed == [str(out)]


def test_a_data_problem_becomes_a_recorded_rejection_with_its_findings(tmp_path: Path, study: Study) -> None:
    Path(study.source).write_text("a secret")
    stage = ShoutStage(tmp_path / "state")
    result = stage.run((study,))
    assert isinstance(result.outcome, Rejection)
    assert (result.outcome.reason, result.outcome.phase, result.outcome.stage) == (
        RejectReason.PHI_DETECTED, Phase.BUILD, "shout")
    assert result.outcome.findings == (AttributeFinding("(0010,0010)", "PatientName", "X"),)
    assert json.loads(stage.record_path(study).read_text())["status"] == REJECTED
    assert read_record(stage.record_path(study), Shouted) == result.outcome
    # an unchanged rejected case is not worked on again
    assert not stage.run((study,)).fresh and len(stage.calls) == 1


def test_memory_error_never_escapes_a_stage(tmp_path: Path, study: Study) -> None:
    Path(study.source).write_text("huge")
    result = ShoutStage(tmp_path / "state").run((study,))
    assert isinstance(result.outcome, Rejection) and result.outcome.reason is RejectReason.UNREADABLE
    assert "ran out of memory" in result.outcome.message


def test_a_redo_that_dies_leaves_no_stale_record(tmp_path: Path, study: Study) -> None:
    stage = ShoutStage(tmp_path / "state")
    stage.run((study,))
    Path(study.source).write_text("changed")

    class Boom(RuntimeError):
        pass

    @dataclasses.dataclass(frozen=True)
    class Dying(ShoutStage):
        def produce(self, upstream: tuple[Any, ...], fingerprint: str) -> Shouted:
            raise Boom("killed half-way")

    with pytest.raises(Boom):
        Dying(tmp_path / "state").run((study,))
    assert not stage.record_path(study).exists()  # the old record does not vouch for the new input


def test_an_unreadable_record_is_redone(tmp_path: Path, study: Study) -> None:
    stage = ShoutStage(tmp_path / "state")
    stage.run((study,))
    stage.record_path(study).write_text('{"status": "shouted", "record": {"site": 1}}')
    assert stage.run((study,)).fresh


@dataclasses.dataclass(frozen=True)
class EchoStage(ShoutStage):
    """A second stage: copies the first stage's output (upstream ``(Study, Shouted)``)."""

    name: ClassVar[str] = "echo"
    done: ClassVar[str] = "echoed"

    def record_path(self, subject: StudySubject) -> Path:
        return self.root / subject.key / "echo.json"

    def fingerprint_parts(self, upstream: tuple[Any, ...]) -> dict[str, Any]:
        return {"shouted": upstream[1].out.sha256}

    def produce(self, upstream: tuple[Any, ...], fingerprint: str) -> Shouted:
        study, shouted = upstream
        if "BROKEN" in Path(shouted.out.path).read_text():
            raise OSError(5, "Input/output error")
        out = self.root / study.key / "echo.txt"
        atomic_write_text(out, Path(shouted.out.path).read_text() * 2)
        return Shouted(study.site, study.StudyInstanceUID, fingerprint, Written(str(out), sha256_file(out)))


def test_a_chain_runs_each_stage_on_the_records_before_it_and_stops_at_a_rejection(
    tmp_path: Path, study: Study
) -> None:
    root = tmp_path / "state"
    results = run_chain((ShoutStage(root), EchoStage(root)), (study,))
    assert [r.stage for r in results] == ["shout", "echo"]
    assert Path(results[1].outcome.out.path).read_text() == "HELLOHELLO"

    Path(study.source).write_text("a secret")
    (rejected,) = run_chain((ShoutStage(root), EchoStage(root)), (study,))
    assert isinstance(rejected.outcome, Rejection) and rejected.stage == "shout"

    Path(study.source).write_text("broken")
    with pytest.raises(ChainError) as info:
        run_chain((ShoutStage(root), EchoStage(root)), (study,))
    error = info.value
    assert (error.stage, error.transient) == ("echo", True) and "Input/output error" in error.error
    assert [r.stage for r in error.results] == ["shout"]  # the work before it is not lost
    assert pickle.loads(pickle.dumps(error)).results == error.results  # it travels back from a worker
