"""The audit chain: records, tampering of every kind, concurrent appends, crash recovery."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
from pathlib import Path

import pytest

from flows.audit import (
    GENESIS,
    AuditError,
    AuditEvent,
    AuditLog,
    case_history,
    current_actor,
    head_path,
    record_hash,
    verify_chain,
)

SHA_A = "a" * 64
SHA_B = "b" * 64


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def _write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


@pytest.fixture
def log5(tmp_path: Path) -> Path:
    """A log of five records about two studies and one release."""
    path = tmp_path / "state" / "audit.jsonl"
    log = AuditLog(path)
    log.append("converted", site="s1", study="1.2.3", inputs={"dicom": SHA_A}, outputs={"CT": SHA_B})
    log.append("rejected", site="s1", study="1.2.4", outcome="rejected", parameters={"reason": "no-ct"})
    log.append("numbered", site="s1", study="1.2.3", case="0001", parameters={"cases": ["0001"]})
    log.append("prepared", site="s1", study="1.2.3", case="0001", parameters={"radius": 81.5})
    log.append("release-packaged", outputs={"zip": SHA_A}, parameters={"cases": ["0001"]})
    return path


def test_records_have_the_documented_fields_and_chain(log5: Path) -> None:
    lines = _lines(log5)
    records = AuditLog(log5).records()
    assert len(records) == 5
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["prev"] == GENESIS
    for before, line, rec in zip(lines, lines[1:], records[1:], strict=False):
        assert rec["prev"] == hashlib.sha256(before).hexdigest()
        # compact, key-sorted JSON: the line is its own canonical form
        assert line == json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()
    first = records[0]
    assert first["hash"] == record_hash(first)
    assert first["inputs"] == {"dicom": SHA_A} and first["outputs"] == {"CT": SHA_B}
    assert first["actor"] == current_actor() and "@" in first["actor"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first["time"])
    assert records[1]["outcome"] == "rejected" and records[1]["parameters"] == {"reason": "no-ct"}
    head = json.loads(head_path(log5).read_text())
    assert head["count"] == 5
    report = verify_chain(log5)
    assert report.ok and report.records == 5 and report.first_bad_line is None


def _edit(path: Path, line_no: int, **changes: object) -> None:
    lines = _lines(path)
    rec = json.loads(lines[line_no - 1])
    rec.update(changes)
    lines[line_no - 1] = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()
    _write_lines(path, lines)


def test_edited_field_names_that_line(log5: Path) -> None:
    _edit(log5, 2, outcome="ok")
    report = verify_chain(log5)
    assert not report.ok and report.first_bad_line == 2
    assert "edited" in report.problem


def test_edit_with_recomputed_hash_is_caught_by_the_next_line(log5: Path) -> None:
    lines = _lines(log5)
    rec = json.loads(lines[2])
    rec["parameters"] = {"cases": ["0002"]}
    rec["hash"] = record_hash(rec)
    lines[2] = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()
    _write_lines(log5, lines)
    report = verify_chain(log5)
    assert not report.ok and report.first_bad_line == 4
    assert "line 3 was changed" in report.problem


def test_reformatted_line_is_caught(log5: Path) -> None:
    lines = _lines(log5)
    lines[0] = json.dumps(json.loads(lines[0]), sort_keys=True).encode()  # spaces after ':'
    _write_lines(log5, lines)
    report = verify_chain(log5)
    assert not report.ok and report.first_bad_line == 1
    assert "canonical" in report.problem


def test_removed_line(log5: Path) -> None:
    lines = _lines(log5)
    del lines[2]
    _write_lines(log5, lines)
    report = verify_chain(log5)
    assert not report.ok and report.first_bad_line == 3
    assert "removed" in report.problem


def test_inserted_line(log5: Path) -> None:
    lines = _lines(log5)
    lines.insert(1, lines[3])  # a genuine record copied in
    _write_lines(log5, lines)
    report = verify_chain(log5)
    assert not report.ok and report.first_bad_line == 2


def test_inserted_forged_line_with_correct_seq_and_prev(log5: Path) -> None:
    lines = _lines(log5)
    forged = json.loads(lines[1])
    forged.update(seq=2, prev=hashlib.sha256(lines[0]).hexdigest(), study="9.9.9")
    forged["hash"] = record_hash(forged)
    lines.insert(1, json.dumps(forged, sort_keys=True, separators=(",", ":")).encode())
    _write_lines(log5, lines)
    report = verify_chain(log5)
    assert not report.ok and report.first_bad_line == 3  # the old line 2, now out of place


def test_swapped_lines(log5: Path) -> None:
    lines = _lines(log5)
    lines[1], lines[2] = lines[2], lines[1]
    _write_lines(log5, lines)
    report = verify_chain(log5)
    assert not report.ok and report.first_bad_line == 2
    assert "seq is 3" in report.problem


def test_last_line_removed(log5: Path) -> None:
    _write_lines(log5, _lines(log5)[:-1])
    report = verify_chain(log5)
    assert not report.ok and report.first_bad_line == 5
    assert "truncated" in report.problem and "line 5 is missing" in report.problem


def test_last_line_cut_short(log5: Path) -> None:
    data = log5.read_bytes()
    log5.write_bytes(data[:-20])
    report = verify_chain(log5)
    assert not report.ok and report.first_bad_line == 5
    assert "incomplete" in report.problem


def test_last_line_edited_with_recomputed_hash(log5: Path) -> None:
    lines = _lines(log5)
    rec = json.loads(lines[-1])
    rec["outputs"] = {"zip": SHA_B}
    rec["hash"] = record_hash(rec)
    lines[-1] = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()
    _write_lines(log5, lines)
    report = verify_chain(log5)
    assert not report.ok and report.first_bad_line == 5
    assert "head file" in report.problem


def test_forged_line_appended_without_head_update(log5: Path) -> None:
    lines = _lines(log5)
    forged = json.loads(lines[-1])
    forged.update(seq=6, prev=hashlib.sha256(lines[-1]).hexdigest(), event="withdrawn")
    forged["hash"] = record_hash(forged)
    lines.append(json.dumps(forged, sort_keys=True, separators=(",", ":")).encode())
    _write_lines(log5, lines)
    report = verify_chain(log5)
    assert not report.ok and report.first_bad_line == 6
    assert "without updating the head" in report.problem


def test_append_refuses_to_extend_a_truncated_log(log5: Path) -> None:
    before = _lines(log5)[:-1]
    _write_lines(log5, before)
    with pytest.raises(AuditError, match=r"holds 4 records .* records 5"):
        AuditLog(log5).append("withdrawn", case="0001")
    assert _lines(log5) == before  # nothing written, the evidence kept


def test_crash_mid_write_is_recovered_on_next_append(log5: Path) -> None:
    good = log5.read_bytes()
    partial = b'{"actor":"x@y","case":"0002","ev'
    with open(log5, "ab") as fh:  # what a kill -9 in the middle of a write leaves
        fh.write(partial)
    report = verify_chain(log5)
    assert report.ok and report.records == 5 and "unfinished" in report.note
    assert [r["seq"] for r in AuditLog(log5).records()] == [1, 2, 3, 4, 5]

    AuditLog(log5).append("withdrawn", case="0001", parameters={"reason": "consent"})
    assert log5.read_bytes().startswith(good)
    records = AuditLog(log5).records()
    assert [r["event"] for r in records[-2:]] == [AuditEvent.AUDIT_RECOVERED, "withdrawn"]
    assert records[-2]["parameters"]["discarded_bytes"] == len(partial)
    report = verify_chain(log5)
    assert report.ok and report.records == 7 and report.note == ""


def test_crash_between_write_and_head_update_is_recovered(log5: Path) -> None:
    head = head_path(log5)
    stale_head = head.read_bytes()
    AuditLog(log5).append("numbered", case="0002")
    head.write_bytes(stale_head)  # as if killed after the line's fsync, before the head
    assert verify_chain(log5).first_bad_line == 6

    AuditLog(log5).append("prepared", case="0002")
    records = AuditLog(log5).records()
    assert [r["event"] for r in records[5:]] == ["numbered", AuditEvent.AUDIT_RECOVERED, "prepared"]
    assert records[6]["parameters"]["unheaded_records"] == 1
    assert verify_chain(log5).ok


def _append_many(path: str, worker: int, n: int) -> None:
    log = AuditLog(Path(path))
    for i in range(n):
        log.append("converted", site=f"w{worker}", study=f"1.{worker}.{i}", parameters={"i": i})


def test_concurrent_appends_from_processes_keep_one_valid_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    workers, per_worker = 4, 50
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(path), w, per_worker)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    report = verify_chain(path)
    assert report.ok, report.problem
    assert report.records == workers * per_worker
    studies = {r["study"] for r in AuditLog(path).records()}
    assert studies == {f"1.{w}.{i}" for w in range(workers) for i in range(per_worker)}


def test_concurrent_appends_from_threads(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "audit.jsonl"
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda w: _append_many(str(path), w, 25), range(4)))
    report = verify_chain(path)
    assert report.ok and report.records == 100


def test_verify_while_another_process_appends_never_reports_tampering(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    AuditLog(path).append("site-indexed", site="w")
    writer = multiprocessing.get_context("spawn").Process(target=_append_many, args=(str(path), 9, 150))
    writer.start()
    reports = []
    while writer.is_alive():
        reports.append(verify_chain(path))
    writer.join()
    assert writer.exitcode == 0
    assert len(reports) > 5
    bad = [r.problem for r in reports if not r.ok]
    assert bad == []
    assert verify_chain(path).records == 151


def test_case_history_follows_study_and_case_numbers(log5: Path) -> None:
    by_case = case_history(log5, case="0001")
    assert [r["event"] for r in by_case] == ["numbered", "prepared", "release-packaged"]
    by_both = case_history(log5, study="1.2.3", case="0001")
    assert [r["event"] for r in by_both] == ["converted", "numbered", "prepared", "release-packaged"]
    assert [r["event"] for r in case_history(log5, study="1.2.4")] == ["rejected"]
    assert case_history(log5, case="0002") == []
    with pytest.raises(ValueError, match="needs a study"):
        case_history(log5)


def test_unserialisable_parameters_are_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with pytest.raises(TypeError, match=r"parameters .* not JSON-serialisable"):
        AuditLog(path).append("prepared", parameters={"when": object()})
    assert not path.exists() or path.read_bytes() == b""
