"""De-identification gate: refuse a study whose headers still carry identifiers.

Sites deliver data they say is anonymised; we verify, we do not trust.  Every
element of every header of the selected series, nested sequences included, is
checked against the rule table ``anonymization/data/deid_profile.csv``: one row
per attribute (public tag, or private creator + element offset), the action the
gate takes and the reason, so a data steward can read and review the rules.

The table follows DICOM PS3.15 Annex E, Table E.1-1 (Basic Application Level
Confidentiality Profile) with the options Retain Patient Characteristics,
Retain Longitudinal Temporal Information with Modified Dates (dates shifted by
the site, times kept), Retain Device Identity and Retain Safe Private.

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
    Allowed; not collected (dates are shifted, characteristics and device
    identity are kept by the options, descriptions are needed for selection).
``review``
    Private elements known to be harmless in practice but not checkable; listed
    in :attr:`GateReport.private_review`.

Besides the rows: every value of VR UI outside the DICOM root ``1.2.840.10008``
is collected as sensitive wherever it appears (:func:`curation.uids.iter_uids`,
the walk ingest uses too), a non-empty private element of VR
PN is a ``phi-detected`` finding, and private elements without a row are listed
for review (they never reach the release: conversion carries no private data).

Findings and error messages name attributes (tag and keyword), never values.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from importlib import resources
from typing import Any

import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import PersonName

from curation.errors import (
    AttributeFinding,
    BurnedInAnnotationError,
    PHIDetectedError,
    RejectReason,
)
from curation.uids import element_vr, iter_uids, uid_strings

logger = logging.getLogger(__name__)

PROFILE_RESOURCE = "deid_profile.csv"
_PATIENT_IDENTITY_REMOVED = Tag(0x0012, 0x0062)
_MEDIA_STORAGE_SOP_INSTANCE_UID = Tag(0x0002, 0x0003)


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
        ``"(gggg,eeee)"``; private rows ``"(gggg,xxee)"``, repeating groups ``"(60xx,3000)"``.
    keyword
        The attribute's DICOM keyword (a private row: the name the table gives it).
    action
        What the gate does with the attribute.
    reason
        Why, for the data steward (the profile option or basic profile action).
    creator
        The private creator of a private row; ``""`` for public rows.
    """

    tag: str
    keyword: str
    action: GateAction
    reason: str
    creator: str = ""


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
    """

    rules: tuple[GateRule, ...]
    public: dict[int, GateRule]
    repeating: dict[int, GateRule]
    curve_group: GateRule | None
    private: dict[tuple[str, int, int], GateRule]


def _parse_tag(text: str, *, where: str) -> tuple[str, str]:
    match = re.fullmatch(r"\(([0-9A-Fa-fx]{4}),([0-9A-Fa-fx]{4})\)", text.strip())
    if match is None:
        raise ValueError(f"{where}: tag {text!r} is not of the form (gggg,eeee)")
    return match.group(1).upper().replace("X", "x"), match.group(2).upper().replace("X", "x")


def parse_profile(rows: Iterable[dict[str, str]], *, source: str = "deid_profile.csv") -> GateProfile:
    """Validate rule-table rows and index them by tag.

    Parameters
    ----------
    rows
        Mappings with the columns ``tag, creator, keyword, action, reason``.
    source
        Name used in error messages.

    Returns
    -------
    GateProfile
        The rows, in order and indexed by tag.

    Raises
    ------
    ValueError
        A row with a bad tag or action, an empty keyword or reason, or a
        duplicate tag (naming the row).
    """
    rules: list[GateRule] = []
    public: dict[int, GateRule] = {}
    repeating: dict[int, GateRule] = {}
    private: dict[tuple[str, int, int], GateRule] = {}
    curve_group: GateRule | None = None
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
        group, element = _parse_tag(row["tag"], where=where)
        rule = GateRule(f"({group},{element})", keyword, action, reason, creator)
        if creator:
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
    return GateProfile(tuple(rules), public, repeating, curve_group, private)


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
    return parse_profile(csv.DictReader(text.splitlines()), source=PROFILE_RESOURCE)


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
    """The whole name and its components (family, given, ...)."""
    whole = name.strip(" ^=")
    if whole:
        yield whole
    for group in whole.split("="):
        for part in group.split("^"):
            if part.strip():
                yield part.strip()


def _text_of_bytes(raw: bytes) -> str | None:
    """Printable ASCII text of a binary value, or None if it is not text."""
    text = raw.strip(b" \x00")
    if not text or len(text) > 1024 or any(b < 0x20 or b > 0x7E for b in text):
        return None
    return text.decode("ascii")


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


# ---------------------------------------------------------------------------
# walking


class _Collector:
    """Accumulates findings, review notes and sensitive values over a study."""

    def __init__(self, profile: GateProfile, pseudonym_pattern: str) -> None:
        self.profile = profile
        self.pattern = re.compile(pseudonym_pattern) if pseudonym_pattern else None
        self.findings: dict[tuple[str, str, str], GateFinding] = {}
        self.review: set[str] = set()
        self.sensitive: set[str] = set()

    # -- results
    def add_finding(self, tag: str, keyword: str, rule: str, reason: RejectReason, why: str) -> None:
        self.findings.setdefault((tag, keyword, rule), GateFinding(tag, keyword, rule, reason, why))

    def collect(self, value: Any, vr: str) -> None:
        self.sensitive.update(_value_strings(value, vr))

    # -- walking
    def walk(self, ds: pydicom.Dataset, *, top_level: bool) -> None:
        if top_level:
            self._check_identity_removed(ds)
        creators: dict[tuple[int, int], str] | None = None
        for tag in list(ds.keys()):  # keys only: elements are converted when a rule needs them
            tag_int = int(tag)
            group = tag_int >> 16
            if group % 2 == 1:
                if creators is None:
                    creators = self._creators(ds)
                self._private(ds, tag, creators)
                continue
            if tag_int & 0xFFFF == 0:  # group length
                continue
            rule = self.profile.public.get(tag_int)
            if rule is None and group & 0xFF00 in (0x5000, 0x6000) and group < 0x6100:
                rule = self._repeating_rule(tag_int)
            if rule is not None:
                if not self._settled_from_raw(ds, tag, rule):
                    self._apply(ds[tag], rule)
                continue
            vr = element_vr(ds, tag)  # UI values are collected by iter_uids in check_datasets
            if vr == "SQ":
                for item in ds[tag].value or ():
                    self.walk(item, top_level=False)
            elif vr is None:
                self.review.add(f"{_tag_text(tag_int)} public element not in the DICOM dictionary")

    def _settled_from_raw(self, ds: pydicom.Dataset, tag: BaseTag, rule: GateRule) -> bool:
        """Decide from the undecoded bytes when that is enough (most elements of a clean header).

        Converting an element (charset, VR parsing) is the gate's main cost, so
        retained elements, empty must-be-empty/pseudonym elements and plain UIDs
        (collected by :func:`curation.uids.iter_uids`) are settled without it;
        everything else goes through :meth:`_apply`.
        """
        raw = ds.get_item(tag)
        if not isinstance(raw, RawDataElement) or element_vr(ds, tag) == "SQ":
            return False
        action = rule.action
        if action in (GateAction.RETAIN, GateAction.DESCRIPTOR, GateAction.UID):
            return True
        data = raw.value
        empty = data is None or not bytes(data).strip(b" \x00\\^=")
        return empty and action in (GateAction.MUST_BE_EMPTY, GateAction.PSEUDONYM)

    def _repeating_rule(self, tag_int: int) -> GateRule | None:
        group = tag_int >> 16
        if group & 0xFF00 == 0x5000 and group % 2 == 0 and self.profile.curve_group is not None:
            return self.profile.curve_group
        return self.profile.repeating.get(((group >> 8) << 24) | (tag_int & 0xFFFF))

    def _check_identity_removed(self, ds: pydicom.Dataset) -> None:
        rule = self.profile.public.get(int(_PATIENT_IDENTITY_REMOVED))
        if rule is None or rule.action is not GateAction.MUST_BE_YES:
            return
        if _PATIENT_IDENTITY_REMOVED not in ds:
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
            if str(value or "").strip().upper() != "YES":
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
        if element < 0x10:
            self.review.add(f"{text_tag} private element without a private creator")
            return
        block, offset = element >> 8, element & 0xFF
        creator = creators.get((group, block))
        if creator is None:
            self.review.add(f"{text_tag} private element without a private creator")
            return
        rule = self.profile.private.get((creator, group, offset))
        generic = f"({group:04X},xx{offset:02X}) creator {creator!r}"
        data_element = ds[tag]
        if rule is not None:
            label = f"{creator}:{rule.keyword}"
            if rule.action is GateAction.REVIEW:
                self.review.add(generic)
            self._apply(data_element, rule, label=label)
            return
        vr = str(data_element.VR)
        value = data_element.value
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
        else:  # a private UID is collected by iter_uids
            self.review.add(generic)

    def report(self) -> GateReport:
        return GateReport(
            findings=tuple(self.findings.values()),
            private_review=tuple(sorted(self.review)),
            sensitive_values=frozenset(v for v in self.sensitive if v),
        )


def check_datasets(datasets: Sequence[pydicom.Dataset], *, pseudonym_pattern: str = "") -> GateReport:
    """Check the headers of one study's instances against the rule table.

    Parameters
    ----------
    datasets
        The instances (typically every file of the selected CT and PET series),
        read with or without pixel data; they are not modified and pixel data
        is never decoded.
    pseudonym_pattern
        The site's regular expression for PatientName / PatientID (``""``: none).

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
    """
    try:
        collector = _Collector(load_profile(), pseudonym_pattern)
    except re.error as exc:
        raise ValueError(f"pseudonym_pattern {pseudonym_pattern!r} is not a valid regular expression ({exc})") from None
    for ds in datasets:
        collector.walk(ds, top_level=True)
        collector.sensitive.update(iter_uids(ds))
        meta = getattr(ds, "file_meta", None)
        if meta is not None and _MEDIA_STORAGE_SOP_INSTANCE_UID in meta:
            # the other file-meta UIDs name transfer syntaxes and toolkits, not the patient
            collector.sensitive.update(uid_strings(meta[_MEDIA_STORAGE_SOP_INSTANCE_UID].value))
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
