"""Series selection on index records: the decoy rules, the pairing by frame of reference, every error.

Whole phantom studies go through selection in test_ingest.py; here the records
are built directly so each rule is tested on its own.
"""

from __future__ import annotations

import dataclasses

import pytest

from curation.errors import (
    AmbiguousSeriesError,
    FrameOfReferenceMismatchError,
    NoACPETError,
    NoCTError,
)
from curation.model import SeriesRecord, StudyRecord
from curation.select import (
    CT_IMAGE_STORAGE,
    DECOY_RULES,
    PET_IMAGE_STORAGE,
    decoy_reason,
    select_series,
)

CT = SeriesRecord(
    SeriesInstanceUID="1.2.3.1",
    Modality="CT",
    SOPClassUID=CT_IMAGE_STORAGE,
    SeriesDescription="WB CT 3mm",
    SeriesNumber=2,
    ImageType=("ORIGINAL", "PRIMARY", "AXIAL"),
    FrameOfReferenceUID="1.2.3.99",
    CorrectedImage=(),
    Units="",
    files=("/x/ct1",),
)
PT = SeriesRecord(
    SeriesInstanceUID="1.2.3.2",
    Modality="PT",
    SOPClassUID=PET_IMAGE_STORAGE,
    SeriesDescription="PET AC",
    SeriesNumber=3,
    ImageType=("ORIGINAL", "PRIMARY"),
    FrameOfReferenceUID="1.2.3.99",
    CorrectedImage=("DECY", "ATTN", "SCAT"),
    Units="BQML",
    files=("/x/pt1",),
)


def _study(*series: SeriesRecord) -> StudyRecord:
    return StudyRecord(site="s", StudyInstanceUID="1.2.3", PatientID="P", StudyDate="20240101", series=series, fingerprint="f")


def _like(base: SeriesRecord, uid: str, **changes) -> SeriesRecord:
    return dataclasses.replace(base, SeriesInstanceUID=uid, **changes)


LOCALISER = _like(CT, "1.2.3.10", SeriesDescription="Topogram", ImageType=("ORIGINAL", "PRIMARY", "LOCALIZER"))
NAC = _like(PT, "1.2.3.11", SeriesDescription="PET NAC", CorrectedImage=("DECY",))
SECONDARY = _like(CT, "1.2.3.12", Modality="OT", SOPClassUID="1.2.840.10008.5.1.4.1.1.7", SeriesDescription="Fusion")
DOSE = _like(CT, "1.2.3.13", Modality="SR", SOPClassUID="1.2.840.10008.5.1.4.1.1.88.67", SeriesDescription="Dose Report")
MIP = _like(PT, "1.2.3.14", SeriesDescription="PET MIP", ImageType=("DERIVED", "SECONDARY", "MIP"))
NO_UNITS = _like(PT, "1.2.3.15", Units="")


def test_the_ct_and_ac_pet_are_chosen_and_every_decoy_is_recorded_with_why():
    selection = select_series(_study(DOSE, CT, NAC, LOCALISER, PT, SECONDARY, MIP, NO_UNITS))
    assert selection.ct is CT and selection.pt is PT
    why = {i.SeriesInstanceUID: i.why for i in selection.ignored}
    assert set(why) == {"1.2.3.10", "1.2.3.11", "1.2.3.12", "1.2.3.13", "1.2.3.14", "1.2.3.15"}
    assert why["1.2.3.10"].startswith("localiser/topogram (ImageType 'ORIGINAL\\PRIMARY\\LOCALIZER')")
    assert why["1.2.3.11"] == "PET not attenuation-corrected (CorrectedImage 'DECY' has no ATTN)"
    assert why["1.2.3.12"] == "secondary capture (SOP class 1.2.840.10008.5.1.4.1.1.7)"
    assert why["1.2.3.13"].startswith("dose report / structured report (Modality 'SR'")
    assert why["1.2.3.14"].startswith("derived or MIP series")
    assert why["1.2.3.15"].startswith("PET without Units")
    assert [i.SeriesInstanceUID for i in selection.ignored] == sorted(why)


def test_rules_are_readable_data():
    names = [rule.name for rule in DECOY_RULES]
    assert names[:2] == ["dose-report", "secondary-capture"]
    assert "pet-not-attenuation-corrected" in names and "localiser" in names
    assert decoy_reason(CT) is None and decoy_reason(PT) is None
    mr_class_ct = _like(CT, "9", SOPClassUID="1.2.840.10008.5.1.4.1.1.4")
    assert decoy_reason(mr_class_ct) == (
        "CT SOP class 1.2.840.10008.5.1.4.1.1.4 is not one the pipeline converts (CT Image Storage "
        "1.2.840.10008.5.1.4.1.1.2, Enhanced CT Image Storage 1.2.840.10008.5.1.4.1.1.2.1, "
        "Legacy Converted Enhanced CT Image Storage 1.2.840.10008.5.1.4.1.1.2.2)"
    )
    nm_class_pet = _like(PT, "10", SOPClassUID="1.2.840.10008.5.1.4.1.1.20")
    assert decoy_reason(nm_class_pet).startswith(
        "PET SOP class 1.2.840.10008.5.1.4.1.1.20 is not one the pipeline converts (PET Image Storage "
        "1.2.840.10008.5.1.4.1.1.128, Enhanced PET Image Storage 1.2.840.10008.5.1.4.1.1.130, "
    )


