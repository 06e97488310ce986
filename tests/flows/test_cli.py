"""The ``petct-release`` command line, called as ``main([...])``.

Config, usage and audit tests need no Prefect.  The withdraw / status / audit
--case / run tests work on a copy of the session's curated demo (the real
flows on the small phantom sites), so they never change the shared state.
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from curation.atomic import sha256_file
from curation.config import load_config
from curation.errors import RejectReason
from curation.model import ConvertedCase, ImageFile, Phase, PreparedCase, Rejection, study_key
from curation.phantom import DEMO_MARKER
from curation.registry import NumberingCandidate, Registry
from curation.stage import write_record
from curation.state import StatePaths, site_outcomes
from flows import progress
from flows.audit import AuditLog, verify_chain
from flows.cli import main
from flows.status import format_table


@pytest.fixture(scope="module")
def demo_toml(curated_demo) -> str:  # type: ignore[no-untyped-def]
    """The text of the demo's release.toml (the base every config test edits one key of).

    It is the session's curated demo config, written by
    ``curation.phantom.write_demo_sites``: sharing it spares writing the
    phantom sites again.
    """
    return curated_demo.config_path.read_text(encoding="utf-8")


def _config_with(tmp_path: Path, text: str, old: str, new: str) -> Path:
    assert old in text, f"the demo config has no {old!r}"
    path = tmp_path / "release.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def _set_key(text: str, key: str, value: str) -> tuple[str, str]:
    """The line ``key = ...`` of the demo config and its replacement."""
    match = re.search(rf"^{key}\s*=.*$", text, re.MULTILINE)
    assert match, f"the demo config has no key {key}"
    return match.group(0), f"{key} = {value}"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("runner", '"gpu"', [r"execution\.runner", "'gpu'", "'threads'", "'dask'"]),
        ("height_voxels", "0", [r"defacing\.height_voxels", "0", "from 1 to 200"]),
        ("build_cron", '"every monday"', [r"schedule\.build_cron", "'every monday'", "5-field cron"]),
    ],
)
def test_config_error_exits_2_naming_key_value_and_allowed(
    tmp_path: Path, demo_toml: str, capsys: pytest.CaptureFixture[str], key: str, value: str,
    expected: list[str],
) -> None:
    old, new = _set_key(demo_toml, key, value)
    config = _config_with(tmp_path, demo_toml, old, new)
    assert main(["status", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("petct-release: error: ")
    assert str(config) in err
    for pattern in expected:
        assert re.search(pattern, err), (pattern, err)


def test_unknown_key_exits_2(tmp_path: Path, demo_toml: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config_with(tmp_path, demo_toml, "[defacing]\n", "[defacing]\nheight_mm = 3\n")
    assert main(["run", str(config)]) == 2  # refused before any flow starts
    err = capsys.readouterr().err
    assert "unknown key defacing.height_mm = 3" in err and "height_voxels" in err


@pytest.mark.parametrize("value", ["0", "two"])
def test_a_bad_stage_thread_count_exits_2_before_a_run_starts(
    tmp_path: Path, demo_toml: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, value: str,
) -> None:
    from curation.threads import ENVIRONMENT

    config = _config_with(tmp_path, demo_toml, "[defacing]\n", "[defacing]\n")
    monkeypatch.setenv(ENVIRONMENT, value)
    state_dir = load_config(config).release.state_dir
    for command in ("run", "serve"):  # serve: not in every case of every scheduled run
        assert main([command, str(config)]) == 2, command
        err = capsys.readouterr().err
        assert f"petct-release: error: {ENVIRONMENT}='{value}'" in err, command
    assert not (state_dir / "prefect").exists() and not (state_dir / "audit.jsonl").exists()  # nothing started


def test_missing_config_and_zip_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["status", str(missing)]) == 2
    assert f"{missing}: cannot read the configuration file" in capsys.readouterr().err
    zip_path = tmp_path / "x.zip"
    assert main(["verify", str(zip_path)]) == 2
    assert f"petct-release: error: {zip_path}: no such release zip" in capsys.readouterr().err


def test_unknown_site_exits_2_naming_the_sites(
    tmp_path: Path, demo_toml: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "release.toml"
    config.write_text(demo_toml, encoding="utf-8")
    sites = [s.id for s in load_config(config).sites]
    assert main(["ingest", str(config), "--site", "atlantis"]) == 2
    err = capsys.readouterr().err
    assert "'atlantis'" in err and all(site in err for site in sites)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
        (["withdraw", "x.toml", "--case", "0001"], "--reason"),
        (["withdraw", "x.toml", "--case", "abc", "--reason", "r"], "'abc' is not a positive whole number"),
        (["demo", "--cases", "0"], "0 is not a positive whole number"),
        (["build", "x.toml", "--rehash"], "unrecognized arguments: --rehash"),  # build reads no DICOM
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "petct-release: error:" in err and message in err


def _state_config(tmp_path: Path, demo_toml: str) -> tuple[Path, StatePaths]:
    config = tmp_path / "release.toml"
    config.write_text(demo_toml, encoding="utf-8")
    return config, StatePaths(load_config(config).release.state_dir)


def test_audit_verify_exit_codes(tmp_path: Path, demo_toml: str, capsys: pytest.CaptureFixture[str]) -> None:
    config, state = _state_config(tmp_path, demo_toml)
    log = AuditLog(state.audit_log)
    for i in range(4):
        log.append("study-rejected", site="s", study=f"1.2.{i}", parameters={"reason": "no-ct"})
    assert main(["audit", str(config), "--verify"]) == 0
    assert "audit chain intact, 4 records" in capsys.readouterr().out

    lines = state.audit_log.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"no-ct"', b'"no-pt"')  # edit line 3
    state.audit_log.write_bytes(b"\n".join(lines))
    assert main(["audit", str(config), "--verify"]) == 1
    err = capsys.readouterr().err
    assert "petct-release: error:" in err and "broken at line 3" in err


def test_audit_shows_every_record(tmp_path: Path, demo_toml: str, capsys: pytest.CaptureFixture[str]) -> None:
    config, state = _state_config(tmp_path, demo_toml)
    log = AuditLog(state.audit_log)
    log.append("study-rejected", site="s1", study="1.2.3", parameters={"reason": "no-ct"}, outcome="rejected")
    log.append("release-packaged", outputs={"r.zip": "ab" * 32}, parameters={"cases": ["0001"]})
    assert main(["audit", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert "study-rejected" in out[0] and "site=s1" in out[0] and "study=1.2.3" in out[0]
    assert "release-packaged" in out[1] and "out[r.zip=abababababab]" in out[1]


def test_format_table_aligns_columns_and_totals() -> None:
    rows = [
        {"site": "alpha", "studies seen": 12, "rejected": {"no-ct": 1}, "released": 9},
        {"site": "b", "studies seen": 3, "rejected": {}, "released": 10},
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["site", "studies", "seen", "rejected", "released"]
    # numbers right-aligned under their headers: every row ends at the same column
    ends = {len(line) for line in lines if not line.startswith("-")}
    assert len(ends) == 1
    assert lines[2].startswith("alpha") and "1 (no-ct 1)" in lines[2]
    assert lines[-1].split()[:2] == ["total", "15"] and lines[-1].endswith("19")


def test_log_progress_lines(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="flows.progress"), progress.use_reporter(progress.LogProgress()):
        progress.start(2, "ingest s1")
        progress.advance("ingest")
        progress.step("zip")
        progress.advance("prepare")
        progress.finish()
    assert [r.getMessage() for r in caplog.records] == [
        "ingest s1: 2 cases to do",
        "ingest s1: 1/2 cases done (ingest)",
        "ingest s1: zip",
        "ingest s1: 2/2 cases done (prepare)",
        "ingest s1: finished, 2/2 cases done",
    ]


def test_progress_grows_as_sites_are_indexed(caplog: pytest.LogCaptureFixture) -> None:
    # a site's cases start while later sites are indexed: the phase's total grows
    with caplog.at_level(logging.INFO, logger="flows.progress"), progress.use_reporter(progress.LogProgress()):
        progress.start(0, "ingest s1, s2")
        progress.grow(2, "s1 indexed")
        progress.advance("ingest")
        progress.grow(1, "s2 indexed")
        progress.finish()
    assert [r.getMessage() for r in caplog.records] == [
        "ingest s1, s2: 0 cases to do",
        "ingest s1, s2: s1 indexed, 2 cases to do in all",
        "ingest s1, s2: 1/2 cases done (ingest)",
        "ingest s1, s2: s2 indexed, 3 cases to do in all",
        "ingest s1, s2: finished, 1/3 cases done",
    ]
    stream = io.StringIO()
    bar = progress.BarProgress(stream)
    bar._console.width = 120
    with progress.use_reporter(bar):
        progress.start(0, "ingest s1, s2")
        progress.grow(2, "s1 indexed")
        progress.advance("ingest")
        progress.grow(2, "s2 indexed")
        progress.advance("ingest")
    assert "2/4" in stream.getvalue()


def test_bar_progress_draws_cases_and_step() -> None:
    stream = io.StringIO()
    bar = progress.BarProgress(stream)
    bar._console.width = 120  # a fixed width: rich would ask the (absent) terminal
    with progress.use_reporter(bar):
        progress.start(3, "prepare")
        progress.advance("deface")
        progress.advance("segmentations")
        progress.finish()
        progress.step("zip")  # packaging, after the last case
    text = stream.getvalue()
    assert "prepare" in text and "3/3" not in text and "2/3" in text and "zip" in text


def _converted(site: str, uid: str) -> ConvertedCase:
    image = ImageFile(path="/nowhere.nii.gz", sha256="0" * 64, shape=(2, 2, 2), dtype="int16",
                      affine=((1.0, 0.0, 0.0, 0.0),) * 4)
    return ConvertedCase(site=site, StudyInstanceUID=uid, PatientID="P", StudyDate="20200101",
                         fingerprint="f" * 64, ct_series="1.1", pt_series="1.2", ct=image, pt=image,
                         ct_metadata={}, pt_metadata={}, ignored=(), private_review=())


def _prepared(site: str, uid: str) -> PreparedCase:
    image = _converted(site, uid).ct
    return PreparedCase(site=site, StudyInstanceUID=uid, fingerprint="p" * 64, ct=image, pt=image, labels={},
                        cylinder=None, defaced=False, head_missing_released=False, dropped_labels={},
                        lesion_voxels_removed=0)


def test_status_counts_held_back_and_withdrawn_cases(
    tmp_path: Path, demo_toml: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path, state = _state_config(tmp_path, demo_toml)
    site = load_config(config_path).sites[0].id
    held, redone, ready, gone = "1.9.1", "1.9.2", "1.9.3", "1.9.4"
    for uid in (held, redone, ready, gone):
        write_record(state.study_outcome(site, study_key(uid)), _converted(site, uid), status="converted")
    rejected = Rejection(site, "1.9.5", RejectReason.NO_CT, "no CT", Phase.INGEST, "ingest", "e" * 64)
    write_record(state.study_outcome(site, rejected.key), rejected, status="rejected")
    # held back at build (the prepare stage's record is the hold-back)
    held_back = Rejection(site, held, RejectReason.HEAD_NOT_FOUND, "no head", Phase.BUILD, "prepare", "d" * 64)
    write_record(state.prepared_record(study_key(held)), held_back, status="rejected")
    for uid in (redone, ready):
        write_record(state.prepared_record(study_key(uid)), _prepared(site, uid), status="prepared")
    registry = Registry(state.registry)
    registry.assign([NumberingCandidate(0, site, "P", "20200101", uid) for uid in (redone, ready, gone)])
    registry.withdraw(registry.number_of(gone), "consent withdrawn")

    assert main(["status", str(config_path)]) == 0
    row = _status_rows(capsys.readouterr().out)[site]
    # seen 5 (no index: the outcomes), ready: redone + ready, nothing released (no zip)
    assert row == [site, "5", "2", "0", "1", "2 (head-not-found 1, no-ct 1)"]


# ---------------------------------------------------------------------------
# on the state the real flows built


@pytest.fixture
def demo_copy(curated_demo, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """A private copy of the curated demo folder; returns its config path."""
    root = tmp_path / "demo"
    shutil.copytree(curated_demo.root, root, symlinks=True)
    config = root / curated_demo.config_path.relative_to(curated_demo.root)
    cfg = load_config(config)
    assert cfg.release.state_dir.is_relative_to(root), "the demo config must use relative paths"
    return config


def _status_rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines()[2:]:
        if line and not line.startswith("-"):
            cells = re.split(r"\s{2,}", line.strip())
            rows[cells[0]] = cells
    return rows


def test_status_withdraw_audit_case_and_run(demo_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(demo_copy)
    state = StatePaths(config.release.state_dir)
    entries = Registry(state.registry).entries()
    assert entries, "the demo released no case"
    target = entries[0]
    case = f"{target.number:04d}"

    # status: per site, from the state the flows left
    assert main(["status", str(demo_copy)]) == 0
    out = capsys.readouterr().out
    rows = _status_rows(out)
    header = out.splitlines()[1]
    assert re.split(r"\s{2,}", header.strip()) == [
        "site", "studies seen", "cases ready", "released", "withdrawn", "rejected"
    ]
    manifest_cases = _manifest(config)["cases"]
    for site in config.sites:
        outcomes = site_outcomes(state, site.id)
        released = sum(1 for c in manifest_cases if c["site"] == site.id)
        cells = rows[site.id]
        assert int(cells[1]) == len(outcomes)
        rejected = Counter(o.reason.value for o in outcomes if isinstance(o, Rejection))
        assert int(cells[3]) == released and cells[4] == "0"
        assert cells[5] == _rejected_cell(rejected)
    assert int(rows["total"][3]) == len(manifest_cases) == len(entries)

    # withdraw: registry, audit record, status
    records_before = len(AuditLog(state.audit_log).records())
    assert main(["withdraw", str(demo_copy), "--case", case, "--reason", "consent withdrawn"]) == 0
    assert f"case {case} (site {target.site}) withdrawn" in capsys.readouterr().out
    assert [e.withdrawn for e in Registry(state.registry).entries() if e.number == target.number] == [True]
    records = AuditLog(state.audit_log).records()
    assert len(records) == records_before + 1
    last = records[-1]
    assert (last["event"], last["case"], last["study"], last["parameters"]["reason"]) == (
        "withdrawn", case, target.StudyInstanceUID, "consent withdrawn",
    )
    # idempotent: a second withdrawal changes nothing and writes no record
    assert main(["withdraw", str(demo_copy), "--case", case, "--reason", "again"]) == 0
    assert "already withdrawn (consent withdrawn)" in capsys.readouterr().out
    assert len(AuditLog(state.audit_log).records()) == records_before + 1
    # a number never given
    high = max(e.number for e in entries)
    assert main(["withdraw", str(demo_copy), "--case", str(high + 5), "--reason", "x"]) == 2
    assert f"case {high + 5:04d} is not in the registry" in capsys.readouterr().err

    assert main(["status", str(demo_copy)]) == 0
    rows = _status_rows(capsys.readouterr().out)
    assert rows[target.site][4] == "1" and rows["total"][4] == "1"

    # audit --case: the case's history from DICOM to zip, in log order
    assert main(["audit", str(demo_copy), "--case", case, "--verify"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "audit chain intact" in lines[0]
    assert lines[1].startswith(f"case {case}: site {target.site}, study {target.StudyInstanceUID}, withdrawn")
    events = [line.split()[2] for line in lines[2:]]
    assert events[0] == "study-converted", events
    assert events.index("case-prepared") < events.index("case-numbered") < events.index("release-packaged")
    assert events[-1] == "withdrawn"
    assert all(target.StudyInstanceUID in line or case in line for line in lines[2:])

    assert main(["audit", str(demo_copy), "--case", str(high + 5)]) == 2
    assert f"case {high + 5:04d} is not in the registry" in capsys.readouterr().err

    # run after the withdrawal: the zip would change, which needs --force (exit 1 without)
    zip_bytes = config.release.zip_path.read_bytes()
    assert main(["run", str(demo_copy)]) == 1
    assert "petct-release: error:" in capsys.readouterr().err
    assert config.release.zip_path.read_bytes() == zip_bytes
    # with --force the case leaves the release and its number is not reused
    assert main(["run", str(demo_copy), "--force"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == str(config.release.zip_path)
    released = [c["number"] for c in _manifest(config)["cases"]]
    assert target.number not in released
    assert len(released) == len(entries) - 1
    assert verify_chain(state.audit_log).ok


def _rejected_cell(counts: Counter[str]) -> str:
    if not counts:
        return "0"
    return f"{sum(counts.values())} (" + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) + ")"


def _manifest(config) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(StatePaths(config.release.state_dir).release_manifest(config.release.zip_name).read_text())


def test_second_demo_reports_nothing_left_to_do(
    curated_demo, demo_copy: Path, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    out = demo_copy.parent
    # the curated demo's sites were written with one case per site: mark them as a demo's
    (out / DEMO_MARKER).write_text(json.dumps({"cases_per_site": 1, "complete": True}), encoding="utf-8")
    zip_path = load_config(demo_copy).release.zip_path
    before = zip_path.stat().st_mtime_ns
    assert main(["demo", "--out", str(out), "--cases", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "nothing left to do: every study, case and the zip are up to date" in lines
    assert f"verified: {zip_path}" in lines
    assert lines[-1] == str(zip_path)
    assert zip_path.stat().st_mtime_ns == before
    assert sha256_file(zip_path) == curated_demo.zip_sha256

    assert main(["demo", "--out", str(out), "--cases", "2"]) == 2
    assert "made with --cases 1, not --cases 2" in capsys.readouterr().err


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "thesis.tex").write_text("keep me", encoding="utf-8")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "is not a demo folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


def test_a_missing_clinical_sheet_is_a_config_error_before_any_flow(
    tmp_path: Path, demo_toml: str, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = _set_key(demo_toml, "clinical_sheet", '"clinical/nowhere.csv"')
    config = _config_with(tmp_path, demo_toml, old, new)
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert "nowhere.csv: the clinical sheet does not exist" in err
    assert not (tmp_path / ".petct").exists()  # refused before any state was written


def test_rehash_reaches_the_flows_of_ingest_and_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, demo_toml: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import flows.flows as flows_module

    config = tmp_path / "release.toml"
    config.write_text(demo_toml, encoding="utf-8")
    called: list[tuple[str, dict[str, object]]] = []

    def fake(name: str):
        def run(*args: object, **kwargs: object) -> object:
            called.append((name, kwargs))
            raise SystemExit(0)
        return run

    monkeypatch.setattr(flows_module, "run_ingest", fake("ingest"))
    monkeypatch.setattr(flows_module, "run_curate", fake("run"))
    for argv in (["ingest", str(config), "--rehash"], ["run", str(config), "--rehash"], ["ingest", str(config)]):
        with pytest.raises(SystemExit):
            main(argv)
    assert [(name, kwargs["rehash"]) for name, kwargs in called] == [("ingest", True), ("run", True), ("ingest", False)]
