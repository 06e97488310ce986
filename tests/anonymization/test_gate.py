"""The de-identification gate: every rule row, real identifiers (deid-data), phantoms."""

from __future__ import annotations

import contextlib
import copy
import csv
import datetime as dt
import functools
import io
import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

import anonymization.gate as gate_module
from anonymization.gate import (
    CSV_COLUMNS,
    OPTION_COLUMNS,
    PRIVATE_DEFAULT_TAG,
    SOURCE_STANDARD,
    STANDARD_RESOURCE,
    GateAction,
    GateReport,
    GateRule,
    allowed_actions,
    check_datasets,
    iter_rules,
    parse_profile,
    raise_for_findings,
)
from curation.errors import BurnedInAnnotationError, PHIDetectedError, RejectReason

RULES = iter_rules()
SITE_PATTERN = r"^SITE-\d{4}$"


def _no_value_anywhere(report: GateReport, values: list[str], message: str = "") -> None:
    """Findings (every field) and the error message never carry a planted value."""
    text = repr(report.findings) + repr(report.private_review) + message
    for value in values:
        assert value not in text, f"value {value!r} leaked into the findings or the message"


def _message_of(report: GateReport) -> str:
    try:
        raise_for_findings(report)
    except (PHIDetectedError, BurnedInAnnotationError) as exc:
        return exc.message
    return ""


# ---------------------------------------------------------------------------
# the table itself


def _standard_json() -> list[dict[str, str]]:
    from importlib import resources

    text = resources.files("anonymization").joinpath("data", STANDARD_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


def test_table_has_every_row_of_e1_1_2024b_with_its_actions() -> None:
    """Every row of PS3.15 2024b Table E.1-1, with the standard's basic and option actions, nothing else."""
    standard = _standard_json()
    assert len(standard) == 621
    rows = [r for r in RULES if r.source == SOURCE_STANDARD]
    assert len(rows) == 621
    by_tag = {r.tag: r for r in rows}
    for entry in standard:
        tag = PRIVATE_DEFAULT_TAG if entry["tag"].startswith("(GGGG,EEEE)") else entry["tag"].replace("X", "x")
        rule = by_tag[tag]
        assert rule.name == " ".join(entry["name"].split()), tag
        assert rule.basic_profile == entry["basicProfile"], tag
        for column in OPTION_COLUMNS:
            assert rule.option(column) == entry.get(column, ""), (tag, column)
        assert rule.action in allowed_actions(rule), rule
    project = [r for r in RULES if r.source != SOURCE_STANDARD]
    assert {r.keyword for r in project if not r.creator} == {
        "PatientIdentityRemoved", "BurnedInAnnotation", "DeidentificationMethod",
        "DeidentificationMethodCodeSequence", "LongitudinalTemporalInformationModified",
    }
    assert all(not r.basic_profile and not r.options_text() for r in project)


def test_table_is_the_full_profile_with_real_reasons() -> None:
    actions = {r.action for r in RULES}
    assert actions == set(GateAction)
    for rule in RULES:
        assert rule.reason.endswith(".") and len(rule.reason.split()) >= 8, rule
        if not rule.creator and "x" not in rule.tag and rule.tag != PRIVATE_DEFAULT_TAG:
            tag = int(rule.tag[1:5] + rule.tag[6:10], 16)
            assert keyword_for_tag(tag) == rule.keyword, rule
    by_keyword = {r.keyword: r.action for r in RULES if not r.creator}
    # the options: characteristics, dates, device identity kept; people and places not
    for keyword in ("PatientSex", "PatientAge", "PatientWeight", "PatientSize", "StudyDate", "AcquisitionTime",
                    "StationName", "DeviceSerialNumber", "EthnicGroup", "RadiopharmaceuticalStartDateTime",
                    "DecayCorrectionDateTime", "FrameReferenceDateTime", "ContrastBolusStartTime"):
        assert by_keyword[keyword] is GateAction.RETAIN, keyword
    for keyword in ("PatientBirthDate", "OtherPatientIDs", "AccessionNumber", "ReferringPhysicianName",
                    "PerformingPhysicianName", "OperatorsName", "InstitutionAddress", "InstitutionalDepartmentName",
                    "PatientAddress", "PatientTelephoneNumbers", "MedicalRecordLocator", "MilitaryRank",
                    "BranchOfService", "CountryOfResidence", "RegionOfResidence", "PatientMotherBirthName",
                    "Occupation", "AdditionalPatientHistory", "PatientComments", "RequestAttributesSequence",
                    "ReferringPhysicianIdentificationSequence", "OtherPatientNames", "ContributionDescription",
                    "RetrieveAETitle", "StationAETitle", "PerformedStationAETitle", "AcquisitionContextSequence"):
        assert by_keyword[keyword] is GateAction.MUST_BE_EMPTY, keyword
    safe = {(r.creator, r.tag) for r in RULES if r.action is GateAction.RETAIN and r.creator}
    assert safe == {("Philips PET Private Group", "(7053,xx00)"), ("Philips PET Private Group", "(7053,xx09)")}


@pytest.mark.parametrize(
    ("tag", "keyword", "basic", "options", "action"),
    [
        ("(0010,0030)", "PatientBirthDate", "Z", {}, "retain"),  # nothing keeps a birth date
        ("(0008,0055)", "StationAETitle", "X", {"rtnDevIdOpt": "C"}, "retain"),  # C: cleaned, not kept
        ("(0018,A003)", "ContributionDescription", "X", {"cleanDescOpt": "C"}, "retain"),
        ("(0008,0050)", "AccessionNumber", "Z", {}, "descriptor"),  # no Clean Descriptors column
        ("(0010,1000)", "OtherPatientIDs", "X", {}, "pseudonym"),  # X allows no dummy
        ("(0010,1002)", "OtherPatientIDsSequence", "X", {}, "uid"),
    ],
)
def test_parse_profile_refuses_an_action_weaker_than_the_standard(
    tag: str, keyword: str, basic: str, options: dict[str, str], action: str
) -> None:
    row = {"tag": tag, "creator": "", "keyword": keyword, "source": SOURCE_STANDARD, "basicProfile": basic,
           **options, "action": action, "reason": "r."}
    with pytest.raises(ValueError, match=rf"line 2: \{tag[:5]}.*{keyword}: action '{action}' is weaker than "
                                         r"PS3.15 2024b allows"):
        parse_profile([row])
    parse_profile([{**row, "action": "must-be-empty"}])  # stricter is always allowed


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"tag": "(0010,0030)", "creator": "", "keyword": "PatientBirthDate", "action": "erase", "reason": "r."},
         "action 'erase' is not one of"),
        ({"tag": "(0010,003)", "creator": "", "keyword": "PatientBirthDate", "action": "retain", "reason": "r."},
         "is not of the form"),
        ({"tag": "(0010,0030)", "creator": "", "keyword": "PatientBirthDate", "action": "retain", "reason": ""},
         "must not be empty"),
        ({"tag": "(0008,xx03)", "creator": "X", "keyword": "K", "action": "retain", "reason": "r."},
         "odd group"),
    ],
)
def test_parse_profile_names_the_bad_row(row: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=rf"line 2: .*{message}"):
        parse_profile([row])


def test_parse_profile_refuses_duplicates() -> None:
    row = {"tag": "(0010,0030)", "creator": "", "keyword": "PatientBirthDate", "action": "retain", "reason": "r."}
    with pytest.raises(ValueError, match=r"line 3: duplicate rule \(0010,0030\)"):
        parse_profile([row, dict(row)])