@pytest.mark.parametrize(
    ("ct_class", "pt_class"),
    [
        ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.130"),  # Enhanced CT / Enhanced PET
        ("1.2.840.10008.5.1.4.1.1.2.2", "1.2.840.10008.5.1.4.1.1.128.1"),  # Legacy Converted Enhanced
    ],
)
def test_enhanced_and_legacy_converted_ct_and_pet_are_selected_by_sop_class(ct_class, pt_class):
    enhanced_ct = _like(CT, "1.2.3.40", SOPClassUID=ct_class, ImageType=("ORIGINAL", "PRIMARY", "AXIAL", "NONE"))
    enhanced_pt = _like(PT, "1.2.3.41", SOPClassUID=pt_class)
    selection = select_series(_study(enhanced_ct, enhanced_pt, LOCALISER))
    assert selection.ct is enhanced_ct and selection.pt is enhanced_pt


def test_a_multi_frame_pet_of_another_class_is_no_ac_pet_naming_its_sop_class():
    nm_multi_frame = _like(PT, "1.2.3.16", SOPClassUID="1.2.840.10008.5.1.4.1.1.20")
    with pytest.raises(NoACPETError, match=r"series 1\.2\.3\.16 \('PET AC'\): PET SOP class 1\.2\.840\.10008\.5\.1\.4\.1\.1\.20 is not"):
        select_series(_study(CT, nm_multi_frame))


def test_no_ct_names_the_series_that_were_not_taken():
    with pytest.raises(NoCTError, match=r"study 1\.2\.3: no diagnostic axial CT .*series 1\.2\.3\.10 \('Topogram'\): localiser"):
        select_series(_study(LOCALISER, PT))


def test_only_non_attenuation_corrected_pet_is_no_ac_pet():
    with pytest.raises(NoACPETError, match=r"no attenuation-corrected PET .*series 1\.2\.3\.11 \('PET NAC'\): PET not attenuation-corrected \(CorrectedImage 'DECY'"):
        select_series(_study(CT, NAC))


def test_frame_of_reference_mismatch_names_both_uids():
    other = _like(PT, PT.SeriesInstanceUID, FrameOfReferenceUID="1.2.3.77")
    with pytest.raises(FrameOfReferenceMismatchError, match=r"FrameOfReferenceUID 1\.2\.3\.99; .*'PET AC'\) FrameOfReferenceUID 1\.2\.3\.77"):
        select_series(_study(CT, other))


def test_two_pairs_on_one_frame_of_reference_are_ambiguous():
    second_ct = _like(CT, "1.2.3.20", SeriesDescription="WB CT 5mm")
    with pytest.raises(AmbiguousSeriesError, match=r"2 CT/PET pairs could be the case: CT series 1\.2\.3\.1 \('WB CT 3mm'\).*CT series 1\.2\.3\.20 \('WB CT 5mm'\)"):
        select_series(_study(CT, second_ct, PT))


def test_tie_break_prefers_the_pair_sharing_the_frame_of_reference():
    stray_ct = _like(CT, "1.2.3.30", SeriesDescription="CT from another session", FrameOfReferenceUID="1.2.3.55")
    selection = select_series(_study(stray_ct, CT, PT))
    assert selection.ct is CT
    (ignored,) = selection.ignored
    assert ignored.SeriesInstanceUID == "1.2.3.30"
    assert ignored.why.startswith("not on the frame of reference of the selected pair (1.2.3.55 vs 1.2.3.99)")


def test_pet_in_counts_or_suv_is_never_released_as_bq_per_ml():
    counts = _like(PT, "1.2.3.16", Units="CNTS")
    suv = _like(PT, "1.2.3.17", Units="GML")
    assert decoy_reason(counts) == "PET Units 'CNTS' is not BQML: the release carries activity concentration in Bq/mL only"
    assert (decoy_reason(suv) or "").startswith("PET Units 'GML' is not BQML")
    with pytest.raises(NoACPETError, match=r"series 1\.2\.3\.16 \('PET AC'\): PET Units 'CNTS' is not BQML"):
        select_series(_study(CT, counts))
    assert select_series(_study(CT, suv, PT)).pt is PT
