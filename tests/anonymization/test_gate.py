"""The de-identification gate: every rule row, real identifiers (deid-data), phantoms."""

from __future__ import annotations

import copy
import csv
import io
from collections.abc import Callable

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from anonymization.gate import (
    GateAction,
    GateReport,
    GateRule,
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


def test_table_is_the_full_profile_with_real_reasons() -> None:
    assert len(RULES) > 100
    actions = {r.action for r in RULES}
    assert actions == set(GateAction)
    for rule in RULES:
        assert rule.reason.endswith(".") and len(rule.reason.split()) >= 8, rule
        if not rule.creator and "x" not in rule.tag:
            tag = int(rule.tag[1:5] + rule.tag[6:10], 16)
            assert keyword_for_tag(tag) == rule.keyword, rule
    by_keyword = {r.keyword: r.action for r in RULES if not r.creator}
    # the options: characteristics, dates, device identity kept; people and places not
    for keyword in ("PatientSex", "PatientAge", "PatientWeight", "PatientSize", "StudyDate", "AcquisitionTime",
                    "StationName", "DeviceSerialNumber", "EthnicGroup"):
        assert by_keyword[keyword] is GateAction.RETAIN, keyword
    for keyword in ("PatientBirthDate", "OtherPatientIDs", "AccessionNumber", "ReferringPhysicianName",
                    "PerformingPhysicianName", "OperatorsName", "InstitutionAddress", "InstitutionalDepartmentName",
                    "PatientAddress", "PatientTelephoneNumbers", "MedicalRecordLocator", "MilitaryRank",
                    "BranchOfService", "CountryOfResidence", "RegionOfResidence", "PatientMotherBirthName",
                    "Occupation", "AdditionalPatientHistory", "PatientComments", "RequestAttributesSequence",
                    "ReferringPhysicianIdentificationSequence", "OtherPatientNames"):
        assert by_keyword[keyword] is GateAction.MUST_BE_EMPTY, keyword
    safe = {(r.creator, r.tag) for r in RULES if r.action is GateAction.RETAIN and r.creator}
    assert safe == {("Philips PET Private Group", "(7053,xx00)"), ("Philips PET Private Group", "(7053,xx09)")}


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
    assert list(rows[0]) == ["tag", "creator", "keyword", "action", "reason"]
    assert len(rows) == len(RULES)


# ---------------------------------------------------------------------------
# every rule row fires on a planted value


def _rule_tag(rule: GateRule) -> int:
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
    if rule.creator:
        block = ds.private_block(tag >> 16, rule.creator, create=True)
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
        assert f"({tag >> 16:04X},xx{tag & 0xFF:02X}) creator {rule.creator!r}" in report.private_review
    else:  # retain, descriptor: allowed, and not collected (shifted dates would be false leak alarms)
        assert report.findings == ()
        assert not (set(strings) - {s for s in strings if s.startswith("2.25.")}) & report.sensitive_values


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
