"""Choose the diagnostic CT and the attenuation-corrected PET of a study.

The rules are data a data steward can read: :data:`DECOY_RULES` lists, in
order, what makes a series a decoy and the sentence recorded for it; the first
rule that applies wins.  A series no rule rejects is a candidate.  Then:

* no CT candidate -> ``no-ct``; no AC PET candidate -> ``no-ac-pet``;
* exactly one (CT, PET) pair of candidates sharing a FrameOfReferenceUID ->
  that pair is the case; every other candidate is ignored with the reason
  "not on the frame of reference of the selected pair" (the documented
  tie-break: a CT and a PET acquired together share the frame of reference);
* several such pairs -> ``ambiguous-series``;
* no such pair -> ``frame-of-reference-mismatch``.

Every message names the series (SeriesInstanceUID and description) and the
evidence (the attribute values that decided).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from curation.errors import (
    AmbiguousSeriesError,
    FrameOfReferenceMismatchError,
    NoACPETError,
    NoCTError,
)
from curation.frames import (
    ENHANCED_CT_IMAGE_STORAGE,
    ENHANCED_PET_IMAGE_STORAGE,
    LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE,
    LEGACY_CONVERTED_ENHANCED_PET_IMAGE_STORAGE,
)
from curation.model import IgnoredSeries, SeriesRecord, StudyRecord

#: Single-frame CT and PET Image Storage: one slice per file.
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
#: The CT SOP classes the pipeline converts, by name: single-frame slices, and the
#: multi-frame objects whose frames :mod:`curation.frames` turns into slices.
CT_SOP_CLASSES: dict[str, str] = {
    CT_IMAGE_STORAGE: "CT Image Storage",
    ENHANCED_CT_IMAGE_STORAGE: "Enhanced CT Image Storage",
    LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE: "Legacy Converted Enhanced CT Image Storage",
}
#: The PET SOP classes the pipeline converts, by name.
PET_SOP_CLASSES: dict[str, str] = {
    PET_IMAGE_STORAGE: "PET Image Storage",
    ENHANCED_PET_IMAGE_STORAGE: "Enhanced PET Image Storage",
    LEGACY_CONVERTED_ENHANCED_PET_IMAGE_STORAGE: "Legacy Converted Enhanced PET Image Storage",
}
#: Secondary capture SOP classes (single- and multi-frame variants).
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
#: Structured report SOP classes (dose reports are SRs: RDSR 88.67, enhanced/comprehensive SR).
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88"


def _label(series: SeriesRecord) -> str:
    return f"series {series.SeriesInstanceUID} ({series.SeriesDescription or 'no description'!r})"


def _joined(values: tuple[str, ...]) -> str:
    return "\\".join(values)


def _classes(names: dict[str, str]) -> str:
    return ", ".join(f"{name} {uid}" for uid, name in names.items())


def _is_dose_report(s: SeriesRecord) -> bool:
    return (
        s.Modality == "SR"
        or s.SOPClassUID.startswith(SR_PREFIX)
        or "dose report" in s.SeriesDescription.lower()
        or "dose info" in s.SeriesDescription.lower()
    )


def _is_localiser(s: SeriesRecord) -> bool:
    words = {w.upper() for w in s.ImageType}
    desc = s.SeriesDescription.lower()
    return bool(words & {"LOCALIZER", "PROJECTION IMAGE"}) or any(
        w in desc for w in ("topogram", "scout", "localizer", "localiser", "surview")
    )


def _is_derived(s: SeriesRecord) -> bool:
    words = [w.upper() for w in s.ImageType]
    desc = s.SeriesDescription.lower()
    return (bool(words) and words[0] == "DERIVED") or "MIP" in words or " mip" in f" {desc}"


@dataclass(frozen=True)
class DecoyRule:
    """One reason a series is not the case's CT or PET.

    Attributes
    ----------
    name
        Short name of the rule (``"localiser"``).
    applies
        True for a series the rule makes a decoy.
    why
        The sentence recorded for such a series, with the attribute values that decided.
    """

    name: str
    applies: Callable[[SeriesRecord], bool]
    why: Callable[[SeriesRecord], str]


#: What makes a series a decoy, in the order the rules are tried.
DECOY_RULES: tuple[DecoyRule, ...] = (
    DecoyRule(
        "dose-report",
        _is_dose_report,
        lambda s: f"dose report / structured report (Modality {s.Modality!r}, SOP class {s.SOPClassUID})",
    ),
    DecoyRule(
        "secondary-capture",
        lambda s: s.SOPClassUID.startswith(SECONDARY_CAPTURE_PREFIX),
        lambda s: f"secondary capture (SOP class {s.SOPClassUID})",
    ),
    DecoyRule(
        "other-modality",
        lambda s: s.Modality not in ("CT", "PT"),
        lambda s: f"Modality {s.Modality!r} is neither CT nor PT",
    ),
    DecoyRule(
        "localiser",
        _is_localiser,
        lambda s: f"localiser/topogram (ImageType '{_joined(s.ImageType)}')",
    ),
    DecoyRule(
        "derived",
        _is_derived,
        lambda s: f"derived or MIP series (ImageType '{_joined(s.ImageType)}')",
    ),
    DecoyRule(
        "ct-not-original-primary-axial",
        lambda s: s.Modality == "CT"
        and [w.upper() for w in s.ImageType[:3]] != ["ORIGINAL", "PRIMARY", "AXIAL"],
        lambda s: f"CT ImageType '{_joined(s.ImageType)}' is not ORIGINAL\\PRIMARY\\AXIAL",
    ),
    DecoyRule(
        "ct-not-ct-image-storage",
        lambda s: s.Modality == "CT" and s.SOPClassUID not in CT_SOP_CLASSES,
        lambda s: f"CT SOP class {s.SOPClassUID} is not one the pipeline converts ({_classes(CT_SOP_CLASSES)})",
    ),
    DecoyRule(
        "pet-not-pet-image-storage",
        lambda s: s.Modality == "PT" and s.SOPClassUID not in PET_SOP_CLASSES,
        lambda s: f"PET SOP class {s.SOPClassUID} is not one the pipeline converts ({_classes(PET_SOP_CLASSES)})",
    ),
    DecoyRule(
        "pet-not-attenuation-corrected",
        lambda s: s.Modality == "PT" and "ATTN" not in {w.upper() for w in s.CorrectedImage},
        lambda s: f"PET not attenuation-corrected (CorrectedImage '{_joined(s.CorrectedImage)}' has no ATTN)",
    ),
    DecoyRule(
        "pet-without-units",
        lambda s: s.Modality == "PT" and not s.Units.strip(),
        lambda s: "PET without Units (0054,1001): values cannot be interpreted",
    ),
    DecoyRule(
        # The release promises Bq/mL; counts (CNTS), SUV (GML) or other units would be mislabelled.
        "pet-not-bqml",
        lambda s: s.Modality == "PT" and s.Units.strip().upper() != "BQML",
        lambda s: f"PET Units {s.Units.strip()!r} is not BQML: the release carries activity concentration in Bq/mL only",
    ),
)


@dataclass(frozen=True)
class Selection:
    """The two series that make a case, and every other series with why it was ignored.

    Attributes
    ----------
    ct
        The diagnostic axial CT.
    pt
        The attenuation-corrected PET on the CT's frame of reference.
    ignored
        Every other series of the study with the reason, by SeriesInstanceUID.
    """

    ct: SeriesRecord
    pt: SeriesRecord
    ignored: tuple[IgnoredSeries, ...]


def decoy_reason(series: SeriesRecord) -> str | None:
    """The recorded reason ``series`` is a decoy, or None if it is a candidate.

    Parameters
    ----------
    series
        A series of the index.

    Returns
    -------
    str or None
        The sentence of the first :data:`DECOY_RULES` rule that applies.
    """
    for rule in DECOY_RULES:
        if rule.applies(series):
            return rule.why(series)
    return None


def _ignored(series: SeriesRecord, why: str) -> IgnoredSeries:
    return IgnoredSeries(
        SeriesInstanceUID=series.SeriesInstanceUID,
        Modality=series.Modality,
        SeriesDescription=series.SeriesDescription,
        why=why,
    )


def _listing(items: list[tuple[SeriesRecord, str]]) -> str:
    if not items:
        return "the study has no other series"
    return "; ".join(f"{_label(s)}: {why}" for s, why in items)


def select_series(study: StudyRecord) -> Selection:
    """Pick the diagnostic axial CT and the AC PET of ``study``.

    Parameters
    ----------
    study
        A study from :func:`curation.dicomindex.index_site`.

    Returns
    -------
    Selection

    Raises
    ------
    NoCTError, NoACPETError
        No candidate of that kind (the message lists every series and why it
        was not taken).
    FrameOfReferenceMismatchError
        Candidates exist but no CT and PET share a FrameOfReferenceUID.
    AmbiguousSeriesError
        More than one CT/PET pair shares a FrameOfReferenceUID.
    """
    decoys: list[tuple[SeriesRecord, str]] = []
    cts: list[SeriesRecord] = []
    pts: list[SeriesRecord] = []
    for series in study.series:
        why = decoy_reason(series)
        if why is not None:
            decoys.append((series, why))
        elif series.Modality == "CT":
            cts.append(series)
        else:
            pts.append(series)
    where = f"study {study.StudyInstanceUID}"
    if not cts:
        raise NoCTError(
            f"{where}: no diagnostic axial CT (ORIGINAL\\PRIMARY\\AXIAL, CT Image Storage or Enhanced "
            f"or Legacy Converted Enhanced CT, not a localiser); {_listing(decoys)}"
        )
    if not pts:
        raise NoACPETError(
            f"{where}: no attenuation-corrected PET (PET Image Storage or Enhanced or Legacy Converted Enhanced "
            f"PET, CorrectedImage with ATTN, Units BQML); "
            f"{_listing(decoys)}"
        )
    pairs = [(c, p) for c in cts for p in pts if c.FrameOfReferenceUID and c.FrameOfReferenceUID == p.FrameOfReferenceUID]
    if not pairs:
        found = "; ".join(
            f"{_label(s)} FrameOfReferenceUID {s.FrameOfReferenceUID or '(missing)'}" for s in cts + pts
        )
        raise FrameOfReferenceMismatchError(
            f"{where}: no CT and AC PET share a FrameOfReferenceUID: {found}"
        )
    if len(pairs) > 1:
        found = "; ".join(
            f"CT {_label(c)} + PET {_label(p)} on FrameOfReferenceUID {c.FrameOfReferenceUID}"
            for c, p in pairs
        )
        raise AmbiguousSeriesError(f"{where}: {len(pairs)} CT/PET pairs could be the case: {found}")
    ct, pt = pairs[0]
    ignored = [_ignored(s, why) for s, why in decoys]
    for series in cts + pts:
        if series is not ct and series is not pt:
            ignored.append(
                _ignored(
                    series,
                    f"not on the frame of reference of the selected pair ({series.FrameOfReferenceUID or 'missing'} "
                    f"vs {ct.FrameOfReferenceUID})",
                )
            )
    ignored.sort(key=lambda i: i.SeriesInstanceUID)
    return Selection(ct=ct, pt=pt, ignored=tuple(ignored))
