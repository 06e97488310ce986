"""A release in parts: the single zip's tree in one zip per folder, fixed case ranges, verify of the whole."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest

from curation.config import Packaging
from release.assemble import ReleaseExistsError, assemble_release
from release.parts import (
    FOLDERS,
    LOOSE_FILES,
    METADATA_ZIP,
    PartsResult,
    assemble_parts,
    layout_parts,
    parse_part_name,
    publish_parts,
    read_layout,
    split_sums,
)
from release.verify import verify_release

from .conftest import ReleaseInputs, make_inputs, rewrite_zip
from .test_verify import _state

NAME = "enhance-pet-test"


def _parts(inputs: ReleaseInputs, *, force: bool = False) -> PartsResult:
    """Build, verify (with the state) and publish, as a run does."""
    result = assemble_parts(inputs.config, inputs.entries, inputs.labels, pipeline_version="0.1.0", force=force)
    report = verify_release(Path(result.folder), state_dir=_state(inputs)) if result.published else None
    if not result.published:
        staged = {name: Path(path) for name, path in result.locations().items()}
        from release.verify import finish_verify, plan_verify_parts, verify_chunk

        plan = plan_verify_parts(inputs.config.release.parts_name, staged, state_dir=_state(inputs))
        report = finish_verify(plan, [verify_chunk(plan.job(i)) for i in range(len(plan.chunks))])
    assert report is not None and report.ok, report.problems if report else None
    return publish_parts(result, inputs.config)


def _parts_inputs(root: Path, cases: int = 6, size: str = "4KB") -> ReleaseInputs:
    return make_inputs(root, cases=cases, packaging="parts", max_part_size=size)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _extract(zips: list[Path], into: Path) -> dict[str, bytes]:
    for path in zips:
        with zipfile.ZipFile(path) as zf:
            zf.extractall(into)
    return _tree(into)


def _stamps(folder: Path) -> dict[str, tuple[int, int, str]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.iterdir())}


def test_ranges_stay_and_new_cases_fill_the_last_part_or_start_one() -> None:
    sizes = {"CT": {n: 10 for n in range(1, 8)}}
    assert layout_parts(sizes, {}, 30) == {"CT": [(1, 3), (4, 6), (7, 7)]}
    # an earlier layout stays, whatever the sizes now; case 2 withdrawn leaves (1, 3) as it is
    grown = {"CT": {1: 10, 3: 10, 4: 25, 5: 25, 6: 10, 7: 10, 8: 10, 9: 10, 10: 10}}
    assert layout_parts(grown, {"CT": [(1, 3), (4, 6), (7, 7)]}, 30) == {"CT": [(1, 3), (4, 6), (7, 9), (10, 10)]}
    # a range whose cases are all gone keeps its place, so its numbers never move
    assert layout_parts({"CT": {1: 10}}, {"CT": [(1, 3), (4, 6)]}, 30) == {"CT": [(1, 3), (4, 6)]}
    # one case larger than a part gets a part of its own
    assert layout_parts({"PT": {1: 50, 2: 5}}, {}, 30) == {"PT": [(1, 1), (2, 2)]}


def test_single_and_parts_give_the_same_tree(tmp_path: Path) -> None:
    single_inputs = make_inputs(tmp_path / "single", cases=6)
    single = assemble_release(single_inputs.config, single_inputs.entries, single_inputs.labels, pipeline_version="0.1.0")
    inputs = _parts_inputs(tmp_path / "parts")
    assert inputs.config.release.packaging is Packaging.PARTS
    result = _parts(inputs)
    folder = Path(result.folder)
    assert folder == inputs.config.release.output_dir / f"{NAME}-1.0.0"

    names = sorted(p.name for p in folder.iterdir())
    parts = [n for n in names if parse_part_name(n)]
    assert sorted({parse_part_name(n)[0] for n in parts}) == sorted(FOLDERS)  # type: ignore[index]
    assert [n for n in parts if n.startswith("CT_")] == ["CT_0001-0002.zip", "CT_0003-0004.zip", "CT_0005-0006.zip"]
    assert sorted(set(names) - set(parts)) == sorted([METADATA_ZIP, *LOOSE_FILES])

    ours = _extract([folder / n for n in [*parts, METADATA_ZIP]], tmp_path / "from-parts")
    theirs = _extract([Path(single.zip_path)], tmp_path / "from-single")
    assert sorted(ours) == sorted(theirs)  # same top folder, same member paths
    differ = sorted(path for path in ours if ours[path] != theirs[path])
    # byte for byte, but for the two files that say the release came in parts
    assert differ == [f"{NAME}/README.md", f"{NAME}/SHA256SUMS"]
    card, single_card = ours[f"{NAME}/README.md"].decode(), theirs[f"{NAME}/README.md"].decode()
    assert card.startswith(single_card) and "\n## Parts\n" in card[len(single_card):]
    for part in parts:
        assert f"`{part}`" in card and result.hashes()[part] in card
    members, listed_parts = split_sums(ours[f"{NAME}/SHA256SUMS"].decode())
    readme_line = hashlib.sha256(ours[f"{NAME}/README.md"]).hexdigest() + "  README.md\n"
    single_lines = theirs[f"{NAME}/SHA256SUMS"].decode().splitlines(keepends=True)
    assert members.splitlines(keepends=True) == [readme_line if ln.endswith("  README.md\n") else ln for ln in single_lines]
    assert listed_parts == "".join(f"{result.hashes()[p]}  {p}\n" for p in sorted(parts))
    # the loose files are metadata.zip's members, byte for byte
    for rel in LOOSE_FILES:
        assert (folder / rel).read_bytes() == ours[f"{NAME}/{rel}"]
    assert verify_release(folder, state_dir=_state(inputs)).ok


def test_parts_are_deterministic_and_an_unchanged_rebuild_writes_nothing(tmp_path: Path) -> None:
    first = _parts(_parts_inputs(tmp_path / "a"))
    inputs = _parts_inputs(tmp_path / "b")
    second = _parts(inputs)
    assert first.hashes() == second.hashes() and first.digest == second.digest
    before = _stamps(Path(second.folder))
    again = assemble_parts(inputs.config, inputs.entries, inputs.labels, pipeline_version="0.1.0")
    assert again.reused and again.published and all(not f.staged for f in again.files)
    assert _stamps(Path(second.folder)) == before


def test_a_withdrawal_rewrites_only_the_parts_that_held_the_case(tmp_path: Path) -> None:
    inputs = _parts_inputs(tmp_path)
    first = _parts(inputs)
    folder = Path(first.folder)
    before = _stamps(folder)
    held = {p.name for p in first.parts if "0003" in p.cases}
    assert "CT_0003-0004.zip" in held and len(held) == len(FOLDERS)

    inputs.entries = [e for e in inputs.entries if e.number != 3]  # withdrawn
    with pytest.raises(ReleaseExistsError, match="--force"):
        assemble_parts(inputs.config, inputs.entries, inputs.labels, pipeline_version="0.1.0")
    second = _parts(inputs, force=True)
    after = _stamps(folder)
    assert sorted(after) == sorted(before)  # a withdrawn case leaves its range's name as it was
    rewritten = {name for name in after if after[name] != before[name]}
    assert rewritten == held | {METADATA_ZIP, "README.md", SUMS, "CT-details.xlsx", "PT-details.xlsx"}
    assert next(p for p in second.parts if p.name == "CT_0003-0004.zip").cases == ("0004",)
    assert verify_release(folder, state_dir=_state(inputs)).ok


SUMS = "SHA256SUMS"


def test_added_cases_join_the_last_part_while_it_fits_then_a_new_one(tmp_path: Path) -> None:
    inputs = _parts_inputs(tmp_path, cases=6)
    _parts(dataclasses.replace(inputs, entries=inputs.entries[:3]))
    assert read_layout(inputs.config.release.state_dir, NAME)["CT"] == [(1, 2), (3, 3)]
    result = _parts(inputs, force=True)
    ct = [p.name for p in result.parts if p.folder == "CT"]
    assert ct == ["CT_0001-0002.zip", "CT_0003-0004.zip", "CT_0005-0006.zip"]
    assert not next(p for p in result.parts if p.name == "CT_0001-0002.zip").staged  # untouched
    assert read_layout(inputs.config.release.state_dir, NAME)["CT"] == [(1, 2), (3, 4), (5, 6)]
    assert not (Path(result.folder) / "CT_0003-0003.zip").exists()  # the grown part's old name is gone


def test_a_new_version_links_the_unchanged_parts_of_the_last_one(tmp_path: Path) -> None:
    inputs = _parts_inputs(tmp_path)
    first = _parts(inputs)
    release = dataclasses.replace(inputs.config.release, version="1.1.0")
    newer = dataclasses.replace(inputs, config=dataclasses.replace(inputs.config, release=release),
                                entries=[e for e in inputs.entries if e.number != 3])  # 0003 withdrawn
    second = _parts(newer)  # another version: no --force
    old, new = Path(first.folder), Path(second.folder)
    assert new.name == "enhance-pet-test-1.1.0" and old.is_dir()
    held = {p.name for p in first.parts if "0003" in p.cases}
    same = {p.name for p in first.parts if p.name not in held and p.name != METADATA_ZIP}
    assert same and {p.name for p in second.parts} == {p.name for p in first.parts}
    for name in same:  # byte-identical, and the very same file: nothing to upload again
        assert (new / name).stat().st_ino == (old / name).stat().st_ino
    for name in held:
        assert (new / name).read_bytes() != (old / name).read_bytes()
    assert verify_release(new, state_dir=_state(newer)).ok


def _broken(result: PartsResult, tmp_path: Path, how: str) -> Path:
    folder = tmp_path / "copy" / Path(result.folder).name
    shutil.copytree(result.folder, folder)
    if how == "missing part":
        (folder / "CT_0003-0004.zip").unlink()
    elif how == "swapped parts":  # two parts under each other's names
        (folder / "Ribs_0001-0006.zip").rename(folder / "tmp.zip")
        (folder / "Organs_0001-0006.zip").rename(folder / "Ribs_0001-0006.zip")
        (folder / "tmp.zip").rename(folder / "Organs_0001-0006.zip")
    elif how == "case missing from a category":
        part = folder / "Organs_0001-0006.zip"
        rewrite_zip(part, tmp_path / "organs.zip", replace={"imaging-data/ground-truth/Organs/0002.nii.gz": None},
                    fix_sums=False)
        shutil.move(tmp_path / "organs.zip", part)
    elif how == "member in two parts":
        shutil.copy(folder / "Organs_0001-0006.zip", folder / "Organs_0007-0007.zip")
    return folder


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("missing part", ["case 0003: missing CT", "case 0004: missing CT",
                          "CT_0003-0004.zip: listed in SHA256SUMS but not in"]),
        ("swapped parts", ["imaging-data/ground-truth/Ribs/0001.nii.gz: in Organs_0001-0006.zip, which holds Organs",
                           "Organs_0001-0006.zip: sha256", "Ribs_0001-0006.zip: sha256"]),
        ("case missing from a category", ["case 0002: missing Organs", "Organs_0001-0006.zip: sha256"]),
        ("member in two parts", ["Organs/0001.nii.gz: appears in both Organs_0001-0006.zip and Organs_0007-0007.zip",
                                 "Organs_0007-0007.zip: a part not listed in SHA256SUMS"]),
    ],
)
def test_verify_of_a_folder_catches_what_only_the_whole_shows(
    tmp_path: Path, how: str, expected: list[str]
) -> None:
    inputs = make_inputs(tmp_path, cases=6, packaging="parts", max_part_size="4KB")
    result = _parts(inputs)
    assert "Organs_0001-0006.zip" in result.hashes() and "Ribs_0001-0006.zip" in result.hashes()
    report = verify_release(_broken(result, tmp_path, how), workers=2)
    assert not report.ok
    for text in expected:
        assert any(text in problem for problem in report.problems), (text, report.problems)
    if how == "missing part":
        assert not any("appears" in p for p in report.problems)


def test_parts_that_fail_verify_are_moved_aside_and_the_published_release_stays(tmp_path: Path) -> None:
    from release.parts import quarantine_parts
    from release.verify import plan_verify_parts
    from release.verify import verify_release as verify

    inputs = _parts_inputs(tmp_path)
    first = _parts(inputs)
    before = _stamps(Path(first.folder))
    inputs.entries = [e for e in inputs.entries if e.number != 5]
    result = assemble_parts(inputs.config, inputs.entries, inputs.labels, pipeline_version="0.1.0", force=True)
    staged = next(Path(f.path) for f in result.files if f.name == "CT_0005-0006.zip")
    data = bytearray(staged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # damaged after it was written
    staged.write_bytes(bytes(data))
    plan = plan_verify_parts(inputs.config.release.parts_name,
                             {n: Path(p) for n, p in result.locations().items()})
    assert plan.parts and not verify(Path(first.folder)).problems  # the published release is still sound
    from release.verify import finish_verify, verify_chunk

    problems = finish_verify(plan, [verify_chunk(plan.job(i)) for i in range(len(plan.chunks))]).problems
    assert any(p.startswith("CT_0005-0006.zip: sha256") for p in problems)
    aside = quarantine_parts(result, inputs.config)
    assert aside == Path(first.folder).with_name("enhance-pet-test-1.0.0.failed-verify")
    assert (aside / "CT_0005-0006.zip").is_file() and not staged.parent.exists()
    assert _stamps(Path(first.folder)) == before  # the last good release stays published, untouched
