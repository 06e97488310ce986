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

UIDs are also names: the pipeline keys state and finds a site's
segmentations by the StudyInstanceUID.  A site's headers are data, not
trusted names: a StudyInstanceUID of ``../siteB/1.2.3`` joined to
``segmentations_dir`` would read another site's files into a release.  Every
UID the pipeline relies on is checked against DICOM PS3.5 section 9.1
(:func:`is_conforming_uid`), and a study with one that is not is rejected
(``invalid-uid``).  Paths under a configured folder are built by
:func:`path_under`, which checks the UID again and refuses a path that leaves
the folder once symbolic links are resolved.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from curation.errors import InvalidUIDError

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


def element_vr(ds: Dataset, tag: BaseTag, element: DataElement | RawDataElement | None = None) -> str | None:
    """Return the VR of an element without decoding its value when possible.

    Parameters
    ----------
    ds
        The dataset holding the element.
    tag
        The element's tag.
    element
        ``ds.get_item(tag)`` when the caller has it already (it is looked up otherwise).

    Returns
    -------
    str or None
        The VR written in the file (explicit VR), else the data dictionary's
        VR for a public tag, else the VR pydicom resolves for a private tag
        (its private dictionary, by creator, ``UN`` when unknown); None for a
        public tag missing from the dictionary.
    """
    raw = ds.get_item(tag) if element is None else element
    vr = getattr(raw, "VR", None)
    if vr and vr != "UN":
        return str(vr)
    if tag.is_private:
        return str(ds[tag].VR)  # decodes the element: pydicom looks its creator up
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def raw_element_key(raw: RawDataElement) -> tuple[Any, ...]:
    """A raw element's fields but its place in the file (``value_tell``: only in pydicom's messages).

    What pydicom decodes an element (and a sequence's items) from: the tag,
    the VR the file gives, the length (which tells an undefined-length
    sequence), the bytes and their encoding.  Two elements with the same key
    decode alike in datasets of the same character set.

    Parameters
    ----------
    raw
        An element not yet decoded.

    Returns
    -------
    tuple
        Hashable when the value is bytes (a deferred element's is None).
    """
    return (raw.tag, raw.VR, raw.length, raw.value, raw.is_implicit_VR, raw.is_little_endian)


def read_character_set(ds: Dataset) -> str | tuple[str, ...] | None:
    """The character set ``ds`` was read with (hashable), or None for a dataset not read from bytes."""
    charset = ds.original_character_set
    if not charset:
        return None
    return charset if isinstance(charset, str) else tuple(charset)


def seen_before(element: DataElement | RawDataElement | None, charset: Hashable | None, seen: set[Hashable]) -> bool:
    """Whether an undecoded element with these bytes, read with ``charset``, was looked at already; else noted in ``seen``.

    For the instances of one study, whose elements are mostly the same bytes:
    such an element decodes alike in every instance (:func:`raw_element_key`),
    so what was found in it once need not be looked for again.  A decoded or
    deferred element, or one of a dataset not read from bytes (``charset``
    None), is never passed over.
    """
    if charset is None or not isinstance(element, RawDataElement) or not isinstance(element.value, bytes):
        return False
    key = (raw_element_key(element), charset)
    if key in seen:
        return True
    seen.add(key)
    return False


def _tag_number(item: tuple[BaseTag, Any]) -> int:
    return int(item[0])


def elements_in_tag_order(ds: Dataset) -> Iterator[tuple[BaseTag, DataElement | RawDataElement]]:
    """Yield ``(tag, ds.get_item(tag))`` in increasing tag order, what ``Dataset.elements()`` yields.

    ``Dataset.elements()`` sorts with ``BaseTag``'s Python-level comparison and
    looks every tag up again; here the ``(tag, element)`` pairs of
    ``Dataset.items()`` are sorted as the integers the tags are (the same
    order), and only a deferred element (a raw one without its value) is
    looked up with ``get_item``, which reads it.

    Parameters
    ----------
    ds
        A dataset (or sequence item); nothing is converted except what
        ``get_item`` converts (a deferred element).

    Yields
    ------
    tuple
        The tag and its element, raw while it has not been converted.
    """
    for tag, element in sorted(ds.items(), key=_tag_number):
        if isinstance(element, RawDataElement) and element.value is None:
            element = ds.get_item(tag)
        yield tag, element


