"""release.toml validation: every wrong key or value names the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from curation.config import (
    BUILTIN_LABELS,
    BUILTIN_MOOSE_TABLE,
    BUILTIN_RELEASE_TABLE,
    ConfigError,
    DatePolicy,
    DefacingSettings,
    ExecutionSettings,
    IdentityFlagPolicy,
    LossyPolicy,
    MissingHeadPolicy,
    Packaging,
    Runner,
    ScheduleSettings,
    default_config_toml,
    load_config,
    parse_size,
)

GOOD = """
[release]
name = "enhance-pet-1_6k"
version = "1.0.0"
output_dir = "dist"
state_dir = ".petct"
labels = "builtin:enhance-pet"
dates = "shift"
age_cap = 90
packaging = "single"
max_part_size = "50GB"

[defacing]
height_voxels = 16
margin_mm = 5.0
clear_labels = true

[execution]
runner = "threads"
workers = 2
dask_address = ""

[schedule]
build_cron = "0 2 * * 1"

[[site]]
id = "leipzig"
dicom_dir = "drops/leipzig"
segmentations_dir = "seg/leipzig"
lesions_dir = ""
license = "CC-BY-4.0"
deface = true
indication = "lung cancer"
clinical_sheet = ""
pseudonym_pattern = "^LEI-[0-9]{4}$"
deface_missing_head = "hold"

[[site]]
id = "vienna"
dicom_dir = "/data/vienna"
segmentations_dir = "seg/vienna"
lesions_dir = "lesions/vienna"
license = "CC-BY-NC-4.0"
deface = false
indication = "melanoma"
clinical_sheet = "clinical/vienna.csv"
deface_missing_head = "release"
lossy = "accept"
label_table = "builtin:release"
identity_removed_flag = "optional"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "release.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_good_config_resolves_paths_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.release.name == "enhance-pet-1_6k"
    assert config.release.zip_path == tmp_path / "dist" / "enhance-pet-1_6k-1.0.0.zip"
    assert config.release.state_dir == tmp_path / ".petct"
    assert config.release.labels == BUILTIN_LABELS
    assert config.execution.runner is Runner.THREADS
    assert [s.id for s in config.sites] == ["leipzig", "vienna"]
    leipzig, vienna = config.sites
    assert leipzig.dicom_dir == tmp_path / "drops" / "leipzig"
    assert leipzig.lesions_dir is None and leipzig.clinical_sheet is None
    assert vienna.dicom_dir == Path("/data/vienna")
    assert vienna.lesions_dir == tmp_path / "lesions" / "vienna"
    assert vienna.clinical_sheet == tmp_path / "clinical" / "vienna.csv"
    assert vienna.pseudonym_pattern == ""
    assert vienna.deface_missing_head is MissingHeadPolicy.RELEASE
    assert leipzig.lossy is LossyPolicy.REJECT  # the default: lossy-compressed series are rejected
    assert vienna.lossy is LossyPolicy.ACCEPT
    assert config.site("vienna") is vienna
    assert leipzig.label_table == BUILTIN_MOOSE_TABLE  # the default: maps hold MOOSE values
    assert vienna.label_table == BUILTIN_RELEASE_TABLE
    assert leipzig.identity_removed_flag is IdentityFlagPolicy.REQUIRED  # the default
    assert vienna.identity_removed_flag is IdentityFlagPolicy.OPTIONAL


def test_label_table_path_is_relative_to_the_config_and_validated(tmp_path: Path) -> None:
    (tmp_path / "tables").mkdir()
    table = tmp_path / "tables" / "site.csv"
    table.write_bytes((Path(__file__).resolve().parents[2] / "curation" / "data" / "moose_label_codes.csv").read_bytes())
    config = load_config(write(tmp_path, GOOD.replace('label_table = "builtin:release"', 'label_table = "tables/site.csv"')))
    assert config.site("vienna").label_table == str(table)
    table.write_text("model,label_name\norgans,liver\n")
    with pytest.raises(ConfigError, match=r"site\.vienna\.label_table = 'tables/site\.csv' is not allowed; "
                                          r"expected 'builtin:moose', 'builtin:release' or a path.*label_id"):
        load_config(write(tmp_path, GOOD.replace('label_table = "builtin:release"', 'label_table = "tables/site.csv"')))


