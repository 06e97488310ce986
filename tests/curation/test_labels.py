"""Release label set, MOOSE source table and labels.json bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.config import ConfigError
from curation.labels import (
    LabelTableError,
    labels_json_bytes,
    load_release_labels,
    load_source_table,
)
from curation.model import CATEGORIES

SHARED_LABELS = Path(__file__).resolve().parents[2] / "curation" / "data" / "enhance_pet_labels.json"


def test_builtin_release_labels_are_the_enhance_pet_set() -> None:
    labels = load_release_labels("builtin:enhance-pet")
    assert tuple(labels.categories) == CATEGORIES
    assert labels.region_count == 130
    assert labels.values_by_name("Organs")["brain"] == 4
    assert labels.values_by_name("Peripheral-Bones")["skull"] == 23
    assert "trachea" not in labels.values_by_name("Organs")
    assert labels.categories["Vertebrae"][28] == "sacrum"


def test_labels_json_bytes_round_trip_and_numeric_order() -> None:
    labels = load_release_labels("builtin:enhance-pet")
    data = labels_json_bytes(labels)
    doc = json.loads(data)
    assert list(doc) == list(CATEGORIES)
    # numeric, not string order: "2" before "10"
    assert list(doc["Organs"])[:3] == ["1", "2", "3"] and list(doc["Organs"])[9] == "10"
    assert doc == json.loads(SHARED_LABELS.read_bytes())
    assert data.endswith(b"\n") and labels_json_bytes(load_release_labels("builtin:enhance-pet")) == data


def test_custom_labels_file_is_read_and_bytes_are_sorted(tmp_path: Path) -> None:
    doc = json.loads(SHARED_LABELS.read_bytes())
    doc["Organs"] = {"10": "liver", "2": "brain"}  # shuffled, a subset
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(doc))
    labels = load_release_labels(str(path))
    assert labels.categories["Organs"] == {2: "brain", 10: "liver"}
    assert list(labels.categories["Organs"]) == [2, 10]
    assert json.loads(labels_json_bytes(labels))["Organs"] == {"2": "brain", "10": "liver"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("Ribs"), r"missing \['Ribs'\]"),
        (lambda d: d.update(Extra={"1": "x"}), r"unexpected \['Extra'\]"),
        (lambda d: d["Organs"].update({"256": "x"}), r"Organs value '256' is not allowed"),
        (lambda d: d["Organs"].update({"0": "x"}), r"Organs value '0' is not allowed"),
        (lambda d: d["Organs"].update({"x1": "x"}), r"Organs value 'x1' is not allowed"),
        (lambda d: d["Cardiac"].update({"99": "aorta"}), r"Cardiac name 'aorta' is used twice \(values 6 and 99\)"),
        (lambda d: d["Cardiac"].update({"99": ""}), r"Cardiac value 99: name '' must be a non-empty"),
        (lambda d: d.update(Muscles={}), r"category 'Muscles' must be a non-empty object"),
    ],
)
def test_bad_labels_file_names_file_and_entry(tmp_path: Path, edit, message: str) -> None:
    doc = json.loads(SHARED_LABELS.read_bytes())
    edit(doc)
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(LabelTableError, match=message) as info:
        load_release_labels(str(path))
    assert str(path) in str(info.value)
    assert isinstance(info.value, ConfigError)  # the CLI reports it like any config error


def test_unreadable_labels_file(tmp_path: Path) -> None:
    with pytest.raises(LabelTableError, match="cannot read the labels file"):
        load_release_labels(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LabelTableError, match=r"bad\.json: not valid UTF-8 JSON"):
        load_release_labels(str(bad))


def test_moose_table_maps_models_to_categories() -> None:
    table = load_source_table()
    assert set(table.categories) == set(CATEGORIES)
    assert table.names("Organs")[19] == "trachea"
    assert table.names("Organs")[4] == "brain"
    assert table.names("Peripheral-Bones")[23] == "skull"
    assert table.names("Body-Composition") == {1: "skeletal_muscle", 2: "subcutaneous_fat", 3: "visceral_fat"}
    assert len(table.names("Ribs")) == 27 and len(table.names("Vertebrae")) == 28
    # models without a release category (fat_old, digestive, ...) are not read
    assert "spinal_chord" not in {n for c in CATEGORIES for n in table.names(c).values()}
    assert len(table.digest) == 64


def test_custom_source_table_and_its_errors(tmp_path: Path) -> None:
    rows = ["model,label_name,label_id"] + [f"{c},{c.lower()}_x,1" for c in CATEGORIES]
    path = tmp_path / "codes.csv"
    path.write_text("\n".join([*rows, "clin_ct_organs,liver,7"]) + "\n")
    table = load_source_table(path)
    assert table.names("Organs") == {1: "organs_x", 7: "liver"}
    assert table.source == str(path)

    path.write_text("\n".join([*rows, "organs,liver,300"]) + "\n")
    with pytest.raises(LabelTableError, match=r"codes\.csv: line 9: label_id '300' of model 'organs'"):
        load_source_table(path)
    path.write_text("\n".join([*rows, "organs,liver,1"]) + "\n")
    with pytest.raises(LabelTableError, match=r"model 'organs' value 1 is given twice \('organs_x' and 'liver'\)"):
        load_source_table(path)
    path.write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(LabelTableError, match=r"no rows for the categories \['Vertebrae'\]"):
        load_source_table(path)
    path.write_text("model,name,id\n")
    with pytest.raises(LabelTableError, match="expected columns"):
        load_source_table(path)


def test_display_colours_from_the_recommended_rgb_column(tmp_path: Path) -> None:
    moose = load_source_table()
    # every MOOSE label of a release category carries its colour, keyed by name
    assert {c: set(moose.colours[c]) for c in CATEGORIES} == {
        c: set(moose.names(c).values()) for c in CATEGORIES
    }
    assert moose.colour_of("Organs", "brain") == (250, 250, 225)
    assert moose.colour_of("Ribs", "rib_left_1") == (0, 2, 145)
    assert moose.colour_of("Organs", "no_such_label") is None

    # a table without the column has no colours; an empty cell is no colour; a bad one names line and value
    rows = ["model,label_name,label_id"] + [f"{c},{c.lower()}_x,1" for c in CATEGORIES]
    path = tmp_path / "codes.csv"
    path.write_text("\n".join(rows) + "\n")
    assert load_source_table(path).colours == {}
    coloured = ["model,label_name,label_id,recommendedDisplayRGBValue"] + [f"{r},\"[1, 2, 3]\"" for r in rows[1:]]
    path.write_text("\n".join([*coloured, "organs,liver,7,"]) + "\n")
    table = load_source_table(path)
    assert table.colour_of("Organs", "organs_x") == (1, 2, 3) and table.colour_of("Organs", "liver") is None
    path.write_text("\n".join([*coloured, 'organs,liver,7,"[1, 2, 256]"']) + "\n")
    with pytest.raises(LabelTableError, match=r"line 9: recommendedDisplayRGBValue '\[1, 2, 256\]' is not \[r, g, b\]"):
        load_source_table(path)