def iter_uids(ds: Dataset, *, skip: AbstractSet[int] = frozenset()) -> Iterator[str]:
    """Yield every identifying UID in ``ds`` and its sequences, at any depth.

    Only UI elements (read from their undecoded bytes) and sequences are
    looked at, so a header is walked without converting its other values.

    Parameters
    ----------
    ds
        A dataset (or sequence item), read with or without pixel data; it is
        not modified.
    skip
        Tags of ``ds``'s own elements (not of its sequences' items) not to
        look at: the caller has their UIDs already.

    Yields
    ------
    str
        Each UID outside :data:`DICOM_UID_ROOT`, in tag order, possibly
        repeated.
    """
    for tag, raw in elements_in_tag_order(ds):
        if skip and int(tag) in skip:  # an int: BaseTag's == is Python code
            continue
        vr = element_vr(ds, tag, raw)
        if vr == "UI":
            yield from uid_strings(raw.value)
        elif vr == "SQ":
            for item in ds[tag].value or ():
                yield from iter_uids(item)


# ---------------------------------------------------------------------------
# conforming UIDs, and paths named by them

#: PS3.5 9.1: at most 64 characters.
UID_MAX_LENGTH = 64
#: PS3.5 9.1: digits and dots; no empty component; no leading zero unless the component is "0".
_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*", re.ASCII)
_SHOWN = 80


def is_conforming_uid(value: object) -> bool:
    """Whether ``value`` is a DICOM UID (PS3.5 9.1).

    1 to 64 characters, only digits and dots, no empty component (no leading,
    trailing or double dot), no component with a leading zero unless it is
    exactly ``"0"``.

    Parameters
    ----------
    value
        The value as read (a str; anything else is not a UID).

    Returns
    -------
    bool
    """
    return (
        isinstance(value, str)
        and 0 < len(value) <= UID_MAX_LENGTH
        and _UID.fullmatch(value) is not None
    )


def shown(value: object) -> str:
    """``repr`` of a header value for a message, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 5] + "...'"


def check_uid(value: object, *, keyword: str, where: str) -> str:
    """Return ``value`` when it is a conforming UID; raise otherwise.

    Parameters
    ----------
    value
        The value read from a header.
    keyword
        Its attribute (``"StudyInstanceUID"``), named in the error.
    where
        What it belongs to (``"file /x/y.dcm"``, ``"study 1.2.3"``), named in the error.

    Returns
    -------
    str

    Raises
    ------
    InvalidUIDError
        With a sentence naming ``where``, the attribute, the value and the rule it breaks.
    """
    if is_conforming_uid(value):
        return value  # type: ignore[return-value]
    raise InvalidUIDError(
        f"{where}: {keyword} {shown(value)} is not a DICOM UID (PS3.5 9.1: 1-64 characters, "
        "digits and dots only, no empty component, no leading zero in a component other than '0'); "
        "the study cannot be released under it"
    )


def path_under(root: Path, uid: str, *, suffix: str = "", keyword: str = "StudyInstanceUID") -> Path:
    """``root / (uid + suffix)``, checked: a conforming UID, and inside ``root`` after resolving links.

    Parameters
    ----------
    root
        A configured folder (``segmentations_dir``, ``lesions_dir``).
    uid
        The header value naming the entry (checked with :func:`check_uid`).
    suffix
        Appended to the name (``".nii.gz"``).
    keyword
        The attribute ``uid`` comes from, for the error message.

    Returns
    -------
    Path
        The path as joined (not resolved); it need not exist.

    Raises
    ------
    InvalidUIDError
        ``uid`` is not a conforming UID.
    OutsideFolderError
        The path, once symbolic links are resolved, is not inside ``root``.
    """
    check_uid(uid, keyword=keyword, where=f"a path under {root}")
    path = Path(root) / f"{uid}{suffix}"
    require_inside(path, root)
    return path


class OutsideFolderError(ValueError):
    """A path under a configured folder leads outside it (a symbolic link)."""


def require_inside(path: Path, root: Path) -> Path:
    """Return ``path`` when it resolves (symbolic links followed) to a place inside ``root``.

    Parameters
    ----------
    path
        A path built under ``root``; it need not exist.
    root
        The configured folder it must stay in.

    Returns
    -------
    Path
        ``path`` unchanged.

    Raises
    ------
    OutsideFolderError
        Naming the path, where it leads and the folder.
    """
    real_root = Path(root).resolve()
    target = Path(path).resolve()
    if not target.is_relative_to(real_root):
        raise OutsideFolderError(
            f"{path}: leads to {target} (a symbolic link), outside its configured folder {real_root}; "
            "files are read only from inside the configured folder"
        )
    return Path(path)