def test_defaults_apply_for_optional_tables(tmp_path: Path) -> None:
    text = GOOD.split("[defacing]")[0] + "[[site]]" + GOOD.split("[[site]]")[1]
    config = load_config(write(tmp_path, text))
    assert config.defacing.height_voxels == 16
    assert config.defacing.margin_mm == 5.0
    assert config.execution.workers == 2
    assert config.schedule.build_cron == "0 2 * * 1"
    assert config.release.dates is DatePolicy.SHIFT  # the default: dates shifted per patient
    assert config.release.age_cap == 90


@pytest.mark.parametrize("policy", list(DatePolicy))
def test_date_policy_and_age_cap_are_read(tmp_path: Path, policy: DatePolicy) -> None:
    text = GOOD.replace('dates = "shift"\nage_cap = 90', f'dates = "{policy.value}"\nage_cap = 85', 1)
    config = load_config(write(tmp_path, text))
    assert config.release.dates is policy
    assert config.release.age_cap == 85


def test_default_config_text_is_what_an_absent_table_means(tmp_path: Path) -> None:
    site = "[[site]]" + GOOD.split("[[site]]")[1]
    text = default_config_toml("enhance-pet-1_6k", "1.0.0")
    assert text == GOOD.split("[[site]]")[0].lstrip("\n").rstrip("\n") + "\n"  # the keys as a steward writes them
    written = load_config(write(tmp_path, text + "\n" + site))
    (tmp_path / "bare").mkdir()
    bare = load_config(write(tmp_path / "bare", '[release]\nname = "enhance-pet-1_6k"\nversion = "1.0.0"\n' + site))
    assert (written.defacing, written.execution, written.schedule) == (
        DefacingSettings(), ExecutionSettings(), ScheduleSettings(),
    )
    assert (bare.defacing, bare.execution, bare.schedule) == (written.defacing, written.execution, written.schedule)
    assert bare.release.state_dir.name == written.release.state_dir.name == ".petct"
    assert bare.release.output_dir.name == written.release.output_dir.name == "dist"


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ('runner = "threads"', 'runner = "mpi"', r"execution\.runner = 'mpi'.*'threads' \| 'processes' \| 'dask'"),
        ("workers = 2", "workers = 0", r"execution\.workers = 0 .*from 1 to 1024"),
        ("workers = 2", "workers = true", r"execution\.workers = True"),
        ("height_voxels = 16", "height_voxels = 16.5", r"defacing\.height_voxels = 16\.5"),
        ("margin_mm = 5.0", "margin_mm = -1.0", r"defacing\.margin_mm = -1\.0"),
        ('license = "CC-BY-4.0"', 'license = "GPL"', r"site\.leipzig\.license = 'GPL'.*CC-BY-4\.0"),
        ('id = "leipzig"', 'id = "Leipzig Uni"', r"site\[0\]\.id = 'Leipzig Uni'"),
        ("deface = true", 'deface = "yes"', r"site\.leipzig\.deface = 'yes'.*true or false"),
        ('deface_missing_head = "hold"', 'deface_missing_head = "skip"', r"deface_missing_head = 'skip'.*'hold' \| 'release'"),
        ('lossy = "accept"', 'lossy = "yes"', r"site\.vienna\.lossy = 'yes'.*'reject' \| 'accept'"),
        ('lossy = "accept"', "lossy = true", r"site\.vienna\.lossy = True"),
        ('label_table = "builtin:release"', 'label_table = "builtin:totalsegmentator"',
         r"site\.vienna\.label_table = 'builtin:totalsegmentator' is not allowed; expected 'builtin:moose', "
         r"'builtin:release' or a path"),
        ('label_table = "builtin:release"', 'label_table = "missing.csv"',
         r"site\.vienna\.label_table = 'missing\.csv' is not allowed; .*missing\.csv is not a file"),
        ('label_table = "builtin:release"', "label_table = 3", r"site\.vienna\.label_table = 3 is not allowed"),
        ('identity_removed_flag = "optional"', 'identity_removed_flag = "no"',
         r"site\.vienna\.identity_removed_flag = 'no' is not allowed; expected one of 'required' \| 'optional'"),
        ('pseudonym_pattern = "^LEI-[0-9]{4}$"', 'pseudonym_pattern = "LEI-("', r"pseudonym_pattern = 'LEI-\('.*regular expression"),
        ('build_cron = "0 2 * * 1"', 'build_cron = "every monday"', r"schedule\.build_cron = 'every monday'"),
        ('name = "enhance-pet-1_6k"', 'name = "a/b"', r"release\.name = 'a/b'"),
        ('dask_address = ""', 'dask_address = "tcp://h:8786"', r"dask_address.*unless execution\.runner = 'dask'"),
        ('labels = "builtin:enhance-pet"', 'labels = "missing.json"', r"release\.labels = '.*missing\.json'"),
        ('clinical_sheet = ""', 'clinical_sheet = "sheet.pdf"', r"clinical_sheet = '.*sheet\.pdf'.*\.csv or \.xlsx"),
        ("clear_labels = true", "clear_labels = true\ncolour = 3", r"unknown key defacing\.colour = 3"),
        ('dates = "shift"', 'dates = "shifted"',
         r"release\.dates = 'shifted' is not allowed; expected one of 'shift' \| 'year' \| 'as-delivered'"),
        ('dates = "shift"', 'dates = 1',
         r"release\.dates = 1 is not allowed; expected one of 'shift'"),
        ("age_cap = 90", "age_cap = 200",
         r"release\.age_cap = 200 is not allowed; expected a whole number of years from 18 to 120"),
        ("age_cap = 90", 'age_cap = "90"',
         r"release\.age_cap = '90' is not allowed"),
        ("age_cap = 90", "age_cap = 89.5",
         r"release\.age_cap = 89\.5 is not allowed"),
    ],
)
def test_bad_values_name_key_value_and_allowed(tmp_path: Path, old: str, new: str, match: str) -> None:
    assert old in GOOD
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, GOOD.replace(old, new, 1)))


