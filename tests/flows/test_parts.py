"""A release in parts through the flows and the CLI (real Prefect engine), from a copy of the curated demo."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from curation.config import load_config
from curation.state import StatePaths
from flows.audit import AuditLog, verify_chain
from flows.cli import main
from release.parts import LOOSE_FILES, METADATA_ZIP, parse_part_name
from tests.flows.conftest import CuratedDemo, copy_demo, use_parts


def _stamps(folder: Path) -> dict[str, tuple[int, int, str]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.iterdir())}


def _extract(zips: list[Path], into: Path) -> dict[str, bytes]:
    for path in zips:
        with zipfile.ZipFile(path) as zf:
            zf.extractall(into)
    return {str(p.relative_to(into)): p.read_bytes() for p in sorted(into.rglob("*")) if p.is_file()}


def test_build_in_parts_verify_dir_and_withdraw(
    curated_demo: CuratedDemo, tmp_path: Path, prefect_api_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = copy_demo(curated_demo, tmp_path / "demo")
    use_parts(config_path, "800KB")  # a demo CT is about 0.4 MB: two cases to a part
    config = load_config(config_path)
    state = StatePaths(config.release.state_dir)
    folder = config.release.release_path

    assert main(["build", str(config_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(folder)
    names = sorted(p.name for p in folder.iterdir())
    parts = [n for n in names if parse_part_name(n)]
    assert [n for n in parts if n.startswith("CT_")] == ["CT_0001-0002.zip", "CT_0003-0003.zip"]
    assert len(parts) == 10 and sorted(set(names) - set(parts)) == sorted([METADATA_ZIP, *LOOSE_FILES])
    assert not (folder.parent / ".staging").exists()

    # the tree of the demo's single zip, file for file (the card and SHA256SUMS add the parts)
    ours = _extract([folder / n for n in [*parts, METADATA_ZIP]], tmp_path / "from-parts")
    theirs = _extract([curated_demo.zip_path], tmp_path / "from-zip")
    assert sorted(ours) == sorted(theirs)
    top = config.release.name
    assert sorted(p for p in ours if ours[p] != theirs[p]) == [f"{top}/README.md", f"{top}/SHA256SUMS"]

    # the audit log holds every part's sha256; verify DIR passes and is recorded
    records = AuditLog(state.audit_log).records()
    packaged = [r for r in records if r["event"] == "release-packaged"][-1]
    assert {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in [*parts, METADATA_ZIP]}.items() \
        <= packaged["outputs"].items()
    assert packaged["parameters"]["packaging"] == "parts" and folder.name in packaged["outputs"]
    assert [r["event"] for r in records if r["event"].startswith("release-")][-3:] == [
        "release-packaged", "release-verified", "release-published"]
    assert main(["verify", str(folder), "--state", str(state.root)]) == 0
    assert f"verified: {folder}" in capsys.readouterr().out
    last = AuditLog(state.audit_log).records()[-1]
    assert last["event"] == "release-verified" and last["outcome"] == "ok" and folder.name in last["inputs"]
    report = (state.report_dir / "index.html").read_text(encoding="utf-8")
    assert "CT_0001-0002.zip" in report

    # a second build finds nothing to do and touches nothing
    before = _stamps(folder)
    assert main(["build", str(config_path)]) == 0
    assert "nothing left to do" in capsys.readouterr().out
    assert _stamps(folder) == before

    # withdraw case 0002: only the parts that held it (and the metadata) are rewritten
    assert main(["withdraw", str(config_path), "--case", "0002", "--reason", "consent withdrawn"]) == 0
    assert main(["build", str(config_path)]) == 1  # other content under the same version needs --force
    assert "--force" in capsys.readouterr().err
    assert main(["build", str(config_path), "--force"]) == 0
    after = _stamps(folder)
    assert sorted(after) == sorted(before)
    held = {n for n in parts if parse_part_name(n)[1] <= 2 <= parse_part_name(n)[2]}  # type: ignore[index]
    assert len(held) == 9 and "CT_0003-0003.zip" not in held
    changed = {n for n in after if after[n] != before[n]}
    assert changed == held | {METADATA_ZIP, "README.md", "SHA256SUMS", "CT-details.xlsx", "PT-details.xlsx"}
    with zipfile.ZipFile(folder / "CT_0001-0002.zip") as zf:
        assert zf.namelist() == [f"{top}/imaging-data/images/CT/0001.nii.gz"]
    assert main(["verify", str(folder), "--state", str(state.root)]) == 0
    assert verify_chain(state.audit_log).ok
    assert main(["audit", str(config_path), "--verify"]) == 0
