"""A stage added by one module and one line gets resumption, audit records and tallies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.atomic import sha256_file
from flows.audit import AuditLog
from tests.flows.conftest import CuratedDemo, write_demo_config
from tests.flows.example_stage import VoxelCountStage


def test_an_added_stage_runs_is_audited_and_resumes_by_content(
    tmp_path: Path, curated_demo: CuratedDemo, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.flows
    from flows.flows import run_curate

    original = flows.flows.build_stages
    # the one line a newcomer adds to flows.flows.build_stages
    monkeypatch.setattr(flows.flows, "build_stages",
                        lambda config, site, state, inputs: (*original(config, site, state, inputs),
                                                             VoxelCountStage(state=state)))
    config_path = write_demo_config(tmp_path, runner="threads", workers=2)
    first = run_curate(str(config_path))
    assert first.failed == 0 and first.zip_path
    assert sha256_file(first.zip_path) == curated_demo.zip_sha256  # the stage changes nothing released
    state = tmp_path / ".petct"
    records = AuditLog(state / "audit.jsonl").records()
    counted = [r for r in records if r["event"] == "case-counted"]
    assert len(counted) == first.released == 3
    digests = {sha256_file(p) for p in (state / "counts").glob("*/counts.json")}
    assert {d for r in counted for d in r["outputs"].values()} == digests
    assert all(r["outcome"] == "counted" and r["parameters"] == {"categories": 7} for r in counted)
    counts = [json.loads(p.read_text()) for p in sorted((state / "counts").glob("*/counts.json"))]
    assert all(c["Organs"] > 0 for c in counts)

    second = run_curate(str(config_path))
    assert second.nothing_to_do
    assert len([r for r in AuditLog(state / "audit.jsonl").records() if r["event"] == "case-counted"]) == 3

    # a damaged output is redone, for that case only
    victim = sorted((state / "counts").glob("*/counts.json"))[0]
    victim.write_text("{}")
    third = run_curate(str(config_path))
    assert not third.nothing_to_do
    redone = [r for r in AuditLog(state / "audit.jsonl").records() if r["event"] == "case-counted"][3:]
    assert len(redone) == 1 and json.loads(victim.read_text())["Organs"] > 0