def test_missing_required_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"site\.leipzig\.dicom_dir is missing"):
        load_config(write(tmp_path, GOOD.replace('dicom_dir = "drops/leipzig"\n', "", 1)))


def test_duplicate_site_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'leipzig' is used twice"):
        load_config(write(tmp_path, GOOD.replace('id = "vienna"', 'id = "leipzig"')))


def test_unknown_site_lookup_lists_known_ids(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match=r"no \[\[site\]\] with id 'paris'.*leipzig, vienna"):
        config.site("paris")


def test_unreadable_and_invalid_toml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the configuration file"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"not valid TOML"):
        load_config(write(tmp_path, "[release\nname="))


@pytest.mark.parametrize(
    ("text", "size"),
    [("50GB", 50 * 10**9), ("500MB", 500 * 10**6), ("1.5 GiB", 3 * 2**29), ("64kb", 64_000), ("2TiB", 2 * 2**40),
     ("1B", 1)],
)
def test_part_sizes_are_decimal_units_unless_binary_ones_are_named(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_packaging_parts_and_max_part_size_are_read(tmp_path: Path) -> None:
    default = load_config(write(tmp_path, GOOD))
    assert default.release.packaging is Packaging.SINGLE
    assert default.release.max_part_size == 50 * 10**9
    assert default.release.release_path == default.release.zip_path
    text = GOOD.replace('packaging = "single"\nmax_part_size = "50GB"', 'packaging = "parts"\nmax_part_size = "500MB"', 1)
    config = load_config(write(tmp_path, text))
    assert config.release.packaging is Packaging.PARTS
    assert config.release.max_part_size == 500 * 10**6
    assert config.release.release_path == config.release.output_dir / "enhance-pet-1_6k-1.0.0"


@pytest.mark.parametrize(
    ("new", "match"),
    [
        ('packaging = "many"', r"release\.packaging = 'many' is not allowed; expected one of 'single' \| 'parts'"),
        ('max_part_size = "50 GB!"', r"release\.max_part_size = '50 GB!' is not allowed; expected a size such as '50GB'"),
        ('max_part_size = "50PB"', r"release\.max_part_size = '50PB' is not allowed; .*KiB, MiB, GiB, TiB"),
        ('max_part_size = "0MB"', r"release\.max_part_size = '0MB' is not allowed; .*at least 1 byte"),
        ("max_part_size = 50", r"release\.max_part_size = 50 is not allowed"),
    ],
)
def test_bad_packaging_values_name_the_key_and_what_is_allowed(tmp_path: Path, new: str, match: str) -> None:
    key = new.split(" = ")[0]
    old = 'packaging = "single"' if key == "packaging" else 'max_part_size = "50GB"'
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, GOOD.replace(old, new, 1)))