def test_packaged_csv_is_readable_by_a_steward() -> None:
    from importlib import resources

    text = resources.files("anonymization").joinpath("data", "deid_profile.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert list(rows[0])[:6] == ["tag", "creator", "keyword", "name", "source", "basicProfile"]
    assert len(rows) == len(RULES) == 621 + 34
    assert {r["source"] for r in rows} == {"PS3.15 2024b E.1-1", "petct-release"}  # the edition, in the data
    assert "2024b" in gate_module.__doc__ and "Table E.1-1" in gate_module.__doc__


# ---------------------------------------------------------------------------
# every rule row fires on a planted value


def _rule_tag(rule: GateRule) -> int:
    if rule.tag == PRIVATE_DEFAULT_TAG:
        return 0x00431010  # a private element of a creator without rows of its own (see _plant)
    group, element = rule.tag[1:5], rule.tag[6:10]
    if group == "50xx":
        return 0x50003000  # Curve Data in the first curve group
    group = group.replace("xx", "00")
    element = element.replace("xx", "10")  # private rows: block 0x10
    return int(group + element, 16)


def _planted(vr: str, n: int) -> tuple[object, list[str]]:
    """A value of VR ``vr`` and the strings the gate should collect from it."""
    text = f"PLANTED{n:03d}"
    if vr == "PN":
        return f"Plantedname{n:03d}^Given", [f"Plantedname{n:03d}^Given"]
    if vr in ("LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE"):
        return text, [text]
    if vr == "UR":
        return f"http://planted.example/{n}", [f"http://planted.example/{n}"]
    if vr == "DA":
        return f"1941{n % 12 + 1:02d}07", [f"1941{n % 12 + 1:02d}07"]
    if vr == "TM":
        return "101010", ["101010"]
    if vr == "DT":
        return f"1941120710{n % 60:02d}00", [f"1941120710{n % 60:02d}00"]
    if vr == "AS":
        return "077Y", ["077Y"]
    if vr == "UI":
        return f"2.25.98765432198765{n:04d}", [f"2.25.98765432198765{n:04d}"]
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        return 7000 + n, [str(7000 + n)]
    if vr in ("FL", "FD"):
        return 7000.5 + n, [str(7000.5 + n)]
    if vr == "DS":
        return f"{7000 + n}.5", [f"{7000 + n}.5"]
    if vr == "IS":
        return str(7000 + n), [str(7000 + n)]
    if vr == "AT":
        return 0x00100010, []
    if vr == "SQ":
        item = Dataset()
        item.CodeValue = text
        item.CodeMeaning = f"planted meaning {n}"
        item.ReferencedSOPInstanceUID = f"2.25.55555555555555{n:04d}"
        return DicomSequence([item]), [text, f"2.25.55555555555555{n:04d}"]
    return text.encode("ascii") + (b" " if len(text) % 2 else b""), [text]  # OB, OW, UN, ...


def _vr_of(rule: GateRule, tag: int) -> str:
    if rule.tag == PRIVATE_DEFAULT_TAG:
        return "LO"
    if rule.creator:
        from pydicom._private_dict import private_dictionaries

        entry = private_dictionaries.get(rule.creator, {}).get(f"{tag >> 16:04X}xx{tag & 0xFF:02X}")
        return entry[0] if entry else "LO"
    return dictionary_VR(tag).split(" or ")[0]


def _plant(ds: Dataset, rule: GateRule, n: int) -> tuple[int, object, list[str]]:
    tag = _rule_tag(rule)
    vr = _vr_of(rule, tag)
    if rule.action is GateAction.MUST_BE_YES:
        value, strings = "NO", []
    elif rule.action is GateAction.BURNED_IN:
        value, strings = "YES", []
    else:
        value, strings = _planted(vr, n)
    if rule.creator or rule.tag == PRIVATE_DEFAULT_TAG:
        block = ds.private_block(tag >> 16, rule.creator or "SOME VENDOR 1.0", create=True)
        block.add_new(tag & 0xFF, vr, value)
        tag = int(block.get_tag(tag & 0xFF))
    else:
        ds.add_new(tag, vr, value)
    return tag, value, strings


@pytest.mark.parametrize("number", range(len(RULES)), ids=[f"{r.tag}{r.creator}-{r.keyword}" for r in RULES])
def test_every_rule_row_fires_on_a_planted_value(number: int, make_clean_ds: Callable[[], Dataset]) -> None:
    rule = RULES[number]
    ds = make_clean_ds()
    assert check_datasets([ds], pseudonym_pattern=SITE_PATTERN).findings == ()
    tag, _value, strings = _plant(ds, rule, number)
    report = check_datasets([ds], pseudonym_pattern=SITE_PATTERN)
    tag_text = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    flagged = [f for f in report.findings if f.tag == tag_text]
    if rule.action in (GateAction.MUST_BE_EMPTY, GateAction.PSEUDONYM, GateAction.MUST_BE_YES):
        assert len(flagged) == 1, report.findings
        finding = flagged[0]
        assert rule.keyword in finding.keyword
        assert finding.rule == rule.action.value
        assert finding.reason_code is RejectReason.PHI_DETECTED
        message = _message_of(report)
        assert tag_text in message and rule.keyword in message
        _no_value_anywhere(report, strings, message)
        assert set(strings) <= report.sensitive_values  # for the leak scan
    elif rule.action is GateAction.BURNED_IN:
        assert [(f.tag, f.reason_code) for f in report.findings] == [(tag_text, RejectReason.BURNED_IN_ANNOTATION)]
        with pytest.raises(BurnedInAnnotationError, match=r"\(0028,0301\) BurnedInAnnotation"):
            raise_for_findings(report)
    elif rule.action is GateAction.UID:
        assert report.findings == ()
        uids = [s for s in strings if s.startswith("2.25.")]
        assert uids and set(uids) <= report.sensitive_values
    elif rule.action is GateAction.REVIEW:
        assert report.findings == ()
        creator = rule.creator or "SOME VENDOR 1.0"
        assert f"({tag >> 16:04X},xx{tag & 0xFF:02X}) creator {creator!r}" in report.private_review
    else:  # retain, descriptor: allowed, and not collected (shifted dates would be false leak alarms)
        assert report.findings == ()
        assert not (set(strings) - {s for s in strings if s.startswith("2.25.")}) & report.sensitive_values


# ---------------------------------------------------------------------------
# rows the ~400-row table did not have (issue 9): each attack is stopped now


def _contributing_equipment(**attributes: object) -> DicomSequence:
    """A ContributingEquipmentSequence item (where real files carry the Contribution attributes)."""
    item = Dataset()
    item.Manufacturer = "ACME"
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return DicomSequence([item])


def _acquisition_context() -> DicomSequence:
    item = Dataset()
    item.ValueType = "TEXT"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "121106", "DCM", "Comment"
    item.ConceptNameCodeSequence = DicomSequence([concept])
    item.TextValue = "Injected by Dr. Hans Mueller, ward 4B"
    return DicomSequence([item])


#: keyword -> (tag, how to plant it, the identifying strings planted)
NEW_IDENTIFYING_ROWS: dict[str, tuple[str, Callable[[Dataset], None], list[str]]] = {
    "RetrieveAETitle": ("(0008,0054)", lambda ds: setattr(ds, "RetrieveAETitle", "UKL_PACS_MAIN"),
                        ["UKL_PACS_MAIN"]),
    "StationAETitle": ("(0008,0055)", lambda ds: setattr(ds, "StationAETitle", "UKL_PETCT_NUK1"),
                       ["UKL_PETCT_NUK1"]),
    "ContributionDescription": (
        "(0018,A003)",
        lambda ds: setattr(ds, "ContributingEquipmentSequence",
                           _contributing_equipment(ContributionDescription="Dr. Hans Mueller, reconstruction")),
        ["Dr. Hans Mueller, reconstruction"],
    ),
    "AcquisitionContextSequence": (
        "(0040,0555)", lambda ds: setattr(ds, "AcquisitionContextSequence", _acquisition_context()),
        ["Injected by Dr. Hans Mueller, ward 4B"],
    ),
}


def _written(ds: Dataset, folder: Path) -> Dataset:
    """``ds`` written to a DICOM file by pydicom and read back (raw elements, as ingest sees them)."""
    path = folder / "instance.dcm"
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


@pytest.mark.parametrize("keyword", sorted(NEW_IDENTIFYING_ROWS))
def test_rows_new_in_the_full_table_quarantine_their_identifiers(
    keyword: str, clean_ds: Dataset, tmp_path: Path
) -> None:
    tag, plant, planted = NEW_IDENTIFYING_ROWS[keyword]
    assert check_datasets([clean_ds], pseudonym_pattern=SITE_PATTERN).findings == ()
    plant(clean_ds)
    report = check_datasets([_written(clean_ds, tmp_path)], pseudonym_pattern=SITE_PATTERN)
    assert [(f.tag, f.keyword, f.rule, f.reason_code) for f in report.findings] == [
        (tag, keyword, "must-be-empty", RejectReason.PHI_DETECTED)
    ]
    assert set(planted) <= report.sensitive_values
    with pytest.raises(PHIDetectedError, match=rf"\{tag[:5]}.*{keyword} \[must-be-empty\]") as info:
        raise_for_findings(report, context="study 2.25.1002")
    _no_value_anywhere(report, planted, info.value.message)


#: date and time rows E.1-1 has and the old table did not: keyword -> (tag, VR, a real value)
NEW_TEMPORAL_ROWS: dict[str, tuple[str, str, str]] = {
    "DecayCorrectionDateTime": ("(0018,9701)", "DT", "20210304094500"),
    "FrameAcquisitionDateTime": ("(0018,9074)", "DT", "20210304101512.250000"),
    "FrameReferenceDateTime": ("(0018,9151)", "DT", "20210304101500"),
    "ContrastBolusStartTime": ("(0018,1042)", "TM", "100512"),
    "ContrastBolusStopTime": ("(0018,1043)", "TM", "100547.5"),
    "ContributionDateTime": ("(0018,A002)", "DT", "20210304120000+0100"),
    "SubstanceAdministrationDateTime": ("(0044,0010)", "DT", "20210304091000"),
}


def _plant_temporal(ds: Dataset, keyword: str, value: str) -> None:
    if keyword == "ContributionDateTime":  # where real files carry it
        ds.ContributingEquipmentSequence = _contributing_equipment(ContributionDateTime=value)
    elif keyword in ("FrameAcquisitionDateTime", "FrameReferenceDateTime"):
        frame = Dataset()
        setattr(frame, keyword, value)
        group = Dataset()
        group.FrameContentSequence = DicomSequence([frame])
        ds.PerFrameFunctionalGroupsSequence = DicomSequence([group])
    else:
        setattr(ds, keyword, value)


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # the planted text, written as it arrives
@pytest.mark.parametrize("keyword", sorted(NEW_TEMPORAL_ROWS))
def test_new_date_rows_are_kept_as_dates_and_quarantine_text(
    keyword: str, make_clean_ds: Callable[[], Dataset], tmp_path: Path
) -> None:
    """Dates are kept (Retain Longitudinal Temporal Information, full dates; the release applies the
    date policy), but a date or time element that carries text is ``phi-detected``."""
    tag, vr, real = NEW_TEMPORAL_ROWS[keyword]
    rule = next(r for r in RULES if r.keyword == keyword and not r.creator)
    assert (rule.tag, rule.action, rule.option("rtnLongFullDatesOpt")) == (tag, GateAction.RETAIN, "K")
    assert dictionary_VR(int(tag[1:5] + tag[6:10], 16)) == vr

    dated = make_clean_ds()
    _plant_temporal(dated, keyword, real)
    report = check_datasets([_written(dated, tmp_path)], pseudonym_pattern=SITE_PATTERN)
    assert report.findings == ()
    assert real not in report.sensitive_values  # dates go to the separate date list at ingest

    named = make_clean_ds()
    _plant_temporal(named, keyword, "Dr. Mueller")
    report = check_datasets([_written(named, tmp_path)], pseudonym_pattern=SITE_PATTERN)
    assert [(f.tag, f.keyword, f.rule, f.reason_code) for f in report.findings] == [
        (tag, keyword, "temporal-text", RejectReason.PHI_DETECTED)
    ]
    assert "Dr. Mueller" in report.sensitive_values
    with pytest.raises(PHIDetectedError, match=rf"{keyword} \[temporal-text\]") as info:
        raise_for_findings(report)
    _no_value_anywhere(report, ["Mueller"], info.value.message)


def test_a_private_element_without_a_row_follows_the_private_attributes_row() -> None:
    """E.1-1's Private Attributes row decides for unknown private elements: review, or refuse."""
    base = {"creator": "", "source": SOURCE_STANDARD, "basicProfile": "X", "rtnSafePrivOpt": "C",
            "keyword": "PrivateAttributes", "reason": "r."}
    listed = parse_profile([{**base, "tag": "(GGGG,EEEE)", "action": "review"}])
    refused = parse_profile([{**base, "tag": "(gggg,eeee)", "action": "must-be-empty"}])
    assert listed.private_default is not None and listed.private_default.action is GateAction.REVIEW
    assert refused.private_default is not None and refused.private_default.action is GateAction.MUST_BE_EMPTY
    with pytest.raises(ValueError, match=r"action 'retain' is weaker than PS3.15 2024b allows"):
        parse_profile([{**base, "tag": "(GGGG,EEEE)", "action": "retain"}])
    packaged = next(r for r in RULES if r.tag == PRIVATE_DEFAULT_TAG)
    assert packaged.action is GateAction.REVIEW


# ---------------------------------------------------------------------------
# cross-check with an independent transcription: dicom-anonymizer's 2024b lists (PyPI, pinned)

#: dicom-anonymizer's list -> the basic-profile action it implements
ANONYMIZER_LISTS = {
    "D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*",
}


def _anonymizer_tag(tag: tuple[int, ...]) -> str:
    """Our tag text of a dicom-anonymizer tag (masked repeating groups become ``50xx`` / ``xxxx``)."""
    if len(tag) == 2:
        return f"({tag[0]:04X},{tag[1]:04X})"
    group, element, group_mask, element_mask = tag
    assert group_mask == 0xFF00, tag
    return f"({group >> 8:02X}xx,{'xxxx' if element_mask == 0 else f'{element:04X}'})"


def _lets_a_value_through_without_cause(rule: GateRule, basic: str) -> bool:
    """True when the gate would accept a value that neither the profile nor an option we apply allows.

    What dicom-anonymizer does per list: X removes, Z empties, D puts a dummy, U
    replaces a UID.  The gate may be stricter (must-be-empty); it may accept a
    value only with a cause in the standard: an applied option keeps it (K),
    it is a UID (collected and scanned for), the profile allows a dummy (the
    site's pseudonym; a sequence of references), or the Clean Descriptors
    Option would keep a cleaned description.
    """
    action = rule.action
    if action is GateAction.MUST_BE_EMPTY:
        return False
    if action is GateAction.RETAIN:
        return not rule.kept_by_an_option
    if action is GateAction.UID:
        sequence = "x" not in rule.tag and dictionary_VR(int(rule.tag[1:5] + rule.tag[6:10], 16)) == "SQ"
        return not ("U" in basic or rule.kept_by_an_option or (sequence and ("Z" in basic or "D" in basic)))
    if action is GateAction.PSEUDONYM:
        return not ("Z" in basic or "D" in basic)
    if action is GateAction.DESCRIPTOR:
        return rule.clean_desc != "C"
    return True  # must-be-yes, burned-in, review: not actions for a row of E.1-1


def test_every_tag_of_dicom_anonymizer_2024b_has_a_row_with_a_compatible_action(
    dicom_anonymizer_2024b: dict[str, list[tuple[int, ...]]],
) -> None:
    assert set(dicom_anonymizer_2024b) == set(ANONYMIZER_LISTS)
    by_tag = {r.tag: r for r in RULES if not r.creator}
    theirs: dict[str, str] = {}
    for name, tags in dicom_anonymizer_2024b.items():
        for tag in tags:
            theirs[_anonymizer_tag(tag)] = ANONYMIZER_LISTS[name]
    assert len(theirs) == 620  # E.1-1 2024b without its "Private Attributes" row
    missing = sorted(set(theirs) - set(by_tag))
    assert missing == [], f"tags of dicom-anonymizer's 2024b lists without a row: {missing}"
    differ = [(t, b, by_tag[t].basic_profile) for t, b in sorted(theirs.items()) if by_tag[t].basic_profile != b]
    assert differ == [], f"basic-profile actions that differ from dicom-anonymizer's: {differ}"
    loose = [(t, by_tag[t].keyword, by_tag[t].action.value) for t, b in sorted(theirs.items())
             if _lets_a_value_through_without_cause(by_tag[t], b)]
    assert loose == [], f"rows that let a value through the profile removes: {loose}"
    ours = {r.tag for r in RULES if r.source == SOURCE_STANDARD and r.tag != PRIVATE_DEFAULT_TAG}
    assert ours == set(theirs)


# ---------------------------------------------------------------------------
# individual behaviours


def test_pseudonym_pattern_accepts_the_site_pseudonym_and_refuses_a_name(
    clean_ds: Dataset, make_clean_ds: Callable[[], Dataset]
) -> None:
    assert check_datasets([clean_ds], pseudonym_pattern=SITE_PATTERN).findings == ()
    named = make_clean_ds()
    named.PatientName = "Mustermann^Erika"
    named.PatientID = "4471920"
    report = check_datasets([named], pseudonym_pattern=SITE_PATTERN)
    assert [(f.tag, f.keyword, f.rule) for f in report.findings] == [
        ("(0010,0010)", "PatientName", "pseudonym"),
        ("(0010,0020)", "PatientID", "pseudonym"),
    ]
    assert {"Mustermann^Erika", "Mustermann", "Erika", "4471920"} <= report.sensitive_values
    with pytest.raises(PHIDetectedError, match=r"\(0010,0010\) PatientName \[pseudonym\]") as info:
        raise_for_findings(report, context="study 2.25.1002")
    assert info.value.message.startswith("study 2.25.1002: ")
    _no_value_anywhere(report, ["Mustermann", "Erika", "4471920"], info.value.message)


def test_without_a_pattern_only_a_family_given_name_is_refused(make_clean_ds: Callable[[], Dataset]) -> None:
    pseudonym = make_clean_ds()
    pseudonym.PatientName = "XY-77"
    assert check_datasets([pseudonym]).findings == ()
    empty_given = make_clean_ds()
    empty_given.PatientName = "Anonymous^^"
    assert check_datasets([empty_given]).findings == ()
    real = make_clean_ds()
    real.PatientName = "Mustermann^Erika"
    assert [f.keyword for f in check_datasets([real]).findings] == ["PatientName"]


def test_empty_pseudonyms_pass_even_with_a_pattern(clean_ds: Dataset) -> None:
    ds = clean_ds
    ds.PatientName = ""
    ds.PatientID = ""
    assert check_datasets([ds], pseudonym_pattern=SITE_PATTERN).findings == ()


def test_invalid_pattern_is_a_caller_error(clean_ds: Dataset) -> None:
    with pytest.raises(ValueError, match=r"pseudonym_pattern '\(' is not a valid regular expression"):
        check_datasets([clean_ds], pseudonym_pattern="(")


@pytest.mark.parametrize("value", [None, "NO", ""])
def test_patient_identity_removed_missing_or_no_is_refused(value: str | None, clean_ds: Dataset) -> None:
    ds = clean_ds
    if value is None:
        del ds.PatientIdentityRemoved
    else:
        ds.PatientIdentityRemoved = value
    report = check_datasets([ds], pseudonym_pattern=SITE_PATTERN)
    assert [(f.tag, f.keyword, f.rule) for f in report.findings] == [
        ("(0012,0062)", "PatientIdentityRemoved", "must-be-yes")
    ]
    with pytest.raises(PHIDetectedError, match="PatientIdentityRemoved"):
        raise_for_findings(report)


def test_burned_in_annotation_yes_is_its_own_reason(clean_ds: Dataset) -> None:
    ds = clean_ds
    ds.BurnedInAnnotation = "YES"
    report = check_datasets([ds], pseudonym_pattern=SITE_PATTERN)
    assert [f.reason_code for f in report.findings] == [RejectReason.BURNED_IN_ANNOTATION]
    with pytest.raises(BurnedInAnnotationError, match=r"burned-in annotation declared: \(0028,0301\)"):
        raise_for_findings(report)
    ds.OtherPatientIDs = "MRN-1234567"  # PHI and burned-in together: PHI wins, both named
    report = check_datasets([ds], pseudonym_pattern=SITE_PATTERN)
    with pytest.raises(PHIDetectedError, match=r"OtherPatientIDs.*also \(0028,0301\) BurnedInAnnotation"):
        raise_for_findings(report)


def test_nested_sequences_are_walked(clean_ds: Dataset) -> None:
    ds = clean_ds
    inner = Dataset()
    inner.OperatorsName = "Nested^Operator"
    inner.ReferencedSOPInstanceUID = "2.25.424242"
    outer = Dataset()
    outer.RadiopharmaceuticalInformationSequence = DicomSequence([inner])  # a sequence in a sequence
    ds.DeidentificationMethodCodeSequence = DicomSequence([outer])
    report = check_datasets([ds], pseudonym_pattern=SITE_PATTERN)
    assert [(f.tag, f.keyword) for f in report.findings] == [("(0008,1070)", "OperatorsName")]
    assert {"Nested^Operator", "2.25.424242"} <= report.sensitive_values


def test_private_rules_go_by_creator_not_by_element_number(make_clean_ds: Callable[[], Dataset]) -> None:
    ds = make_clean_ds()
    ge = ds.private_block(0x0009, "GEMS_PETD_01", create=True)
    ge.add_new(0x02, "LO", "SCANNER-PID-99812")
    other = make_clean_ds()
    vendor = other.private_block(0x0009, "SOME OTHER VENDOR", create=True)
    vendor.add_new(0x02, "LO", "SCANNER-PID-99812")
    report = check_datasets([ds], pseudonym_pattern=SITE_PATTERN)
    assert [(f.tag, f.keyword) for f in report.findings] == [("(0009,1002)", "GEMS_PETD_01:PETPatientID")]
    assert "SCANNER-PID-99812" in report.sensitive_values
    other_report = check_datasets([other], pseudonym_pattern=SITE_PATTERN)
    assert other_report.findings == ()
    assert other_report.private_review == ("(0009,xx02) creator 'SOME OTHER VENDOR'",)


def test_philips_safe_private_factors_pass_and_file_names_do_not(clean_ds: Dataset) -> None:
    ds = clean_ds
    block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
    block.add_new(0x00, "DS", "0.000123")
    block.add_new(0x09, "DS", "1")
    report = check_datasets([ds], pseudonym_pattern=SITE_PATTERN)
    assert report.findings == () and report.private_review == ()
    block.add_new(0x03, "ST", "C:/data/MUELLER_HANS_19580312.img")
    report = check_datasets([ds], pseudonym_pattern=SITE_PATTERN)
    assert [(f.tag, f.keyword) for f in report.findings] == [
        ("(7053,1003)", "Philips PET Private Group:OriginalImageFileName")
    ]
    _no_value_anywhere(report, ["MUELLER"], _message_of(report))


def test_unknown_private_person_name_is_refused_and_other_private_data_listed(clean_ds: Dataset) -> None:
    ds = clean_ds
    block = ds.private_block(0x0035, "ACME PACS 2.0", create=True)
    block.add_new(0x01, "PN", "Doctor^Who")
    block.add_new(0x02, "DS", "3.5")
    report = check_datasets([ds], pseudonym_pattern=SITE_PATTERN)
    assert [(f.tag, f.rule) for f in report.findings] == [("(0035,1001)", "private-person-name")]
    assert report.private_review == ("(0035,xx02) creator 'ACME PACS 2.0'",)


def test_findings_are_deduplicated_across_instances(make_clean_ds: Callable[[], Dataset]) -> None:
    datasets = []
    for k in range(5):
        ds = make_clean_ds()
        ds.SOPInstanceUID = f"2.25.77{k}"
        ds.AccessionNumber = "ACC-0099123"
        datasets.append(ds)
    report = check_datasets(datasets, pseudonym_pattern=SITE_PATTERN)
    assert [(f.tag, f.keyword) for f in report.findings] == [("(0008,0050)", "AccessionNumber")]
    assert {f"2.25.77{k}" for k in range(5)} <= report.sensitive_values
    assert "ACC-0099123" in report.sensitive_values
    assert not any(v.startswith("1.2.840.10008.") for v in report.sensitive_values)  # public DICOM UIDs


def test_datasets_are_not_modified(clean_ds: Dataset) -> None:
    clean_ds.AccessionNumber = "ACC-0099123"
    before = repr(clean_ds)
    check_datasets([clean_ds], pseudonym_pattern=SITE_PATTERN)
    assert repr(clean_ds) == before


# ---------------------------------------------------------------------------
# real files carrying identifiers: deid-data from PyPI (fetched at test time)

#: per file: attributes that must be among the findings, and identifiers that must be collected
DEID_EXPECTED: dict[str, tuple[set[str], set[str]]] = {
    "humans/ctbrain1.dcm": (
        {"PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs", "OtherPatientNames",
         "InstitutionName", "InstitutionAddress", "ReferringPhysicianName", "PhysiciansOfRecord",
         "NameOfPhysiciansReadingStudy", "RequestingPhysician", "AdditionalPatientHistory", "MilitaryRank",
         "BranchOfService", "CurrentPatientLocation", "RequestAttributesSequence", "IssuerOfPatientID",
         "MITRA LINKED ATTRIBUTES 1.0:GlobalPatientID", "MITRA OBJECT UTF8 ATTRIBUTES 1.0:PatientNameSingleByte",
         "PatientIdentityRemoved"},
        {"SIMPSON^HOMER^J", "00007041776", "20200704", "999887722", "M1212121", "Evergreen Terrace Springfield",
         "SGH SPRINGFIELD GENERAL HOSPITAL", "HIBBARD^JULIUS", "RIVERIA^NICK",
         "1.2.840.113696.376376.500.43158802.99999999999999"},
    ),
    "humans/ctbrain2.dcm": (
        {"PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs", "InstitutionAddress",
         "ReferringPhysicianName", "MITRA OBJECT UTF8 ATTRIBUTES 1.0:RequestingPhysicianNameSingleByte"},
        {"SIMPSON^HOMER^J", "00007041776", "20200704", "999887722", "HIBBARD^JULIUS"},
    ),
    "ultrasounds/GREYSCALE_IMAGE.dcm": (
        {"PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs", "InstitutionName",
         "RequestingPhysician", "BurnedInAnnotation", "ReasonForStudy", "CommentsOnThePerformedProcedureStep"},
        {"ZZZ TEST PATIENTFIVE^NEW^P", "2020202020202", "19510829", "104111149", "E20202020202",
         "CCHS CLEVELAND CLINIC CANADA", "KILLEEN^THOMAS"},
    ),
    "ultrasounds/RGB_IMAGE.dcm": (
        {"PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "AccessionNumber", "OtherPatientIDs",
         "InstitutionName", "ReferringPhysicianName", "OperatorsName", "PhysiciansOfRecord"},
        {"ZZZDOWNTIME^MARY", "40404040404", "19850306", "120907058", "E40404040404", "CCHS CLEVELAND CLINIC",
         "TEST^DOC^O"},
    ),
    "ultrasounds/ultrasound-multiframe.dcm": (
        {"PatientName", "PatientID", "PatientBirthDate", "ReferringPhysicianName", "BurnedInAnnotation",
         "ScheduledProcedureStepID", "RequestedProcedureID"},
        {"abcd", "19000101", "Ref^Phy", "15386396"},
    ),
    "ultrasounds/RGB_CINE.zip!RGB_CINE.dcm": (
        {"PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs", "InstitutionName",
         "PatientAddress", "OperatorsName"},
        {"TEST^ADL", "3030303030", "19860130", "111088554", "Akron General Hospital", "E3030303030"},
    ),
    "ultrasounds/GREYSCALE_CINE.zip!GREYSCALE_CINE.dcm": (
        {"PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "BurnedInAnnotation"},
        {"ZZZ TEST PATIENTFIVE^NEW^P", "10101010101", "19510829", "104111149", "E10101010101"},
    ),
    "animals/cat.dcm": (
        {"PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "InstitutionAddress",
         "PerformingPhysicianName", "OperatorsName"},
        {"Wetzel, James^Chase", "16550", "20110106", "Bartels Busack Pet Hospital", "Busack^Ron", "Rayburn^Kristine"},
    ),
    **{
        f"dicom-cookies/image{k}.dcm": (
            {"PatientName", "PatientID", "InstitutionName", "ReferringPhysicianName", "NameOfPhysiciansReadingStudy",
             "OperatorsName", "ImageComments"},
            {"cookie-47", "STANFORD"},
        )
        for k in range(1, 8)
    },
}


@pytest.mark.filterwarnings("ignore:The value length")  # deid-data has over-long values, as real files do
@pytest.mark.parametrize("relative", sorted(DEID_EXPECTED))
def test_deid_data_files_are_quarantined_for_their_identifiers(
    read_deid: Callable[[str], pydicom.Dataset], relative: str
) -> None:
    ds = read_deid(relative)
    expected_keywords, planted = DEID_EXPECTED[relative]
    # every planted identifier is really in the file (so this test checks what the file holds)
    header_text = str(ds)
    for value in planted:
        assert value.split("^")[0] in header_text, f"{relative} does not hold {value!r}"
    report = check_datasets([ds], pseudonym_pattern=SITE_PATTERN)
    keywords = {f.keyword for f in report.findings}
    assert expected_keywords <= keywords, expected_keywords - keywords
    assert planted <= report.sensitive_values, planted - report.sensitive_values
    with pytest.raises(PHIDetectedError, match=r"\(0010,0030\) PatientBirthDate|\(0010,0010\) PatientName") as info:
        raise_for_findings(report, context=relative)
    _no_value_anywhere(report, sorted(planted), info.value.message)


def test_deid_data_names_without_pattern_still_caught(read_deid: Callable[[str], pydicom.Dataset]) -> None:
    """Without a site pattern, the family^given names of deid-data are still refused."""
    ds = read_deid("humans/ctbrain1.dcm")
    report = check_datasets([ds])
    assert ("(0010,0010)", "PatientName") in {(f.tag, f.keyword) for f in report.findings}


# ---------------------------------------------------------------------------
# phantom studies of the three vendor styles


@pytest.fixture(scope="module")
def phantom_headers(tmp_path_factory: pytest.TempPathFactory, small_phantom: object) -> Callable[[str, bool], tuple]:
    """Headers of the CT and PET series of a phantom study (vendor style, plant_phi), written once."""
    from curation.phantom import write_study

    cache: dict[tuple[str, bool], tuple] = {}

    def get(vendor: str, plant: bool) -> tuple:
        if (vendor, plant) not in cache:
            out = tmp_path_factory.mktemp(f"{vendor}-{plant}")
            study = write_study(small_phantom, out, vendor=vendor, seed=3, patient_id="SITE-0042",
                                patient_name="SITE-0042", decoys=False, plant_phi=plant)
            paths = [*study.files["ct"], *study.files["pt"]]
            cache[vendor, plant] = (study, [pydicom.dcmread(p, stop_before_pixels=True) for p in paths])
        return cache[vendor, plant]

    return get


@pytest.mark.parametrize("vendor", ["siemens", "philips", "ge"])
def test_clean_phantom_studies_pass_and_planted_ones_are_quarantined(
    phantom_headers: Callable[[str, bool], tuple], vendor: str
) -> None:
    from curation.phantom import PLANTED_PHI

    study, datasets = phantom_headers(vendor, False)
    report = check_datasets(datasets, pseudonym_pattern=SITE_PATTERN)
    assert report.findings == ()
    raise_for_findings(report)  # no error
    uids = {ds.SOPInstanceUID for ds in datasets} | {study.StudyInstanceUID, study.ct_series_uid,
                                                     study.FrameOfReferenceUID}
    assert uids <= report.sensitive_values
    assert "SITE-0042" in report.sensitive_values

    _, planted_datasets = phantom_headers(vendor, True)
    report = check_datasets(planted_datasets, pseudonym_pattern=SITE_PATTERN)
    assert {f.keyword for f in report.findings} == set(PLANTED_PHI)
    assert all(f.reason_code is RejectReason.PHI_DETECTED for f in report.findings)
    assert set(PLANTED_PHI.values()) <= report.sensitive_values
    with pytest.raises(PHIDetectedError) as info:
        raise_for_findings(report)
    _no_value_anywhere(report, list(PLANTED_PHI.values()), info.value.message)


def test_phantom_study_with_real_name_fails_the_site_pattern(phantom_headers: Callable[[str, bool], tuple]) -> None:
    _, datasets = phantom_headers("siemens", False)
    named = [copy.deepcopy(ds) for ds in datasets[:3]]
    for ds in named:
        ds.PatientName = "Mustermann^Erika"
    report = check_datasets(named, pseudonym_pattern=SITE_PATTERN)
    assert [(f.keyword, f.rule) for f in report.findings] == [("PatientName", "pseudonym")]


@pytest.mark.parametrize("value", [None, ""])
def test_optional_identity_flag_lets_a_study_without_it_through(
    value: str | None, make_clean_ds: Callable[[], Dataset]
) -> None:
    ds = make_clean_ds()
    if value is None:
        del ds.PatientIdentityRemoved
    else:
        ds.PatientIdentityRemoved = value
    assert check_datasets([ds], pseudonym_pattern=SITE_PATTERN, identity_flag_required=False).findings == ()
    assert [f.keyword for f in check_datasets([ds], pseudonym_pattern=SITE_PATTERN).findings] == [
        "PatientIdentityRemoved"
    ]
    # every other rule unchanged: a real name still fails, and a declared NO still fails
    named = copy.deepcopy(ds)
    named.PatientName = "Mustermann^Erika"
    report = check_datasets([named], pseudonym_pattern=SITE_PATTERN, identity_flag_required=False)
    assert [(f.keyword, f.rule) for f in report.findings] == [("PatientName", "pseudonym")]
    with pytest.raises(PHIDetectedError, match=r"PatientName \[pseudonym\]"):
        raise_for_findings(report)
    declared_no = copy.deepcopy(ds)
    declared_no.PatientIdentityRemoved = "NO"
    assert [f.keyword for f in check_datasets([declared_no], identity_flag_required=False).findings] == [
        "PatientIdentityRemoved"
    ]


def _implicit_vr_copy(ds: Dataset) -> Dataset:
    """``ds`` written with ImplicitVRLittleEndian and read back (private elements of unknown creators: UN)."""
    from pydicom.uid import ImplicitVRLittleEndian

    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize("name", ["Doctor^Who", "Müller^Jörg", "O'NEIL-SMITH^MARY ANN^^DR."])
def test_private_person_name_is_refused_in_implicit_vr_too(clean_ds: Dataset, name: str) -> None:
    ds = clean_ds
    ds.SpecificCharacterSet = "ISO_IR 192"
    block = ds.private_block(0x0035, "ACME PACS 2.0", create=True)
    block.add_new(0x01, "PN", name)
    block.add_new(0x02, "DS", "3.5")
    block.add_new(0x03, "LO", "B30f^3.0^WB")  # a "^" in text with digits, not a name: listed, not refused
    block.add_new(0x04, "UI", "2.25.8765432109876")
    implicit = _implicit_vr_copy(ds)
    assert implicit[0x00351001].VR == "UN"  # the file does not say PN
    report = check_datasets([implicit], pseudonym_pattern=SITE_PATTERN)
    assert [(f.tag, f.rule, f.reason_code) for f in report.findings] == [
        ("(0035,1001)", "private-person-name", RejectReason.PHI_DETECTED)
    ]
    assert report.private_review == ("(0035,xx02) creator 'ACME PACS 2.0'", "(0035,xx03) creator 'ACME PACS 2.0'",
                                     "(0035,xx04) creator 'ACME PACS 2.0'")
    assert {name, "2.25.8765432109876"} <= report.sensitive_values
    _no_value_anywhere(report, [name], _message_of(report))
    # the same as the explicit-VR file
    explicit = check_datasets([ds], pseudonym_pattern=SITE_PATTERN)
    assert [(f.tag, f.rule) for f in explicit.findings] == [(f.tag, f.rule) for f in report.findings]


def test_a_name_typed_with_spaces_is_recorded_for_the_leak_scan_as_a_person_name(clean_ds: Dataset) -> None:
    from anonymization.leakscan import is_person_name

    clean_ds.OperatorsName = "Hans Mueller"
    report = check_datasets([clean_ds], pseudonym_pattern=SITE_PATTERN)
    assert [f.keyword for f in report.findings] == ["OperatorsName"]
    names = {v for v in report.sensitive_values if is_person_name(v)}
    assert names == {"Hans^Mueller"}


def test_an_element_that_cannot_be_decoded_stops_the_study_naming_the_element(clean_ds: Dataset) -> None:
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    from curation.errors import UnreadableError

    # a broken VR code on OperatorsName: pydicom fails when it decodes it, the gate cannot check it
    clean_ds[0x00081070] = RawDataElement(Tag(0x00081070), "Q3", 12, b"MUELLER^HANS", 0, False, True)
    with pytest.raises(UnreadableError, match=r"^\(0008,1070\) OperatorsName: the value cannot be decoded "
                                              r"\(NotImplementedError\), so the header cannot be checked$") as err:
        check_datasets([clean_ds], pseudonym_pattern=SITE_PATTERN)
    assert err.value.reason is RejectReason.UNREADABLE
    assert "MUELLER" not in err.value.message


def _gate_outcome(read) -> tuple:
    """What reading one file and gating its header gives: the report, or the exception's type and message."""
    try:
        ds = read()
    except Exception as exc:  # compared between the two readers
        return ("unreadable", type(exc).__name__)
    try:
        report = check_datasets([ds], pseudonym_pattern=r"FUZ-\d{4}")
    except Exception as exc:
        return ("error", type(exc).__name__, str(exc))
    return ("report", report.findings, report.private_review, report.sensitive_values)


def test_headers_read_once_with_pixels_located_gate_as_whole_files_do(tmp_path: Path, monkeypatch) -> None:
    """Ingest's reader (header whole, pixel data located) gives the gate exactly what a whole read gives.

    On mutated files (bit flips, truncation, hostile values, wrong VRs, deflate
    bombs, Implicit VR and Deflated re-encodings) of a phantom study and of
    pydicom's test files: the same findings, review notes and sensitive
    values, or the same error.
    """
    import numpy as np

    import curation.dicomfile as dicomfile
    from tests.fuzzing import mutate, pydicom_sources, tiny_phantom_study

    monkeypatch.setattr(dicomfile, "HEADER_READ_BYTES", 4096)  # small files are not read at once
    phantom, others = tiny_phantom_study(tmp_path / "phantom"), pydicom_sources(256 << 10)[::4]
    rng = np.random.default_rng(1109)
    located = 0
    for n in range(240):
        source = phantom[n % len(phantom)] if n % 3 else others[n % len(others)]  # plain slices two times in three
        name, data = mutate(source.read_bytes(), rng) if n >= 30 else ("none", source.read_bytes())
        path = tmp_path / "mutated" / f"{n}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            whole = _gate_outcome(functools.partial(dicomfile.read_dicom_file, path, stop_before_pixels=False))
            header = _gate_outcome(lambda p=path: dicomfile.read_dicom_header(p)[0])
            with contextlib.suppress(Exception):  # counted only
                located += dicomfile.read_dicom_header(path)[1] is not None
        assert header == whole, f"{source.name} ({name})"
    assert located > 40  # the located path was taken, not only the whole read


# ---------------------------------------------------------------------------
# the memo: an element judged once per study gives what judging it in every instance gives


def _gate_both_ways(paths: list[Path], monkeypatch: pytest.MonkeyPatch, **options: object) -> tuple:
    """``check_datasets`` over the files as ingest reads them, without the memo and with it.

    Returns
    -------
    tuple
        The outcome without the memo, the outcome with it (the report, or the
        error's type and message) and how many top-level elements the memo
        passed over.
    """
    from curation.dicomfile import READ_ERRORS, read_dicom_header
    from curation.errors import CurationError

    passed_over: list[int] = []
    real_iter_uids = gate_module.iter_uids

    def counting_iter_uids(ds: Dataset, *, skip: frozenset[int] = frozenset()) -> Iterator[str]:
        passed_over.append(len(skip))
        return real_iter_uids(ds, skip=skip)

    monkeypatch.setattr(gate_module, "iter_uids", counting_iter_uids)
    outcomes = []
    for memoize in (False, True):
        monkeypatch.setattr(gate_module, "_MEMOIZE", memoize)
        passed_over.clear()
        datasets = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for path in paths:
                with contextlib.suppress(*READ_ERRORS, MemoryError):  # ingest would reject the file, not gate it
                    datasets.append(read_dicom_header(path)[0])
            try:
                report = check_datasets(datasets, **options)
            except CurationError as exc:
                outcomes.append(("error", type(exc).__name__, str(exc)))
            else:
                outcomes.append(("report", report.findings, report.private_review, report.sensitive_values))
    return outcomes[0], outcomes[1], sum(passed_over)


def _encoded(ds: Dataset, *, implicit: bool = False) -> bytes:
    """``ds`` as pydicom writes it, in Explicit or Implicit VR Little Endian."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return buf.getvalue()


def _memo_base(make_clean_ds: Callable[[], Dataset]) -> Dataset:
    """A clean header with a sequence in a sequence (what the memo passes over whole)."""
    ds = make_clean_ds()
    ds.PixelRepresentation = 0
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "C-111A1", "SRT", "^18^Fluorine"
    drug = Dataset()
    drug.Radiopharmaceutical = "Fluorodeoxyglucose"
    drug.RadionuclideCodeSequence = DicomSequence([code])
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([drug])
    return ds


def _charset_top(ds: Dataset, k: int) -> bytes:
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.OperatorsName = "Müller^Jörg"
    data = _encoded(ds)
    return data.replace(b"ISO_IR 192", b"ISO_IR 100") if k % 2 else data  # the same name bytes, read as Latin-1


def _charset_in_sequence(ds: Dataset, k: int) -> bytes:
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.RadiopharmaceuticalInformationSequence[0].RadionuclideCodeSequence[0].CodeMeaning = "Jörg Müller"
    ds.AcquisitionContextSequence = _acquisition_context()  # must be empty: its text is collected
    ds.AcquisitionContextSequence[0].TextValue = "Injected by Jörg Müller"
    data = _encoded(ds)
    return data.replace(b"ISO_IR 192", b"ISO_IR 100") if k % 2 else data


def _private_creator(ds: Dataset, k: int, *, implicit: bool = False) -> bytes:
    block = ds.private_block(0x0009, "GEMS_PETD_01" if k % 2 else "SOME OTHER VENDOR", create=True)
    block.add_new(0x02, "LO", "SCANNER-PID-99812")  # the same bytes under either creator
    return _encoded(ds, implicit=implicit)


def _nested_item(ds: Dataset, k: int) -> bytes:
    if k == 2:
        ds.RadiopharmaceuticalInformationSequence[0].RadionuclideCodeSequence[0].PerformingPhysicianName = "Hausmann^Karl"
    return _encoded(ds)


def _implicit_or_explicit(ds: Dataset, k: int) -> bytes:
    block = ds.private_block(0x0035, "ACME PACS 2.0", create=True)
    block.add_new(0x01, "LO", "Doctor^Who")  # explicit: an LO listed for review; implicit: UN, its text a name
    return _encoded(ds, implicit=bool(k % 2))


def _pixel_representation(ds: Dataset, k: int) -> bytes:
    ds.PixelRepresentation = k % 2
    ds.AcquisitionContextSequence = _acquisition_context()
    ds.AcquisitionContextSequence[0].add_new(0x00280106, "US", 0xFFFF)  # SmallestImagePixelValue: US or SS
    return _encoded(ds, implicit=True)  # in Implicit VR the item's value is 65535 or -1 by the parent's


def _pixel_representation_as_ui(ds: Dataset, k: int) -> bytes:
    if k == 0:
        del ds.RadiopharmaceuticalInformationSequence  # decoding a sequence decodes PixelRepresentation
    data = _encoded(ds)
    us = b"\x28\x00\x03\x01US\x02\x00\x00\x00"
    assert data.count(us) == 1
    return data.replace(us, b"\x28\x00\x03\x01UI\x02\x00\xe9\x00")  # a UI, not ASCII: bytes and decoded text differ


#: case -> (how instance k is written from the base, what the study without the memo shows)
MEMO_CASES: dict[str, tuple[Callable[[Dataset, int], bytes], Callable[[tuple], bool]]] = {
    "real-name-in-one-slice": (
        lambda ds, k: _encoded(ds) if k != 2 else _encoded(_with(ds, PatientName="Mustermann^Erika")),
        lambda out: ("(0010,0010)", "PatientName") in {(f.tag, f.keyword) for f in out[1]},
    ),
    "same-bytes-other-charset": (
        _charset_top, lambda out: {"Müller^Jörg", "MÃ¼ller^JÃ¶rg"} <= out[3],
    ),
    "same-sequence-bytes-other-charset": (
        _charset_in_sequence, lambda out: {"Injected by Jörg Müller", "Injected by JÃ¶rg MÃ¼ller"} <= out[3],
    ),
    "same-private-bytes-other-creator": (
        _private_creator,
        lambda out: ("(0009,1002)", "GEMS_PETD_01:PETPatientID") in {(f.tag, f.keyword) for f in out[1]}
        and "(0009,xx02) creator 'SOME OTHER VENDOR'" in out[2],
    ),
    "same-private-bytes-other-creator-implicit-vr": (
        functools.partial(_private_creator, implicit=True),
        lambda out: ("(0009,1002)", "GEMS_PETD_01:PETPatientID") in {(f.tag, f.keyword) for f in out[1]}
        and "(0009,xx02) creator 'SOME OTHER VENDOR'" in out[2],
    ),
    "one-nested-item-differs": (
        _nested_item, lambda out: ("(0008,1050)", "PerformingPhysicianName") in {(f.tag, f.keyword) for f in out[1]},
    ),
    "same-bytes-implicit-and-explicit-vr": (
        _implicit_or_explicit,
        lambda out: ("(0035,1001)", "private-person-name") in {(f.tag, f.rule) for f in out[1]}
        and "(0035,xx01) creator 'ACME PACS 2.0'" in out[2],
    ),
    "same-sequence-bytes-other-pixel-representation": (
        _pixel_representation, lambda out: {"65535", "-1"} <= out[3],
    ),
    "pixel-representation-written-as-ui": (
        _pixel_representation_as_ui, lambda out: {"\ufffd", "é"} <= out[3],
    ),
}


def _with(ds: Dataset, **attributes: object) -> Dataset:
    ds = copy.deepcopy(ds)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reversed"])
@pytest.mark.parametrize("case", sorted(MEMO_CASES))
def test_memo_gives_what_judging_every_instance_gives(
    case: str, reverse: bool, make_clean_ds: Callable[[], Dataset], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Instances that differ in one thing the judging depends on (a value, the character set, the
    private creator, the VR encoding, a nested item, the PixelRepresentation) are judged apart."""
    write, shows_the_difference = MEMO_CASES[case]
    paths = []
    for k in range(4):
        ds = _memo_base(make_clean_ds)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"2.25.1001{k}"
        ds.InstanceNumber = k + 1
        paths.append(tmp_path / f"{k}.dcm")
        paths[-1].write_bytes(write(ds, k))
    plain, memo, passed_over = _gate_both_ways(paths[::-1] if reverse else paths, monkeypatch,
                                               pseudonym_pattern=SITE_PATTERN)
    assert plain[0] == "report" and shows_the_difference(plain), plain
    assert memo == plain
    if case != "pixel-representation-written-as-ui":  # no memo for such a dataset
        assert passed_over > 20  # the elements the instances share (sequences among them) were judged once


@pytest.mark.parametrize(("vendor", "plant"), [("siemens", False), ("philips", True), ("ge", True)])
def test_memo_gives_what_judging_every_instance_gives_on_phantom_studies_and_mutations(
    vendor: str, plant: bool, phantom_headers: Callable[[str, bool], tuple], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A phantom study's CT and PET slices, and copies with one to three files mutated (bit flips,
    hostile values, wrong VRs, deleted elements, Implicit VR and Deflated re-encodings, ...)."""
    import numpy as np

    from tests.fuzzing import mutate

    study, _ = phantom_headers(vendor, plant)
    sources = [*study.files["ct"][::20], *study.files["pt"][::20]]
    plain, memo, passed_over = _gate_both_ways(sources, monkeypatch, pseudonym_pattern=SITE_PATTERN)
    assert plain[0] == "report" and memo == plain
    assert passed_over > 20 * len(sources)
    rng = np.random.default_rng(20240917)
    for n in range(8):
        folder = tmp_path / str(n)
        folder.mkdir()
        paths = [folder / f"{k}.dcm" for k in range(len(sources))]
        chosen = set(rng.choice(len(sources), size=int(rng.integers(1, 4)), replace=False).tolist())
        names = []
        for k, (source, path) in enumerate(zip(sources, paths, strict=True)):
            data = source.read_bytes()
            if k in chosen:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    name, data = mutate(data, rng)
                names.append(name)
            path.write_bytes(data)
        plain, memo, _ = _gate_both_ways(paths, monkeypatch, pseudonym_pattern=SITE_PATTERN)
        assert memo == plain, names


@pytest.mark.filterwarnings("ignore")
def test_memo_gives_what_judging_every_instance_gives_on_real_and_pydicom_files(
    deid_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deid-data's identified headers (real vendors' private blocks) as one study, and each of
    pydicom's small test files beside two mutated copies of itself."""
    import numpy as np

    from tests.fuzzing import mutate, pydicom_sources

    real = [deid_data_dir / relative for relative in sorted(DEID_EXPECTED) if "!" not in relative]
    for paths in (real, real[::-1]):
        plain, memo, passed_over = _gate_both_ways(paths, monkeypatch)
        assert memo == plain and passed_over > 0
    rng = np.random.default_rng(7)
    for n, source in enumerate(pydicom_sources(64 << 10)[::8]):
        paths = [tmp_path / f"{n}-{k}.dcm" for k in range(4)]
        data = source.read_bytes()
        for k, path in enumerate(paths):
            path.write_bytes(mutate(data, rng)[1] if k in (1, 2) else data)
        plain, memo, _ = _gate_both_ways(paths, monkeypatch)
        assert memo == plain, source.name


def _date_in_a_nested_item(ds: Dataset, k: int) -> bytes:
    """A date inside a sequence's item that only instance 2 has different (the rest share the bytes)."""
    item = ds.RadiopharmaceuticalInformationSequence[0]
    item.RadiopharmaceuticalStartDateTime = "19840215101500" if k == 2 else "20240101101500"
    item.RadionuclideCodeSequence[0].add_new(0x00080012, "DA", "19991231" if k == 3 else "20240101")  # InstanceCreationDate
    return _encoded(ds, implicit=k == 1)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", [*sorted(MEMO_CASES), "date-in-a-nested-item"])
def test_a_studys_header_dates_are_every_instances_dates(
    case: str, make_clean_ds: Callable[[], Dataset], tmp_path: Path
) -> None:
    """``header_dates`` looks at an element the instances share once, and finds what every instance holds."""
    from anonymization.dates import iter_dates
    from curation.dicomfile import read_dicom_header
    from curation.ingest import header_dates

    write = _date_in_a_nested_item if case == "date-in-a-nested-item" else MEMO_CASES[case][0]
    paths = []
    for k in range(4):
        ds = _memo_base(make_clean_ds)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"2.25.1001{k}"
        ds.ContentDate = f"2024010{k + 1}"  # a date of each instance's own
        paths.append(tmp_path / f"{k}.dcm")
        paths[-1].write_bytes(write(ds, k))
    each = set().union(*(set(iter_dates(read_dicom_header(p)[0])) for p in paths))
    assert header_dates([read_dicom_header(p)[0] for p in paths]) == each
    assert {dt.date(2024, 1, k) for k in range(1, 5)} <= each
    if case == "date-in-a-nested-item":
        assert {dt.date(1984, 2, 15), dt.date(1999, 12, 31)} <= each


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", sorted(MEMO_CASES))
def test_a_studys_sensitive_values_are_every_instances_values(
    case: str, make_clean_ds: Callable[[], Dataset], tmp_path: Path
) -> None:
    """``sensitive_values`` decodes an identifying element the instances share once, and finds every value."""
    from curation.dicomfile import read_dicom_header
    from curation.ingest import sensitive_values

    write = MEMO_CASES[case][0]
    paths = []
    for k in range(4):
        ds = _memo_base(make_clean_ds)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"2.25.1001{k}"
        if k == 1:
            ds.PatientName = "Müller^Jörg"  # under ISO_IR 100 in some cases: other text from the same bytes
            ds.OtherPatientIDs = ["SITE-0042", "MRN-77"]
        paths.append(tmp_path / f"{k}.dcm")
        paths[-1].write_bytes(write(ds, k))
    each = set().union(*(sensitive_values([read_dicom_header(p)[0]], uids=False) for p in paths))
    assert sensitive_values([read_dicom_header(p)[0] for p in paths], uids=False) == each
    assert {"SITE-0042", "MRN-77"} <= each
