"""Kill -9 mid-conversion and mid-zip, start again: same zip, finished work not redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from curation.atomic import sha256_file
from curation.config import load_config
from curation.state import StatePaths
from flows.audit import AuditLog, verify_chain
from release.assemble import STAGING_DIR
from tests.flows.conftest import REPO, CuratedDemo, copy_demo, use_parts, write_demo_config

_CURATE = "import sys\nfrom flows.flows import run_curate\nprint(run_curate(sys.argv[1]), flush=True)\n"


def _start(config_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CURATE, str(config_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_when(process: subprocess.Popen[str], condition: Callable[[], bool], what: str, timeout: float = 300) -> None:
    """Poll ``condition`` every millisecond; kill -9 the process the moment it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the run ended (code {process.returncode}) before {what}:\n{out}\n{err[-3000:]}")
        time.sleep(0.001)
    process.kill()
    raise AssertionError(f"no {what} within {timeout} s")


def _converted_outcomes(state: StatePaths) -> list[Path]:
    found = []
    for path in sorted((state.root / "sites").glob("*/studies/[!.]*.json")):  # not atomic temporaries
        try:
            if json.loads(path.read_text())["status"] == "converted":
                found.append(path)
        except (ValueError, OSError):  # being replaced right now
            continue
    return found


def _mtimes(paths: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in paths}


def test_killed_runs_resume_to_the_same_zip_without_redoing_finished_work(
    tmp_path: Path, curated_demo: CuratedDemo, prefect_api_url: str
) -> None:
    from flows.flows import run_curate

    config_path = write_demo_config(tmp_path, runner="threads", workers=2)
    config = load_config(config_path)
    state = StatePaths(config.release.state_dir)
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "PREFECT_HOME": str(tmp_path / "prefect-home")}

    # 1. kill -9 during ingest, as soon as one study is converted (others are in flight)
    _kill_when(_start(config_path, env), lambda: bool(_converted_outcomes(state)), "a converted study")
    done = _converted_outcomes(state)
    finished_ingest: list[Path] = []
    for outcome in done:
        record = json.loads(outcome.read_text())["record"]
        finished_ingest += [outcome, Path(record["ct"]["path"]), Path(record["pt"]["path"])]
    ingest_mtimes = _mtimes(finished_ingest)
    assert not config.release.zip_path.exists()

    # 2. start again and kill -9 while the zip is being written (its temporary file exists)
    staging = config.release.zip_path.parent / STAGING_DIR
    temporaries = f".{config.release.zip_path.stem}.*.tmp{config.release.zip_path.suffix}"

    def zip_in_progress() -> bool:
        return any(staging.glob(temporaries))

    _kill_when(_start(config_path, env), zip_in_progress, "the zip's temporary file")
    assert not config.release.zip_path.exists(), "an interrupted build left a zip under the final name"
    prepared = sorted(state.root.glob("prepared/*/*.nii.gz")) + sorted(state.root.glob("prepared/*/prepared.json"))
    assert prepared
    prepared_mtimes = _mtimes(prepared)

    # 2b. start again and kill -9 while the staged zip is being verified: nothing is published
    def verifying() -> bool:
        return any(r["event"] == "release-packaged" for r in AuditLog(state.audit_log).records())

    _kill_when(_start(config_path, env), verifying, "the verification of the staged zip")
    assert not config.release.zip_path.exists(), "an unverified zip was published"
    assert not config.release.zip_path.with_name(config.release.zip_path.name + ".sha256").exists()
    assert (staging / config.release.zip_path.name).is_file()

    # 3. run to the end: the zip equals the uninterrupted run's, byte for byte
    summary = run_curate(str(config_path))
    assert summary.failed == 0
    assert summary.released == curated_demo.summary.released
    assert sha256_file(config.release.zip_path) == curated_demo.zip_sha256
    assert list(config.release.zip_path.parent.rglob(temporaries)) == []
    assert not staging.exists()
    records = AuditLog(state.audit_log).records()
    history = [(r["event"], r["study"][-8:], r["flow_run_id"][:8]) for r in records]
    assert _mtimes(finished_ingest) == ingest_mtimes, f"a study converted before the kill was redone: {history}"
    assert _mtimes(prepared) == prepared_mtimes, f"a case prepared before the kill was redone: {history}"
    chain = verify_chain(state.audit_log)
    assert chain.ok, chain.problem
    # every decision is in the audit log exactly once, including those whose
    # record the kill prevented (written late by the resuming run)
    converted_uids = sorted(json.loads(p.read_text())["record"]["StudyInstanceUID"] for p in _converted_outcomes(state))
    assert sorted(r["study"] for r in records if r["event"] == "study-converted") == converted_uids
    assert sorted(r["study"] for r in records if r["event"] == "case-prepared") == converted_uids
    packaging = [r["event"] for r in records if r["event"] in ("release-packaged", "release-reused")]
    assert packaging == ["release-packaged", "release-reused"]  # the staged bytes were verified, not rewritten
    assert [r["event"] for r in records][-1] == "release-published"


_BUILD = "import sys\nfrom flows.flows import run_build\nprint(run_build(sys.argv[1]), flush=True)\n"


def test_a_build_in_parts_killed_while_packaging_resumes_to_the_same_parts(
    tmp_path: Path, curated_demo: CuratedDemo, prefect_api_url: str
) -> None:
    from flows.flows import run_build
    from release.parts import parse_part_name

    # the parts of an uninterrupted build, for comparison
    whole = copy_demo(curated_demo, tmp_path / "whole")
    use_parts(whole, "800KB")
    expected = Path(run_build(str(whole)).zip_path)
    expected_hashes = {p.name: sha256_file(p) for p in expected.iterdir()}

    config_path = copy_demo(curated_demo, tmp_path / "killed")
    use_parts(config_path, "800KB")
    config = load_config(config_path)
    folder = config.release.release_path
    staging = config.release.output_dir / STAGING_DIR / folder.name
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "PREFECT_HOME": str(tmp_path / "prefect-home")}

    def finished_parts() -> list[Path]:
        return [p for p in staging.glob("*.zip") if parse_part_name(p.name)] if staging.is_dir() else []

    # kill -9 as soon as one part is complete (the others are being written or not started)
    process = subprocess.Popen([sys.executable, "-c", _BUILD, str(config_path)], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _kill_when(process, lambda: bool(finished_parts()), "a finished part")
    assert not folder.exists(), "an interrupted build published something"
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished_parts()}
    assert finished
    for name in finished:  # a part under its final name is complete
        with zipfile.ZipFile(staging / name) as zf:
            assert zf.testzip() is None
    assert len(finished_parts()) < len(expected_hashes) - 6  # the kill came while packaging

    summary = run_build(str(config_path))
    assert summary.failed == 0 and summary.zip_path == str(folder)
    assert {p.name: sha256_file(p) for p in folder.iterdir()} == expected_hashes
    # the parts finished before the kill were moved into place, not written again
    assert {name: ((folder / name).stat().st_ino, (folder / name).stat().st_mtime_ns) for name in finished} == finished
    assert not staging.exists()
    assert list(folder.parent.rglob(".*.tmp.zip")) == []
