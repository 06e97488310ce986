"""The flows on the phantom sites, under the real Prefect engine (test server)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from anonymization.dates import (
    SHIFT_MAX_DAYS,
    SHIFT_MIN_DAYS,
    load_or_create_secret,
    patient_offset_days,
)
from curation.atomic import sha256_file
from curation.config import load_config
from curation.errors import RejectReason
from curation.model import ConvertedCase, Rejection
from curation.registry import Registry, format_case_number
from curation.state import StatePaths, site_outcomes
from flows.audit import AuditLog, verify_chain
from release.spreadsheets import read_details_xlsx
from tests.flows.conftest import CuratedDemo, write_demo_config


def _outcomes(demo: CuratedDemo) -> tuple[list[ConvertedCase], list[Rejection]]:
    converted: list[ConvertedCase] = []
    rejected: list[Rejection] = []
    for site in demo.config.sites:
        for outcome in site_outcomes(demo.state, site.id):
            (converted if isinstance(outcome, ConvertedCase) else rejected).append(outcome)
    return converted, rejected


def _index_identifiers(state: StatePaths, site_ids: list[str]) -> set[str]:
    """Every StudyInstanceUID, PatientID and series UID the indexes hold."""
    values: set[str] = set()
    for site in site_ids:
        index = json.loads(state.site_index(site).read_text())
        for study in index["studies"]:
            values.update({study["StudyInstanceUID"], study["PatientID"]})
            for series in study["series"]:
                values.update({series["SeriesInstanceUID"], series["FrameOfReferenceUID"]})
    return {v for v in values if v}


def test_curate_releases_every_converted_case_and_rejects_with_reason_codes(curated_demo: CuratedDemo) -> None:
    from release.verify import verify_release

    summary = curated_demo.summary
    converted, rejected = _outcomes(curated_demo)
    assert summary.failed == 0
    assert converted, "the demo sites must give converted cases"
    assert rejected, "the demo sites hold studies that must be rejected"
    assert summary.converted == len(converted)
    assert summary.rejected == dict(Counter(r.reason.value for r in rejected))
    # write_demo_sites plants one study per reason below; each site has one good study
    assert summary.rejected == {
        RejectReason.FRAME_OF_REFERENCE_MISMATCH.value: 1,
        RejectReason.GANTRY_TILT.value: 1,
        RejectReason.MISSING_SLICES.value: 1,
        RejectReason.NO_AC_PET.value: 1,
        RejectReason.PHI_DETECTED.value: 1,
    }
    assert summary.converted == len(curated_demo.config.sites)
    assert summary.released == len(converted)
    assert not summary.nothing_to_do

    studies_seen = sum(
        len(json.loads(curated_demo.state.site_index(s.id).read_text())["studies"]) for s in curated_demo.config.sites
    )
    assert len(converted) + len(rejected) == studies_seen

    name = curated_demo.config.release.name
    with zipfile.ZipFile(curated_demo.zip_path) as zf:
        cts = sorted(n for n in zf.namelist() if n.startswith(f"{name}/imaging-data/images/CT/"))
    numbers = sorted(e.number for e in Registry(curated_demo.state.registry).entries())
    assert cts == [f"{name}/imaging-data/images/CT/{format_case_number(n)}.nii.gz" for n in numbers]

    report = verify_release(curated_demo.zip_path, state_dir=curated_demo.state.root)
    assert report.ok, report.problems


#: sha256 of the small phantom sites' release zip (threads runner), as built by the code before
#: the architecture change of issue 8.  A refactoring must leave it byte-identical; a change that
#: alters the release on purpose (a new spreadsheet column, a date policy) updates this pin and
#: says so in its commit.  Issue 9 moved it from ebe3aa71...542c3: the date policy (shift, the
#: demo's fixed secret) and the age cap in the spreadsheets, and the card's "Dates and ages".
#: Issue 10 moved it from 1f124b1c...b4ec: CT-details.xlsx and PT-details.xlsx gain the
#: LossyImageCompression, LossyImageCompressionRatio and LossyImageCompressionMethod columns.
#: Issue 10 (SUV) moved it from 77c97ac4...b409: PT-details.xlsx gains the SUV-ready columns
#: (series timing, decay correction, SUVbwScaleFactor and its reason, GE's decay fields).
#: Issue 11 moved it from bea45c6d...c548: NIfTI files are compressed by ISA-L (the same
#: uncompressed bytes, other gzip bytes, hence another SHA256SUMS).  Issue 11 (one case's cost)
#: moved it from 6e99e337...7139: a .nii.gz is independent gzip members (the header, then whole
#: planes of at most 1 MiB each, each member's size in an FEXTRA subfield), so prepare rewrites
#: only the members defacing changes; the same uncompressed bytes, other gzip bytes.  Issue 11
#: moved it to 22c1f4dc...1f17 (each NIfTI header member stored), then from there to this one: each
#: voxel member's first 16 bytes are deflated and flushed on their own, so ISA-L never hashes the
#: address of its state (curation.nifti.gzip_member); the same uncompressed bytes.
PINNED_DEMO_ZIP_SHA256 = "f2fe584fb17f93f8808249ccf1019cd7799fbce73911defb63173d2bc4af7edf"


def test_the_demo_release_is_byte_identical_to_the_pinned_zip(curated_demo: CuratedDemo) -> None:
    assert curated_demo.zip_sha256 == PINNED_DEMO_ZIP_SHA256


def test_audit_log_records_each_decision_with_hashes(curated_demo: CuratedDemo) -> None:
    path = curated_demo.state.audit_log
    chain = verify_chain(path)
    assert chain.ok, chain.problem
    records = AuditLog(path).records()
    run = curated_demo.summary.flow_run_id
    first_run = [r for r in records if r["flow_run_id"] == run]
    converted, rejected = _outcomes(curated_demo)

    by_study = {r["study"]: r for r in first_run if r["event"] == "study-converted"}
    assert set(by_study) == {c.StudyInstanceUID for c in converted}
    for case in converted:
        record = by_study[case.StudyInstanceUID]
        assert record["inputs"] == {"dicom": case.fingerprint}
        assert record["outputs"] == {"CT.nii.gz": sha256_file(case.ct.path), "PT.nii.gz": sha256_file(case.pt.path)}
        assert record["site"] == case.site and record["outcome"] == "converted"

    rejections = {r["study"]: r for r in first_run if r["event"] == "study-rejected"}
    assert {uid: r["parameters"]["reason"] for uid, r in rejections.items()} == {
        r.StudyInstanceUID: r.reason.value for r in rejected
    }
    assert all(r["outcome"] == "rejected" and r["parameters"]["message"] for r in rejections.values())
    (phi,) = [r for r in rejections.values() if r["parameters"]["reason"] == "phi-detected"]
    # the gate's findings by attribute (tag and keyword), as the phantom plants them
    assert {"(0010,0030) PatientBirthDate", "(0008,0050) AccessionNumber"} <= set(phi["parameters"]["gate_findings"])

    prepared = [r for r in first_run if r["event"] == "case-prepared"]
    assert len(prepared) == len(converted)
    defaced_sites = {s.id for s in curated_demo.config.sites if s.deface}
    for record in prepared:
        if record["site"] in defaced_sites:
            cylinder = record["parameters"]["cylinder"]
            assert record["parameters"]["defaced"] is True
            assert cylinder["radius"] > 0 and cylinder["z_hi"] > cylinder["z_lo"]
        else:
            assert record["parameters"]["defaced"] is False

    registry = {e.StudyInstanceUID: format_case_number(e.number) for e in Registry(curated_demo.state.registry).entries()}
    numbered = {r["study"]: r["case"] for r in first_run if r["event"] == "case-numbered"}
    assert numbered == registry

    (packaged,) = [r for r in first_run if r["event"] == "release-packaged"]
    assert packaged["outputs"] == {curated_demo.zip_path.name: curated_demo.zip_sha256}
    assert packaged["parameters"]["cases"] == sorted(registry.values())
    assert (packaged["parameters"]["dates"], packaged["parameters"]["age_cap"]) == ("shift", 90)
    assert (packaged["parameters"]["removed_characters"], packaged["parameters"]["blanked_values"]) == (0, 0)
    (verified,) = [r for r in first_run if r["event"] == "release-verified"]
    assert verified["outcome"] == "ok" and verified["parameters"]["problems"] == []


def test_artifacts_report_counts_and_reasons_without_identifiers(curated_demo: CuratedDemo) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    run = curated_demo.summary.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run]))
        )
    by_type = {a.type: a for a in artifacts}
    assert set(by_type) == {"markdown", "table"}
    markdown = str(by_type["markdown"].data)
    table = by_type["table"].data
    rows = json.loads(table) if isinstance(table, str) else table

    _, rejected = _outcomes(curated_demo)
    assert sorted((r["site"], r["reason"]) for r in rows) == sorted((r.site, r.reason.value) for r in rejected)
    for site in curated_demo.config.sites:
        assert f"| {site.id} |" in markdown
    for reason in {r.reason.value for r in rejected}:
        assert f"`{reason}`" in markdown
    assert f"released {curated_demo.summary.released}" in markdown
    assert "`.petct/report/index.html` beside the config" in markdown  # the steward's report, by relative path

    identifiers = _index_identifiers(curated_demo.state, [s.id for s in curated_demo.config.sites])
    assert identifiers
    published = markdown + json.dumps(rows)
    leaked = sorted(v for v in identifiers if v in published)
    assert leaked == [], f"identifiers in artifacts: {leaked}"
    assert str(curated_demo.root) not in published


def test_second_curate_has_nothing_to_do_and_reuses_the_zip(curated_demo: CuratedDemo) -> None:
    from flows.flows import run_curate

    log = AuditLog(curated_demo.state.audit_log)
    before = len(log.records())
    summary = run_curate(str(curated_demo.config_path))
    assert summary.nothing_to_do
    assert summary.failed == 0
    assert summary.zip_path == str(curated_demo.zip_path)
    assert summary.released == curated_demo.summary.released
    assert summary.flow_run_id != curated_demo.summary.flow_run_id
    assert curated_demo.zip_path.stat().st_mtime_ns == curated_demo.zip_mtime_ns
    assert sha256_file(curated_demo.zip_path) == curated_demo.zip_sha256
    new = [r["event"] for r in log.records()[before:]]
    assert new == ["release-reused"]


def test_a_second_build_refuses_while_one_holds_the_lock(curated_demo: CuratedDemo) -> None:
    from flows.flows import run_build
    from flows.lock import BuildInProgressError

    lock = curated_demo.state.build_lock
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import filelock, sys, time\n"
         "lock = filelock.FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(120)",
         str(lock)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(BuildInProgressError, match=r"another build of this release is running") as info:
            run_build(str(curated_demo.config_path))
        assert str(lock) in str(info.value)
    finally:
        holder.kill()
        holder.wait()


def test_an_unexpected_error_fails_one_task_and_the_flow_goes_on(tmp_path: Path, prefect_api_url: str) -> None:
    from prefect.client.orchestration import get_client

    from curation.dicomindex import index_site
    from flows.flows import run_ingest

    config_path = write_demo_config(tmp_path, runner="threads", workers=2)
    config = load_config(config_path)
    site = config.sites[0]
    state = StatePaths(config.release.state_dir)
    studies = index_site(site.id, site.dicom_dir).studies
    assert len(studies) >= 2
    broken = studies[0]
    # A file where the study's state folder must go: writing its volumes fails
    # with an OSError that is not a data problem of the study.
    state.case_dir(broken.key).parent.mkdir(parents=True, exist_ok=True)
    state.case_dir(broken.key).write_text("in the way\n")

    start = time.monotonic()
    summary = run_ingest(str(config_path), site.id)
    assert summary.failed == 1
    assert summary.converted + sum(summary.rejected.values()) == len(studies) - 1
    assert time.monotonic() - start < 120

    records = [r for r in AuditLog(state.audit_log).records() if r["flow_run_id"] == summary.flow_run_id]
    (failed,) = [r for r in records if r["outcome"] == "failed"]
    assert failed["event"] == "ingest-failed"
    assert failed["study"] == broken.StudyInstanceUID
    assert "Error" in failed["parameters"]["error"]
    others = {r["study"] for r in records if r["event"] in ("study-converted", "study-rejected")}
    assert others == {s.StudyInstanceUID for s in studies[1:]}

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(summary.flow_run_id)
    assert run.state is not None and run.state.is_failed()
    assert run.state.message.startswith("1 task(s) failed")


def test_verify_accepts_the_release_records_it_and_names_a_flipped_byte(curated_demo: CuratedDemo, tmp_path: Path) -> None:
    from flows.decisions import verify_and_record

    good = verify_and_record(curated_demo.zip_path, curated_demo.state.root)
    assert good.problems == ()
    last = AuditLog(curated_demo.state.audit_log).records()[-1]
    assert (last["event"], last["outcome"], last["inputs"]) == (
        "release-verified", "ok", {curated_demo.zip_path.name: curated_demo.zip_sha256})

    data = bytearray(curated_demo.zip_path.read_bytes())
    with zipfile.ZipFile(curated_demo.zip_path) as zf:
        member = next(i for i in zf.infolist() if i.filename.endswith("labels.json"))
    # the member's data starts after its local header: 30 bytes, the name, the extra field
    start = member.header_offset + 30 + int.from_bytes(data[member.header_offset + 26 : member.header_offset + 28], "little")
    start += int.from_bytes(data[member.header_offset + 28 : member.header_offset + 30], "little")
    data[start + 5] ^= 0xFF
    broken = tmp_path / curated_demo.zip_path.name
    broken.write_bytes(bytes(data))
    bad = verify_and_record(broken, None)
    assert bad.problems
    assert any("labels.json" in problem for problem in bad.problems), bad.problems


def test_public_sentence_blanks_whole_paths_under_configured_folders_and_identifiers() -> None:
    from anonymization.redact import public_sentence

    text = (
        "/drops/leipzig/Mustermann Max (1957)/CT/IM0001: file of CT series 1.2.840.99.7 cannot be read; "
        "PatientName Doe^Jane at /elsewhere/a b/c"
    )
    got = public_sentence(text, {"Doe^Jane", "M"}, roots=["/drops/leipzig"])
    assert got == "<path>: file of CT series <uid> cannot be read; PatientName <id> at <path> b<path>"
    for fragment in ("Mustermann", "Max", "1957", "Doe", "1.2.840"):
        assert fragment not in got


def test_a_release_that_fails_the_leak_scan_is_moved_aside_and_the_build_exits_1(
    curated_demo: CuratedDemo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from flows.cli import main
    from tests.phantom_helpers import read_manifest

    root = tmp_path / "copy"
    shutil.copytree(curated_demo.root, root)
    config_path = root / curated_demo.config_path.name
    text = config_path.read_text(encoding="utf-8")
    config_path.write_text(text.replace('version = "1.0.0"', 'version = "1.0.1"', 1), encoding="utf-8")
    # a steward's clinical sheet that carries a patient's pseudonym in the indication text
    vienna = next(s for s in read_manifest(config_path)["vienna"] if s["expected"] == "case")
    sheet = root / "clinical" / "vienna.csv"
    sheet.write_text(f"StudyInstanceUID,indication\n{vienna['StudyInstanceUID']},follow-up {vienna['PatientID']}\n",
                     encoding="utf-8")

    assert main(["build", str(config_path)]) == 1
    dist = load_config(config_path).release.output_dir
    zip_name = load_config(config_path).release.zip_name
    assert not (dist / zip_name).exists()
    assert not (dist / f"{zip_name}.sha256").exists()
    assert (dist / f"{zip_name}.failed-verify").is_file()
    err = capsys.readouterr().err
    assert "an identifying value" in err and "details.xlsx" in err
    assert vienna["PatientID"] not in err
    events = [r["event"] for r in AuditLog(load_config(config_path).release.state_dir / "audit.jsonl").records()]
    assert events[-1] == "release-quarantined"


def test_a_rewritten_audit_tail_is_caught_and_the_release_verified_again(
    curated_demo: CuratedDemo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log cut short and re-chained (head file rewritten too) passes the chain check alone;
    the release manifest's binding to its verification record catches it."""
    import hashlib
    import shutil

    from flows.audit import _write_head
    from flows.cli import main
    from flows.flows import run_build

    root = tmp_path / "copy"
    shutil.copytree(curated_demo.root, root)
    config_path = root / curated_demo.config_path.name
    state = load_config(config_path).release.state_dir
    log_path = state / "audit.jsonl"
    lines = log_path.read_bytes().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if b'"release-verified"' in line)
    log_path.write_bytes(b"".join(lines[:cut]))
    _write_head(log_path, cut, hashlib.sha256(lines[cut - 1].rstrip(b"\n")).hexdigest())
    zip_name = curated_demo.zip_path.name
    # a forged, well-chained record claiming the zip was verified
    AuditLog(log_path).append("release-verified", inputs={zip_name: curated_demo.zip_sha256},
                              parameters={"problems": []}, outcome="ok")
    assert verify_chain(log_path).ok  # the chain alone cannot tell

    assert main(["audit", str(config_path), "--verify"]) == 1
    assert f"the verification of {zip_name} recorded at line" in capsys.readouterr().err

    before = len(AuditLog(log_path).records())
    summary = run_build(str(config_path))
    assert summary.failed == 0 and summary.zip_path
    new = AuditLog(log_path).records()[before:]
    assert [r["event"] for r in new if r["event"].startswith("release-")] == ["release-reused", "release-verified"]
    assert main(["audit", str(config_path), "--verify"]) == 0  # bound to the new, real verification


