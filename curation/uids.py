"""DICOM UIDs that identify: every UID of a dataset outside the DICOM root.

UIDs under :data:`DICOM_UID_ROOT` are defined by the DICOM standard (SOP
classes, transfer syntaxes, coding schemes): public constants, never
identifiers.  Every other UID (study, series, instance, frame of reference,
referenced instances, private UIDs, ...) was minted for one patient's data and
is collected as sensitive for the release leak scan.  Ingest
(:func:`curation.ingest.sensitive_values`), the de-identification gate
(:func:`anonymization.gate.check_datasets`) and the leak scan
(:func:`anonymization.leakscan.usable_values`) all use this module, so there
is one root and one walk.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

#: UIDs under this root are DICOM-defined (SOP classes, transfer syntaxes), not identifiers.
DICOM_UID_ROOT = "1.2.840.10008."


def is_dicom_defined(uid: str) -> bool:
    """Tell whether ``uid`` is defined by the DICOM standard (under :data:`DICOM_UID_ROOT`).

    Parameters
    ----------
    uid
        A UID, already stripped of padding.

    Returns
    -------
    bool
        True for a public DICOM constant, False for a UID that may identify.
    """
    return uid.startswith(DICOM_UID_ROOT)


def uid_strings(value: Any) -> Iterator[str]:
    """Yield the identifying UIDs held by one element value.

    Parameters
    ----------
    value
        The value of a VR UI element: undecoded bytes (backslash-separated),
        a string, a multi-value, or None.

    Yields
    ------
    str
        Each UID stripped of padding, skipping empty ones and those under
        :data:`DICOM_UID_ROOT`.
    """
    if value is None:
        return
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("ascii", errors="replace")
    items = value if isinstance(value, (list, tuple, MultiValue)) else str(value).split("\\")
    for item in items:
        uid = str(item).strip(" \x00")
        if uid and not is_dicom_defined(uid):
            yield uid


def element_vr(ds: Dataset, tag: BaseTag) -> str | None:
    """Return the VR of an element without decoding its value when possible.

    Parameters
    ----------
    ds
        The dataset holding the element.
    tag
        The element's tag.

    Returns
    -------
    str or None
        The VR written in the file (explicit VR), else the data dictionary's
        VR for a public tag, else the VR pydicom resolves for a private tag
        (its private dictionary, by creator, ``UN`` when unknown); None for a
        public tag missing from the dictionary.
    """
    raw = ds.get_item(tag)
    vr = getattr(raw, "VR", None)
    if vr and vr != "UN":
        return str(vr)
    if tag.is_private:
        return str(ds[tag].VR)  # decodes the element: pydicom looks its creator up
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def iter_uids(ds: Dataset) -> Iterator[str]:
    """Yield every identifying UID in ``ds`` and its sequences, at any depth.

    Only UI elements (read from their undecoded bytes) and sequences are
    looked at, so a header is walked without converting its other values.

    Parameters
    ----------
    ds
        A dataset (or sequence item), read with or without pixel data; it is
        not modified.

    Yields
    ------
    str
        Each UID outside :data:`DICOM_UID_ROOT`, in tag order, possibly
        repeated.
    """
    for raw in ds.elements():
        vr = element_vr(ds, raw.tag)
        if vr == "UI":
            yield from uid_strings(raw.value)
        elif vr == "SQ":
            for item in ds[raw.tag].value or ():
                yield from iter_uids(item)
