"""De-identification gate: refuse a study whose headers still carry identifiers.

Sites deliver data they say is anonymised; we verify, we do not trust.  Every
element of every header of the selected series, nested sequences included, is
checked against the rule table ``anonymization/data/deid_profile.csv``, so a
data steward can read and review the rules.

The table holds every row of DICOM PS3.15 Annex E **Table E.1-1, edition
2024b** (Basic Application Level Confidentiality Profile; 621 rows, source
``anonymization/data/ps3.15_table_e1-1_2024b.json``, rebuilt by
``tools/build_deid_profile.py``), each with the standard's basic-profile action
and the actions of the options the gate applies: Retain Patient
Characteristics, Retain Device Identity, Retain Longitudinal Temporal
Information with Full Dates (the release itself applies the ``[release] dates``
policy, see :mod:`anonymization.dates`) and Retain Safe Private; plus the
Clean Descriptors column, which the ``descriptor`` rows lean on.  After those
rows come the project's own (``source`` ``petct-release``): the
de-identification records, BurnedInAnnotation and known vendor private elements.

What the gate enforces
----------------------
The gate checks already-anonymised data and never changes it, so the
standard's actions become checks.  An attribute the profile removes (X),
empties (Z) or replaces by a dummy (D) must be empty or absent
(``must-be-empty``): a checker cannot tell a dummy from a real value, nor a
"cleaned" value (an option's C) from one that was not cleaned, so only an
option's K (keep) lets a value through (``retain``).  UIDs (U) are allowed and
collected (``uid``).  A row's action may be stricter than the standard's but
never weaker: :func:`parse_profile` refuses a row whose action is not in
:func:`allowed_actions` for its standard columns.

Actions
-------
``must-be-empty``
    Any non-empty value (a sequence with an item counts) is a ``phi-detected``
    finding; the value is collected as sensitive.
``pseudonym``
    PatientName / PatientID: with a site ``pseudonym_pattern`` the value must
    match it in full; without one, a PatientName with a given-name component
    (``family^given``) is taken for a real name.  Empty values pass (the profile
    allows an empty value).  The value is always collected as sensitive.
``must-be-yes``
    PatientIdentityRemoved must be present and ``YES`` in every instance.
``burned-in``
    BurnedInAnnotation ``YES`` is a ``burned-in-annotation`` finding.
``uid``
    The value (or every UID inside the sequence) is collected as sensitive.
``retain`` / ``descriptor``
    Allowed; not collected (characteristics and device identity are kept by
    the options, descriptions are needed for selection and never published).
``review``
    Private elements known to be harmless in practice but not checkable; listed
    in :attr:`GateReport.private_review`.  The row ``(GGGG,EEEE)`` (E.1-1's
    "Private Attributes") says what happens to a private element without a row
    of its own: ``review`` (listed; conversion carries no private data into the
    release) or ``must-be-empty``.

Besides the rows: every value of VR UI outside the DICOM root ``1.2.840.10008``
is collected as sensitive wherever it appears (:func:`curation.uids.iter_uids`,
the walk ingest uses too); a non-empty private element of VR PN is a
``phi-detected`` finding; and a DA, DT or TM value that the gate lets
through must be written with the characters of a date or time only (a letter
means text such as a name: ``phi-detected``, rule ``temporal-text``).
In an implicit-VR file a private element of a creator pydicom does not know has
VR UN: its bytes are decoded as text, and text shaped like a person name
(``family^given``) is a PN, text shaped like a UID a UI, with the same
consequences as in explicit VR.

Findings and error messages name attributes (tag and keyword), never values.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from importlib import resources
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag, private_dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import AMBIGUOUS_VR, PersonName

from anonymization.dates import TEMPORAL_VRS, is_temporal_text
from curation.dicomfile import READ_ERRORS
from curation.errors import (
    AttributeFinding,
    BurnedInAnnotationError,
    PHIDetectedError,
    RejectReason,
    UnreadableError,
)
from curation.uids import element_vr, iter_uids, raw_element_key, read_character_set, uid_strings

logger = logging.getLogger(__name__)

PROFILE_RESOURCE = "deid_profile.csv"
#: The PS3.15 edition the table transcribes, and its machine-readable source (package data).
STANDARD_EDITION = "2024b"
STANDARD_RESOURCE = "ps3.15_table_e1-1_2024b.json"
#: ``source`` of a row of Table E.1-1, and of a row the project adds.
SOURCE_STANDARD = f"PS3.15 {STANDARD_EDITION} E.1-1"
SOURCE_PROJECT = "petct-release"
#: E.1-1's row "Private Attributes" (every element of an odd group).
PRIVATE_DEFAULT_TAG = "(GGGG,EEEE)"
#: The option columns of E.1-1 the gate applies.
APPLIED_OPTIONS: tuple[str, ...] = ("rtnPatCharsOpt", "rtnDevIdOpt", "rtnLongFullDatesOpt", "rtnSafePrivOpt")
#: Every option column the table carries (Clean Descriptors: for the ``descriptor`` rows).
OPTION_COLUMNS: tuple[str, ...] = (*APPLIED_OPTIONS, "cleanDescOpt")
#: The columns of ``deid_profile.csv``, in order.
CSV_COLUMNS: tuple[str, ...] = (
    "tag", "creator", "keyword", "name", "source", "basicProfile", *OPTION_COLUMNS, "action", "reason",
)
#: Basic-profile actions of E.1-1 (2024b).
BASIC_ACTIONS = frozenset({"X", "Z", "D", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"})
_OPTION_FIELDS = {
    "rtnPatCharsOpt": "rtn_pat_chars",
    "rtnDevIdOpt": "rtn_dev_id",
    "rtnLongFullDatesOpt": "rtn_long_full_dates",
    "rtnSafePrivOpt": "rtn_safe_priv",
    "cleanDescOpt": "clean_desc",
}
_PATIENT_IDENTITY_REMOVED = Tag(0x0012, 0x0062)
_MEDIA_STORAGE_SOP_INSTANCE_UID = Tag(0x0002, 0x0003)
_PIXEL_REPRESENTATION = Tag(0x0028, 0x0103)
#: judge an element once per study (see :meth:`_Collector.walk`); False only in the tests that compare both walks
_MEMOIZE = True
#: a longer value is judged in every instance: hashing and comparing it costs about what judging it does
_MEMO_MAX_BYTES = 1 << 16
#: in the memo's key: no private creator for the block, no PixelRepresentation in the dataset
_ABSENT = ("absent",)
#: what converting a malformed element can raise (pydicom and the struct/codec layers under it)
_DECODE_ERRORS = (*READ_ERRORS, UnicodeError, LookupError)


class GateAction(StrEnum):
    """What the gate does with an attribute (the ``action`` column of the table)."""

    MUST_BE_EMPTY = "must-be-empty"
    PSEUDONYM = "pseudonym"
    MUST_BE_YES = "must-be-yes"
    BURNED_IN = "burned-in"
    UID = "uid"
    RETAIN = "retain"
    DESCRIPTOR = "descriptor"
    REVIEW = "review"


@dataclass(frozen=True)
class GateRule:
    """One row of the rule table.

    Attributes
    ----------
    tag
        ``"(gggg,eeee)"``; private rows ``"(gggg,xxee)"``, repeating groups
        ``"(60xx,3000)"``, E.1-1's private attributes ``"(GGGG,EEEE)"``.
    keyword
        The attribute's DICOM keyword (a private row: the name the table gives it).
    action
        What the gate does with the attribute.
    reason
        Why, for the data steward (the profile option or basic profile action).
    creator
        The private creator of a private row; ``""`` for public rows.
    name
        The attribute's name as E.1-1 gives it.
    source
        :data:`SOURCE_STANDARD` for a row of E.1-1, :data:`SOURCE_PROJECT` otherwise.
    basic_profile, rtn_pat_chars, rtn_dev_id, rtn_long_full_dates, rtn_safe_priv, clean_desc
        E.1-1's actions for the row: the basic profile and the option columns
        (``""`` where the standard gives none, and for the project's own rows).
    """

    tag: str
    keyword: str
    action: GateAction
    reason: str
    creator: str = ""
    name: str = ""
    source: str = SOURCE_PROJECT
    basic_profile: str = ""
    rtn_pat_chars: str = ""
    rtn_dev_id: str = ""
    rtn_long_full_dates: str = ""
    rtn_safe_priv: str = ""
    clean_desc: str = ""

    @staticmethod
    def option_field(column: str) -> str:
        """Name the field that holds an E.1-1 option column.

        Parameters
        ----------
        column
            One of :data:`OPTION_COLUMNS` (``"rtnDevIdOpt"``, ...).

        Returns
        -------
        str
            The field name (``"rtn_dev_id"``, ...).
        """
        return _OPTION_FIELDS[column]

    def option(self, column: str) -> str:
        """Give the row's action under one option column.

        Parameters
        ----------
        column
            One of :data:`OPTION_COLUMNS`.

        Returns
        -------
        str
            ``""``, ``"K"`` (keep) or ``"C"`` (clean).
        """
        return str(getattr(self, _OPTION_FIELDS[column]))

    def options_text(self) -> str:
        """Give the row's non-empty option actions for messages.

        Returns
        -------
        str
            ``"rtnDevIdOpt=K, ..."``; ``""`` when no option names the row.
        """
        return ", ".join(f"{c}={self.option(c)}" for c in OPTION_COLUMNS if self.option(c))

    @property
    def kept_by_an_option(self) -> bool:
        """True when an option the gate applies keeps (K) the attribute."""
        return any(self.option(c) == "K" for c in APPLIED_OPTIONS)


def derived_action(rule: GateRule) -> GateAction:
    """The gate's default action for a row of E.1-1 under the options it applies.

    Replaced UIDs (U, and the reference sequences X/Z/U*) are collected
    (``uid``); an attribute an applied option keeps (K) is ``retain``;
    everything else (X, Z, D, and C: a checker cannot verify cleaning) must be
    empty or absent.  The private-attributes row lists unknown private
    elements for review.

    Parameters
    ----------
    rule
        A row of E.1-1 (its action is not looked at).

    Returns
    -------
    GateAction
        The action ``tools/build_deid_profile.py`` gives a row new to the table.
    """
    if rule.tag == PRIVATE_DEFAULT_TAG:
        return GateAction.REVIEW
    if rule.basic_profile in ("U", "X/Z/U*"):
        return GateAction.UID
    return GateAction.RETAIN if rule.kept_by_an_option else GateAction.MUST_BE_EMPTY


def allowed_actions(rule: GateRule) -> frozenset[GateAction]:
    """The actions a row of E.1-1 may have: the derived one and anything stricter, never weaker.

    * ``must-be-empty``: always (the strictest check);
    * ``retain``: when an applied option keeps the attribute (K);
    * ``uid``: for UIDs (U), when an option keeps it, or for a sequence the
      profile may empty or replace by a dummy (Z/D: its items are walked with
      every rule and their UIDs collected);
    * ``pseudonym``: when the profile allows an empty or dummy value (Z, D);
    * ``descriptor``: when the Clean Descriptors Option would keep a cleaned value;
    * ``review``: only for the private-attributes row (Retain Safe Private: C).

    The project's own rows (not in E.1-1) may have any action.

    Parameters
    ----------
    rule
        A row of the table.

    Returns
    -------
    frozenset[GateAction]
        The actions :func:`parse_profile` accepts for the row.
    """
    if rule.source != SOURCE_STANDARD:
        return frozenset(GateAction)
    if rule.tag == PRIVATE_DEFAULT_TAG:
        return frozenset({GateAction.REVIEW, GateAction.MUST_BE_EMPTY})
    basic = rule.basic_profile
    allowed = {GateAction.MUST_BE_EMPTY}
    if rule.kept_by_an_option:
        allowed |= {GateAction.RETAIN, GateAction.UID}
    if "U" in basic:
        allowed.add(GateAction.UID)
    if "Z" in basic or "D" in basic:
        allowed.add(GateAction.PSEUDONYM)
        if _dictionary_vr(rule.tag) == "SQ":
            allowed.add(GateAction.UID)
    if rule.clean_desc == "C":
        allowed.add(GateAction.DESCRIPTOR)
    return frozenset(allowed)


def _dictionary_vr(tag: str) -> str | None:
    try:
        return str(dictionary_VR(int(tag[1:5].replace("xx", "00") + tag[6:10].replace("xxxx", "3000"), 16)))
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class GateFinding:
    """One attribute that stops a study.  Never holds the attribute's value.

    Attributes
    ----------
    tag
        ``"(gggg,eeee)"`` as found (private elements with their block).
    keyword
        The keyword, or ``"<creator>:<keyword>"`` for private elements.
    rule
        The action of the rule broken (``"must-be-empty"``, ...) or
        ``"private-person-name"``.
    reason_code
        ``phi-detected`` or ``burned-in-annotation``.
    why
        A sentence saying what is wrong (naming the attribute, never its value).
    """

    tag: str
    keyword: str
    rule: str
    reason_code: RejectReason
    why: str


@dataclass(frozen=True)
class GateReport:
    """Result of :func:`check_datasets` over the instances of one study.

    Attributes
    ----------
    findings
        What stops the study, deduplicated across instances (first occurrence
        order); empty when the study may proceed.
    private_review
        Private elements that are neither known-safe nor known-identifying,
        as ``"(gggg,xxee) creator 'X'"``, sorted.
    sensitive_values
        Every identifying value seen (UIDs, pseudonyms, every value of a
        must-be-empty attribute, ...), stripped and non-empty, for the leak
        scan.  Never released.
    """

    findings: tuple[GateFinding, ...] = ()
    private_review: tuple[str, ...] = ()
    sensitive_values: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class GateProfile:
    """The rule table, precompiled for lookups by tag.

    Attributes
    ----------
    rules
        Every row, in table order.
    public
        Public rows by tag (``0xggggeeee``).
    repeating
        Repeating-group rows by tag with the group's low byte masked (0x60xx -> 0x6000).
    curve_group
        The ``(50xx,xxxx)`` row (every element of a curve group), if any.
    private
        Private rows by (creator, group, element offset).
    private_default
        The ``(GGGG,EEEE)`` row: what happens to a private element without a row.
    """

    rules: tuple[GateRule, ...]
    public: dict[int, GateRule]
    repeating: dict[int, GateRule]
    curve_group: GateRule | None
    private: dict[tuple[str, int, int], GateRule]
    private_default: GateRule | None = None


def _parse_tag(text: str, *, where: str) -> tuple[str, str]:
    match = re.fullmatch(r"\(([0-9A-Fa-fx]{4}),([0-9A-Fa-fx]{4})\)", text.strip())
    if match is None:
        raise ValueError(f"{where}: tag {text!r} is not of the form (gggg,eeee)")
    return match.group(1).upper().replace("X", "x"), match.group(2).upper().replace("X", "x")


def _standard_columns(row: dict[str, str], *, where: str) -> dict[str, str]:
    """The E.1-1 columns of a row (``source``, ``name``, basic profile, options), checked."""
    source = (row.get("source") or SOURCE_PROJECT).strip()
    if source not in (SOURCE_STANDARD, SOURCE_PROJECT):
        raise ValueError(f"{where}: source {source!r} is not {SOURCE_STANDARD!r} or {SOURCE_PROJECT!r}")
    basic = (row.get("basicProfile") or "").strip()
    options = {column: (row.get(column) or "").strip() for column in OPTION_COLUMNS}
    if source == SOURCE_STANDARD and basic not in BASIC_ACTIONS:
        raise ValueError(f"{where}: basicProfile {basic!r} is not one of {', '.join(sorted(BASIC_ACTIONS))}")
    for column, value in options.items():
        if value not in ("", "K", "C"):
            raise ValueError(f"{where}: {column} {value!r} is not '', 'K' or 'C'")
    if source == SOURCE_PROJECT and (basic or any(options.values())):
        raise ValueError(f"{where}: a {SOURCE_PROJECT} row has no PS3.15 actions (basicProfile, options)")
    return {
        "name": (row.get("name") or "").strip(),
        "source": source,
        "basic_profile": basic,
        **{_OPTION_FIELDS[column]: value for column, value in options.items()},
    }


def parse_profile(rows: Iterable[dict[str, str]], *, source: str = "deid_profile.csv") -> GateProfile:
    """Validate rule-table rows and index them by tag.

    Parameters
    ----------
    rows
        Mappings with the columns :data:`CSV_COLUMNS` (``tag, creator, keyword,
        action, reason`` at least; a row without ``source`` is a project row).
    source
        Name used in error messages.

    Returns
    -------
    GateProfile
        The rows, in order and indexed by tag.

    Raises
    ------
    ValueError
        A row with a bad tag, action, source or PS3.15 column, an empty keyword
        or reason, a duplicate tag, or an action weaker than PS3.15 allows for
        the row under our options (:func:`allowed_actions`), naming the row.
    """
    rules: list[GateRule] = []
    public: dict[int, GateRule] = {}
    repeating: dict[int, GateRule] = {}
    private: dict[tuple[str, int, int], GateRule] = {}
    curve_group: GateRule | None = None
    private_default: GateRule | None = None
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{source} line {number}"
        try:
            action = GateAction(row["action"].strip())
        except ValueError:
            allowed = ", ".join(a.value for a in GateAction)
            raise ValueError(f"{where}: action {row['action']!r} is not one of {allowed}") from None
        keyword, reason = row["keyword"].strip(), row["reason"].strip()
        if not keyword or not reason:
            raise ValueError(f"{where}: keyword and reason must not be empty")
        creator = (row.get("creator") or "").strip()
        standard = _standard_columns(row, where=where)
        if row["tag"].strip().upper() == PRIVATE_DEFAULT_TAG:
            rule = GateRule(PRIVATE_DEFAULT_TAG, keyword, action, reason, creator, **standard)
            if creator or private_default is not None:
                raise ValueError(f"{where}: {PRIVATE_DEFAULT_TAG} is one row without a creator")
            private_default = rule
        else:
            group, element = _parse_tag(row["tag"], where=where)
            rule = GateRule(f"({group},{element})", keyword, action, reason, creator, **standard)
        if action not in allowed_actions(rule):
            allowed = ", ".join(sorted(a.value for a in allowed_actions(rule)))
            raise ValueError(
                f"{where}: {rule.tag} {keyword}: action {action.value!r} is weaker than PS3.15 "
                f"{STANDARD_EDITION} allows under our options (basic profile {rule.basic_profile}"
                f"{', ' + rule.options_text() if rule.options_text() else ''}); allowed: {allowed}"
            )
        if rule is private_default:
            rules.append(rule)
            continue
        if creator:
            if rule.source == SOURCE_STANDARD:
                raise ValueError(f"{where}: a row of E.1-1 has no private creator")
            if "x" in group or not element.startswith("xx") or int(group, 16) % 2 == 0:
                raise ValueError(f"{where}: private rows need an odd group and an element 'xxee', got {rule.tag}")
            key = (creator, int(group, 16), int(element[2:], 16))
            if key in private:
                raise ValueError(f"{where}: duplicate private rule {rule.tag} creator {creator!r}")
            private[key] = rule
        elif group == "50xx" and element == "xxxx":
            curve_group = rule
        elif group.endswith("xx"):
            if "x" in element:
                raise ValueError(f"{where}: repeating-group rows need a fixed element, got {rule.tag}")
            masked = (int(group[:2], 16) << 24) | int(element, 16)
            if masked in repeating:
                raise ValueError(f"{where}: duplicate rule {rule.tag}")
            repeating[masked] = rule
        else:
            if "x" in element:
                raise ValueError(f"{where}: public rows need a fixed tag, got {rule.tag}")
            value = int(group + element, 16)
            if value in public:
                raise ValueError(f"{where}: duplicate rule {rule.tag}")
            public[value] = rule
        rules.append(rule)
    return GateProfile(tuple(rules), public, repeating, curve_group, private, private_default)


@lru_cache(maxsize=1)
def profile_digest() -> str:
    """sha256 of the packaged rule table.

    Part of ingest's fingerprint, so a changed table re-checks every study.

    Returns
    -------
    str
        The hex digest of ``anonymization/data/deid_profile.csv``'s bytes.
    """
    data = resources.files("anonymization").joinpath("data", PROFILE_RESOURCE).read_bytes()
    return hashlib.sha256(data).hexdigest()


@lru_cache(maxsize=1)
def load_profile() -> GateProfile:
    """The packaged rule table (parsed once per process).

    Returns
    -------
    GateProfile
        ``anonymization/data/deid_profile.csv``, parsed by :func:`parse_profile`.

    Raises
    ------
    ValueError
        When the packaged table is malformed (see :func:`parse_profile`).
    """
    text = resources.files("anonymization").joinpath("data", PROFILE_RESOURCE).read_text(encoding="utf-8")
    return parse_profile(csv.DictReader(io.StringIO(text, newline="")), source=PROFILE_RESOURCE)


# ---------------------------------------------------------------------------
# values


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, DicomSequence):
        return len(value) == 0
    if isinstance(value, PersonName):
        return not str(value).strip(" ^=")
    if isinstance(value, (bytes, bytearray)):
        return not bytes(value).strip(b" \x00")
    if isinstance(value, (list, MultiValue)):
        return all(_is_empty(v) for v in value)
    return not str(value).strip(" \x00")


def _person_name_strings(name: str) -> Iterator[str]:
    """The whole name and its components (family, given, ...).

    A name typed with spaces or commas instead of ``^`` ("Hans Mueller") is
    also given with its words joined by ``^``: the leak scan takes a value
    with ``^`` for a person name and finds its words in any order.
    """
    whole = name.strip(" ^=")
    if whole:
        yield whole
    for group in whole.split("="):
        for part in group.split("^"):
            if part.strip():
                yield part.strip()
    words = [w for w in re.split(r"[\s,]+", whole) if w]
    if "^" not in whole and len(words) > 1:
        yield "^".join(words)


def _text_of_bytes(raw: bytes) -> str | None:
    """Printable text (UTF-8, else Latin-1) of a binary value, or None if it is not text."""
    data = raw.strip(b" \x00")
    if not data or len(data) > 1024:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text if text.isprintable() else None


#: the text of a person name: letters (any script), spaces, ``. , ' -`` and the separators ``^ =``
_NAME_TEXT = re.compile(r"[^\W\d_](?:[^\W\d_]|[ .,'^=-])*")
_UID_TEXT = re.compile(r"[0-9]+(?:\.[0-9]+)+")


def _implicit_private_value(raw: bytes) -> tuple[str, Any]:
    """The VR and value of a private element whose VR the file does not say (implicit VR: UN).

    Text shaped like a person name (``family^given``: letters, the ``^``
    separator, spaces and ``. , ' -``) is taken for a PN, text shaped like a
    UID for a UI; anything else stays UN (bytes).
    """
    text = _text_of_bytes(raw)
    if text is None:
        return "UN", raw
    if "^" in text and _NAME_TEXT.fullmatch(text):
        return "PN", PersonName(text)
    if _UID_TEXT.fullmatch(text):
        return "UI", text
    return "UN", raw


def _value_strings(value: Any, vr: str) -> Iterator[str]:
    """Every non-empty string form of an element value (for the sensitive set)."""
    if value is None or isinstance(value, DicomSequence):
        return
    items = list(value) if isinstance(value, (list, MultiValue)) else [value]
    for item in items:
        if item is None:
            continue
        if vr == "PN" or isinstance(item, PersonName):
            yield from _person_name_strings(str(item))
        elif isinstance(item, (bytes, bytearray)):
            text = _text_of_bytes(bytes(item))
            if text:
                yield text
        else:
            text = str(item).strip(" \x00")
            if text:
                yield text


def _has_given_name(name: str) -> bool:
    """True when a PN value has a non-empty component after the family name."""
    alphabetic = name.split("=")[0]
    return any(part.strip() for part in alphabetic.split("^")[1:])


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _decoding_context(ds: pydicom.Dataset) -> Hashable | None:
    """What, besides its own bytes, decides how pydicom decodes a raw element of ``ds``.

    * the character set it decodes text with: the SpecificCharacterSet read
      with the file (a sequence's items inherit it unless their bytes carry
      their own);
    * the PixelRepresentation a sequence hands its items, for their ``US or
      SS`` elements: ``ds``'s own element as it is now, else the value
      pydicom noted on ``ds`` (``_pixel_rep``; both are taken, whichever
      decides).

    Parameters
    ----------
    ds
        A top-level dataset.

    Returns
    -------
    Hashable or None
        None (no memo for ``ds``) for a dataset not read from bytes (pydicom
        then decodes with its current SpecificCharacterSet), for one whose
        PixelRepresentation is written with a VR other than US (decoding a
        sequence decodes it, and :func:`curation.uids.iter_uids` would read
        a UI one), or when a part cannot be hashed.
    """
    charset = read_character_set(ds)
    if charset is None:
        return None
    pixel_representation = ds.get_item(_PIXEL_REPRESENTATION)
    own: Any = _ABSENT
    if isinstance(pixel_representation, RawDataElement):
        if pixel_representation.VR not in (None, "US", "UN"):
            return None
        own = raw_element_key(pixel_representation)
    elif pixel_representation is not None:
        own = pixel_representation.value
    context = (charset, own, getattr(ds, "_pixel_rep", None))
    try:
        hash(context)
    except TypeError:
        return None
    return context


# ---------------------------------------------------------------------------
# walking


class _Collector:
    """Accumulates findings, review notes and sensitive values over a study."""

    def __init__(
        self, profile: GateProfile, pseudonym_pattern: str, *, identity_flag_required: bool = True,
        memoize: bool = True,
    ) -> None:
        self.profile = profile
        self.identity_flag_required = identity_flag_required
        self.pattern = re.compile(pseudonym_pattern) if pseudonym_pattern else None
        self.findings: dict[tuple[str, str, str], GateFinding] = {}
        self.review: set[str] = set()
        self.sensitive: set[str] = set()
        self.memoize = memoize
        self.judged: set[Hashable] = set()  # the keys (:meth:`_judged_key`) of the top-level elements judged

    # -- results
    def add_finding(self, tag: str, keyword: str, rule: str, reason: RejectReason, why: str) -> None:
        self.findings.setdefault((tag, keyword, rule), GateFinding(tag, keyword, rule, reason, why))

    def collect(self, value: Any, vr: str) -> None:
        self.sensitive.update(_value_strings(value, vr))

    # -- walking
    def walk(self, ds: pydicom.Dataset, *, top_level: bool) -> frozenset[int]:
        """Judge every element of ``ds`` and of its sequences' items.

        Most elements of a study are the same bytes in every instance, and
        judging one has only idempotent effects (findings by key, sets), so a
        top-level element whose :meth:`_judged_key` was judged in an earlier
        instance is passed over: its findings were added then, in the same
        order.  A sequence (all its items are in its bytes) is passed over
        whole, which is where the time goes.

        Only top-level elements: judging leaves an element decoded or not, and
        :func:`curation.uids.iter_uids` reads a UI element's bytes and its
        decoded value differently (non-ASCII, padding), so the UIDs of an item
        whose elements were passed over could differ from the walk's without
        the memo.  A top-level element's state after the walk depends on its
        key alone (the one element decoding another decodes is
        PixelRepresentation, when a sequence is decoded; see
        :func:`_decoding_context`), so the UIDs ``iter_uids`` would find in a
        passed-over element are those it found in the one judged before.

        Returns
        -------
        frozenset
            The tags of the top-level elements passed over (their UIDs are
            collected already); empty for items and without the memo.
        """
        if top_level:
            self._check_identity_removed(ds)
        context = _decoding_context(ds) if top_level and self.memoize else None
        creators: list[dict[tuple[int, int], str]] = []  # filled on the first private element
        passed_over: list[int] = []
        # the elements as they are (raw until a rule needs their value); a public element is not
        # converted by the walk before its own turn, so the snapshot is current when it comes
        for tag, element in list(ds.items()):
            try:
                key = None if context is None else self._judged_key(ds, tag, element, creators, context)
                if key is not None and key in self.judged:
                    passed_over.append(int(tag))
                    continue
                self._walk_element(ds, tag, creators, element)
            except _DECODE_ERRORS as exc:
                # an element pydicom cannot decode cannot be checked: the study is not cleared
                raise UnreadableError(
                    f"{_tag_text(int(tag))} {keyword_for_tag(tag) or 'element'}: the value cannot be decoded "
                    f"({type(exc).__name__}), so the header cannot be checked"
                ) from None
            if key is not None:
                self.judged.add(key)
        return frozenset(passed_over)

    def _judged_key(
        self, ds: pydicom.Dataset, tag: BaseTag, element: DataElement | RawDataElement,
        creators: list[dict[tuple[int, int], str]], context: Hashable,
    ) -> Hashable | None:
        """Everything judging a top-level element of ``ds`` depends on; None: judge it anyway.

        * the element's raw fields (:func:`curation.uids.raw_element_key`): its tag (which,
          with the creator, picks the rule: the profile is the collector's),
          the VR the file gives, the bytes and their encoding (implicit VR,
          endianness), which is what pydicom decodes them with;
        * ``context`` (:func:`_decoding_context`): the character set and the
          PixelRepresentation a sequence hands its items;
        * for a private element, its block's private creator as pydicom reads
          it (the rule, the VR pydicom gives an implicit-VR element, the labels).

        Not memoized: an element already decoded, deferred, or longer than
        :data:`_MEMO_MAX_BYTES`; a private element outside a block; an element
        whose VR the file does not give and the dictionary gives as ambiguous
        (``US or SS``...): pydicom resolves it from other elements
        (PixelRepresentation, BitsAllocated, LUTDescriptor).
        """
        if not isinstance(element, RawDataElement):
            return None
        if not isinstance(element.value, bytes) or len(element.value) > _MEMO_MAX_BYTES:
            return None
        tag_int = int(tag)
        group, number = tag_int >> 16, tag_int & 0xFFFF
        vr = element.VR
        creator: Any = None
        if group % 2 == 1:
            if number < 0x100:  # group length, private creators, no block: cheap to judge
                return None
            if not creators:  # as _walk_element does: every creator decoded before the first private element
                creators.append(self._creators(ds))
            creator_element = ds.get_item(Tag(group, number >> 8))
            if isinstance(creator_element, RawDataElement):
                return None
            creator = _ABSENT if creator_element is None else creator_element.value
            if not isinstance(creator, (str, bytes, type(None))):
                return None
            if vr in (None, "UN") and isinstance(creator, str):
                try:
                    vr = private_dictionary_VR(tag, creator)
                except KeyError:
                    vr = "UN"
        elif vr in (None, "UN"):
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = None
        if vr in AMBIGUOUS_VR:
            return None
        return (raw_element_key(element), context, creator)

    def _walk_element(
        self, ds: pydicom.Dataset, tag: BaseTag, creators: list[dict[tuple[int, int], str]],
        element: DataElement | RawDataElement,
    ) -> None:
        tag_int = int(tag)
        group = tag_int >> 16
        if group % 2 == 1:
            if not creators:
                creators.append(self._creators(ds))
            self._private(ds, tag, creators[0])
            return
        if tag_int & 0xFFFF == 0:  # group length
            return
        rule = self.profile.public.get(tag_int)
        if rule is None and group & 0xFF00 in (0x5000, 0x6000) and group < 0x6100:
            rule = self._repeating_rule(tag_int)
        if isinstance(element, RawDataElement) and element.value is None:
            element = ds.get_item(tag)  # deferred: read (what get_item does); handed on from here
        vr = element_vr(ds, tag, element)  # UI values are collected by iter_uids in check_datasets
        if vr in TEMPORAL_VRS:
            self._check_temporal(ds, tag, vr, rule, element=element)
        if rule is not None:
            if not self._settled_from_raw(element, vr, rule):
                self._apply(ds[tag], rule)
            return
        if vr == "SQ":
            for item in ds[tag].value or ():
                self.walk(item, top_level=False)
        elif vr is None:
            self.review.add(f"{_tag_text(tag_int)} public element not in the DICOM dictionary")

    @staticmethod
    def _settled_from_raw(raw: DataElement | RawDataElement | None, vr: str | None, rule: GateRule) -> bool:
        """Decide from the undecoded bytes when that is enough (most elements of a clean header).

        Converting an element (charset, VR parsing) is the gate's main cost, so
        retained elements, empty must-be-empty/pseudonym elements and plain UIDs
        (collected by :func:`curation.uids.iter_uids`) are settled without it;
        everything else goes through :meth:`_apply`.  ``raw`` is the element as
        ``Dataset.get_item`` gives it and ``vr`` its :func:`curation.uids.element_vr`.
        """
        if not isinstance(raw, RawDataElement) or vr == "SQ":
            return False
        action = rule.action
        if action in (GateAction.RETAIN, GateAction.DESCRIPTOR, GateAction.UID):
            return True
        data = raw.value
        empty = data is None or not bytes(data).strip(b" \x00\\^=")
        return empty and action in (GateAction.MUST_BE_EMPTY, GateAction.PSEUDONYM)

    def _check_temporal(
        self, ds: pydicom.Dataset, tag: BaseTag, vr: str, rule: GateRule | None, *, label: str = "",
        element: DataElement | RawDataElement | None = None,
    ) -> None:
        """A DA/DT/TM value the gate lets through must look like a date or time, not text.

        Rows that refuse or check the value anyway (``must-be-empty``,
        ``pseudonym``) are left to their rule.  ``element`` is ``ds.get_item(tag)``
        when the caller has it already.
        """
        if rule is not None and rule.action in (GateAction.MUST_BE_EMPTY, GateAction.PSEUDONYM):
            return
        if element is None:
            element = ds.get_item(tag)
        value = element.value if element is not None else None
        if value is None:
            return
        if isinstance(value, (bytes, bytearray)):
            text = bytes(value).decode("latin-1")
        elif isinstance(value, (list, MultiValue)):
            text = "\\".join(str(v) for v in value)
        else:
            text = str(value)
        text = text.strip(" \x00")
        if not text or is_temporal_text(text):
            return
        self.sensitive.update(part.strip(" \x00") for part in text.split("\\") if part.strip(" \x00"))
        keyword = label or (rule.keyword if rule is not None else keyword_for_tag(tag) or "unknown attribute")
        self.add_finding(
            _tag_text(int(tag)), keyword, "temporal-text", RejectReason.PHI_DETECTED,
            f"{keyword} (VR {vr}) holds characters no date or time is written with, so it carries text",
        )

    def _repeating_rule(self, tag_int: int) -> GateRule | None:
        group = tag_int >> 16
        if group & 0xFF00 == 0x5000 and group % 2 == 0 and self.profile.curve_group is not None:
            return self.profile.curve_group
        return self.profile.repeating.get(((group >> 8) << 24) | (tag_int & 0xFFFF))

    def _check_identity_removed(self, ds: pydicom.Dataset) -> None:
        rule = self.profile.public.get(int(_PATIENT_IDENTITY_REMOVED))
        if rule is None or rule.action is not GateAction.MUST_BE_YES:
            return
        if _PATIENT_IDENTITY_REMOVED not in ds and self.identity_flag_required:
            self.add_finding(
                rule.tag, rule.keyword, rule.action.value, RejectReason.PHI_DETECTED,
                f"{rule.keyword} is missing, so the instance does not declare itself de-identified",
            )

    def _apply(self, element: DataElement, rule: GateRule, *, label: str = "") -> None:
        keyword = label or rule.keyword
        value = element.value
        vr = str(element.VR)
        action = rule.action
        if action is GateAction.MUST_BE_EMPTY:
            if isinstance(value, DicomSequence):
                self._collect_sequence(value)
            else:
                self.collect(value, vr)
            if not _is_empty(value):
                self.add_finding(
                    _tag_text(int(element.tag)), keyword, action.value, RejectReason.PHI_DETECTED,
                    f"{keyword} must be empty or absent but holds a value",
                )
        elif action is GateAction.PSEUDONYM:
            self.collect(value, vr)
            self._check_pseudonym(element, rule)
        elif action is GateAction.MUST_BE_YES:
            text = str(value or "").strip().upper()
            if text != "YES" and (text or self.identity_flag_required):
                self.add_finding(
                    rule.tag, keyword, action.value, RejectReason.PHI_DETECTED,
                    f"{keyword} must be YES (the site declares the instance de-identified)",
                )
        elif action is GateAction.BURNED_IN:
            if str(value or "").strip().upper() == "YES":
                self.add_finding(
                    rule.tag, keyword, action.value, RejectReason.BURNED_IN_ANNOTATION,
                    f"{keyword} is YES: identifying text may be drawn into the pixels",
                )
        elif isinstance(value, DicomSequence):  # uid / retain / descriptor / review sequences
            for item in value:
                self.walk(item, top_level=False)

    def _collect_sequence(self, seq: DicomSequence) -> None:
        """Walk a sequence's items (for nested findings) and collect every string in it.

        Its UIDs are collected by :func:`curation.uids.iter_uids` like all others.
        """
        for item in seq:
            self.walk(item, top_level=False)
            for element in item.iterall():
                if element.VR not in ("SQ", "UI") and not element.tag.is_private:
                    self.collect(element.value, str(element.VR))

    def _check_pseudonym(self, element: DataElement, rule: GateRule) -> None:
        text = str(element.value or "").strip(" ^=\x00") if element.VR == "PN" else str(element.value or "").strip(" \x00")
        if not text:
            return
        tag = _tag_text(int(element.tag))
        if self.pattern is not None:
            if self.pattern.fullmatch(text) is None:
                self.add_finding(
                    tag, rule.keyword, rule.action.value, RejectReason.PHI_DETECTED,
                    f"{rule.keyword} does not match the site's pseudonym_pattern {self.pattern.pattern!r}",
                )
        elif element.VR == "PN" and _has_given_name(text):
            self.add_finding(
                tag, rule.keyword, rule.action.value, RejectReason.PHI_DETECTED,
                f"{rule.keyword} has a given-name component (family^given), the form of a real "
                "person's name, and the site has no pseudonym_pattern",
            )

    # -- private elements
    @staticmethod
    def _creators(ds: pydicom.Dataset) -> dict[tuple[int, int], str]:
        creators: dict[tuple[int, int], str] = {}
        for tag in ds.keys():  # noqa: SIM118 (iterating a Dataset converts every element)
            group, element = tag >> 16, tag & 0xFFFF
            if group % 2 == 1 and 0x10 <= element <= 0xFF:
                value = ds[tag].value
                if isinstance(value, bytes):
                    value = value.decode("latin-1")
                creators[(group, element)] = str(value or "").strip(" \x00")
        return creators

    def _private(self, ds: pydicom.Dataset, tag: BaseTag, creators: dict[tuple[int, int], str]) -> None:
        tag_int = int(tag)
        group, element = tag_int >> 16, tag_int & 0xFFFF
        if element == 0 or 0x10 <= element <= 0xFF:  # group length, private creator
            return
        text_tag = _tag_text(tag_int)
        block, offset = element >> 8, element & 0xFF
        creator = creators.get((group, block)) if element >= 0x10 else None
        default = self.profile.private_default
        if creator is None:
            if default is not None and default.action is not GateAction.REVIEW:
                self._apply(ds[tag], default, label=f"{default.keyword} without a private creator")
            else:
                self.review.add(f"{text_tag} private element without a private creator")
            return
        rule = self.profile.private.get((creator, group, offset))
        generic = f"({group:04X},xx{offset:02X}) creator {creator!r}"
        data_element = ds[tag]
        vr = str(data_element.VR)
        if rule is None and default is not None and default.action is not GateAction.REVIEW:
            rule = default
        if vr in TEMPORAL_VRS:
            self._check_temporal(ds, tag, vr, rule, label=f"{creator}:{rule.keyword if rule else 'private'}")
        if rule is not None:
            label = f"{creator}:{rule.keyword}"
            if rule.action is GateAction.REVIEW:
                self.review.add(generic)
            self._apply(data_element, rule, label=label)
            return
        value = data_element.value
        if vr == "UN" and isinstance(value, bytes):
            # implicit VR: the file does not say this is a PN; its text decides, as PN decides in explicit VR
            vr, value = _implicit_private_value(value)
        if vr == "SQ":
            self.review.add(generic)
            for item in value or ():
                self.walk(item, top_level=False)
        elif vr == "PN" and not _is_empty(value):
            self.collect(value, vr)
            self.add_finding(
                text_tag, f"{creator}:private person name", "private-person-name", RejectReason.PHI_DETECTED,
                f"private element {generic} is a person name (VR PN) and holds a value",
            )
        else:
            if vr == "UI" and data_element.VR == "UN":
                # iter_uids cannot tell a UID in an unknown creator's implicit-VR element: its text did
                self.sensitive.update(uid_strings(value))
            self.review.add(generic)  # explicit-VR private UIDs are collected by iter_uids

    def report(self) -> GateReport:
        return GateReport(
            findings=tuple(self.findings.values()),
            private_review=tuple(sorted(self.review)),
            sensitive_values=frozenset(v for v in self.sensitive if v),
        )


def check_datasets(
    datasets: Sequence[pydicom.Dataset], *, pseudonym_pattern: str = "", identity_flag_required: bool = True
) -> GateReport:
    """Check the headers of one study's instances against the rule table.

    Parameters
    ----------
    datasets
        The instances (typically every file of the selected CT and PET series),
        read with or without pixel data; they are not modified and pixel data
        is never decoded.
    pseudonym_pattern
        The site's regular expression for PatientName / PatientID (``""``: none).
    identity_flag_required
        True (the default, ``identity_removed_flag = "required"``): an
        instance without PatientIdentityRemoved = YES is a finding.  False
        (``"optional"``): the attribute may be absent or empty; a value other
        than YES (such as NO) is still a finding, and every other rule applies
        unchanged.

    Returns
    -------
    GateReport
        Findings (deduplicated across instances), private elements for review
        and the sensitive values seen.  An empty ``findings`` means the study
        may proceed.

    Raises
    ------
    ValueError
        ``pseudonym_pattern`` is not a valid regular expression.
    UnreadableError
        An element's value cannot be decoded, so the header cannot be checked
        (the message names the element, never its bytes).
    """
    try:
        collector = _Collector(
            load_profile(), pseudonym_pattern, identity_flag_required=identity_flag_required, memoize=_MEMOIZE
        )
    except re.error as exc:
        raise ValueError(f"pseudonym_pattern {pseudonym_pattern!r} is not a valid regular expression ({exc})") from None
    for ds in datasets:
        judged_before = collector.walk(ds, top_level=True)
        try:
            collector.sensitive.update(iter_uids(ds, skip=judged_before))
        except _DECODE_ERRORS as exc:  # the walk decoded every element it checks; this is the rest
            raise UnreadableError(
                f"an element holding UIDs cannot be decoded ({type(exc).__name__}), so the header cannot be checked"
            ) from None
        meta = getattr(ds, "file_meta", None)
        if meta is not None and _MEDIA_STORAGE_SOP_INSTANCE_UID in meta:
            # the other file-meta UIDs name transfer syntaxes and toolkits, not the patient
            raw = meta.get_item(_MEDIA_STORAGE_SOP_INSTANCE_UID)
            collector.sensitive.update(uid_strings(raw.value if raw is not None else None))
    report = collector.report()
    if report.findings:
        logger.info("gate: %d finding(s) over %d instance(s)", len(report.findings), len(datasets))
    return report


def describe_findings(findings: Iterable[GateFinding]) -> str:
    """One line naming every finding's attribute and rule (never a value).

    Parameters
    ----------
    findings
        Findings of a :class:`GateReport`.

    Returns
    -------
    str
        ``"(gggg,eeee) Keyword [rule]"`` per finding, joined by ``"; "``.
    """
    return "; ".join(f"{f.tag} {f.keyword} [{f.rule}]" for f in findings)


def raise_for_findings(report: GateReport, *, context: str = "") -> None:
    """Raise the error for a report with findings; return quietly otherwise.

    Parameters
    ----------
    report
        Result of :func:`check_datasets`.
    context
        Prefix naming the study or series (e.g. ``"study 1.2.3"``).

    Raises
    ------
    PHIDetectedError
        Any ``phi-detected`` finding (named by tag and keyword; burned-in
        findings are listed too).
    BurnedInAnnotationError
        Only burned-in-annotation findings.
    """
    if not report.findings:
        return
    prefix = f"{context}: " if context else ""
    phi = [f for f in report.findings if f.reason_code is RejectReason.PHI_DETECTED]
    burned = [f for f in report.findings if f.reason_code is RejectReason.BURNED_IN_ANNOTATION]
    if phi:
        message = f"{prefix}identifying attributes present: {describe_findings(phi)}"
        if burned:
            message += f"; also {describe_findings(burned)}"
        raise PHIDetectedError(message, findings=_attribute_findings([*phi, *burned]))
    raise BurnedInAnnotationError(
        f"{prefix}burned-in annotation declared: {describe_findings(burned)}",
        findings=_attribute_findings(burned),
    )


def _attribute_findings(findings: Iterable[GateFinding]) -> tuple[AttributeFinding, ...]:
    return tuple(AttributeFinding(tag=f.tag, keyword=f.keyword, rule=f.rule) for f in findings)


def iter_rules() -> tuple[GateRule, ...]:
    """Every row of the packaged rule table (for review and tests).

    Returns
    -------
    tuple[GateRule, ...]
        The rows in table order.
    """
    return load_profile().rules