def test_date_offsets_appear_nowhere_in_the_release_or_the_audit_log(curated_demo: CuratedDemo) -> None:
    """The demo is released with shifted dates; no patient's offset is written anywhere public or logged."""
    converted, _ = _outcomes(curated_demo)
    secret = load_or_create_secret(curated_demo.state.root)
    offsets = {patient_offset_days(secret, c.site, c.PatientID, c.StudyInstanceUID) for c in converted}
    assert offsets and all(SHIFT_MIN_DAYS <= o <= SHIFT_MAX_DAYS for o in offsets)

    def tokens(text: str) -> set[str]:
        return set(re.findall(r"(?<![0-9A-Za-z.])[0-9]+(?![0-9A-Za-z.])", text))

    texts = [curated_demo.state.audit_log.read_text(encoding="utf-8")]
    with zipfile.ZipFile(curated_demo.zip_path) as zf:
        for name in zf.namelist():
            data = zf.read(name)
            if name.endswith(".xlsx"):
                with zipfile.ZipFile(io.BytesIO(data)) as xlsx:
                    texts += [xlsx.read(m).decode("utf-8") for m in xlsx.namelist()]
            elif not name.endswith(".nii.gz"):
                texts.append(data.decode("utf-8"))
    found = set().union(*(tokens(t) for t in texts))
    assert not {str(o) for o in offsets} & found
    # and the published dates really are shifted: no acquisition date of the demo is a real one
    header, rows = read_details_xlsx(io.BytesIO(zipfile.ZipFile(curated_demo.zip_path).read(
        f"{curated_demo.config.release.name}/CT-details.xlsx")))
    years = {r[header.index("AcquisitionDate")].year for r in rows}
    assert min(years) >= 2100
