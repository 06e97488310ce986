"""Rebuild the gate's rule table from DICOM PS3.15 Annex E Table E.1-1 (2024b).

Usage (from the repository root)::

    python tools/build_deid_profile.py            # rewrite anonymization/data/deid_profile.csv
    python tools/build_deid_profile.py --check    # exit 1 if the table is not what this script makes

Inputs, both in ``anonymization/data/``:

``ps3.15_table_e1-1_2024b.json``
    The standard's table, every row and every option column (innolitics
    dicom-standard, ``standard/confidentiality_profile_attributes.json``,
    revision 2024b; copied unchanged).
``deid_profile.csv``
    The current rule table: the project's decisions (action and reason per
    row) and its own rows that are not in E.1-1 (PatientIdentityRemoved,
    BurnedInAnnotation, the de-identification records, known vendor private
    elements).

What it writes: one row per row of E.1-1, with the standard's basic-profile
action and the actions of the options the gate reads (Retain Patient
Characteristics, Retain Device Identity, Retain Longitudinal Temporal
Information with Full Dates, Retain Safe Private, and Clean Descriptors for the
descriptor rows), followed by the project's rows.  A row the table already has
keeps its action and reason, unless that action is not allowed for the row
under our options (:func:`anonymization.gate.allowed_actions`), in which case
it gets the derived action and reason and the script says so.  A row new to the
table gets the derived action (:func:`anonymization.gate.derived_action`) and a
reason naming the standard's actions.  Rows kept by the dates option always get
the one reason that states the release's date policy.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anonymization.gate import (  # noqa: E402  (after the path set-up above)
    APPLIED_OPTIONS,
    CSV_COLUMNS,
    OPTION_COLUMNS,
    PRIVATE_DEFAULT_TAG,
    SOURCE_PROJECT,
    SOURCE_STANDARD,
    GateAction,
    GateRule,
    allowed_actions,
    derived_action,
)

DATA = ROOT / "anonymization" / "data"
STANDARD_JSON = DATA / "ps3.15_table_e1-1_2024b.json"
PROFILE_CSV = DATA / "deid_profile.csv"

_OPTION_NAMES = {
    "rtnPatCharsOpt": "Retain Patient Characteristics Option",
    "rtnDevIdOpt": "Retain Device Identity Option",
    "rtnLongFullDatesOpt": "Retain Longitudinal Temporal Information with Full Dates Option",
    "rtnSafePrivOpt": "Retain Safe Private Option",
    "cleanDescOpt": "Clean Descriptors Option",
}


def _tag_of(entry: dict[str, str]) -> str:
    if entry["tag"].upper().startswith(PRIVATE_DEFAULT_TAG):
        return PRIVATE_DEFAULT_TAG
    return _normal_tag(entry["tag"])


def _keyword_of(entry: dict[str, str], tag: str) -> str:
    from pydicom.datadict import keyword_for_tag

    if tag == PRIVATE_DEFAULT_TAG:
        return "PrivateAttributes"
    number = int(tag[1:5].replace("xx", "00") + tag[6:10].replace("xxxx", "3000"), 16)
    keyword = keyword_for_tag(number)
    if not keyword:
        raise SystemExit(f"{STANDARD_JSON.name}: {entry['name']} {entry['tag']} is not in pydicom's dictionary")
    return keyword


def _standard_rule(entry: dict[str, str]) -> GateRule:
    tag = _tag_of(entry)
    options = {column: entry.get(column, "") or "" for column in OPTION_COLUMNS}
    return GateRule(
        tag=tag,
        keyword=_keyword_of(entry, tag),
        action=GateAction.MUST_BE_EMPTY,  # placeholder: decided below
        reason="-",
        name=" ".join(entry["name"].split()),  # one line ("Icon Image Sequence (see Note 11)")
        source=SOURCE_STANDARD,
        basic_profile=entry["basicProfile"],
        **{GateRule.option_field(c): v for c, v in options.items()},
    )


def _options_text(rule: GateRule, *, values: tuple[str, ...]) -> str:
    names = [_OPTION_NAMES[c] for c in APPLIED_OPTIONS if rule.option(c) in values]
    return " and ".join(names)


def derived_reason(rule: GateRule, action: GateAction) -> str:
    """Write the reason of a row whose action the script decides.

    Parameters
    ----------
    rule
        A row of E.1-1.
    action
        Its action (:func:`anonymization.gate.derived_action`).

    Returns
    -------
    str
        A sentence naming the standard's actions and why the gate does what it does.
    """
    name, basic = rule.name, rule.basic_profile
    if rule.tag == PRIVATE_DEFAULT_TAG:
        return (
            "Private attributes (odd groups) are removed by the basic profile (X) and cleaned (C) by the Retain "
            "Safe Private Option: the gate refuses a private element with a row that says so or of VR PN with a "
            "value, keeps the rows known to be safe and lists every other private element for review; "
            "conversion carries no private data into the release."
        )
    if action is GateAction.RETAIN and rule.option("rtnLongFullDatesOpt") == "K":
        kept_by = _options_text(rule, values=("K",))
        return (
            f"{name} is a date or time kept (K) by the {kept_by} (basic profile action {basic}): "
            "the release publishes dates only in its spreadsheets and only through the [release] dates "
            "policy (shifted per patient, year only, or as delivered), every date in the headers is recorded "
            "for the leak scan, and a value that is not a DICOM date or time is refused."
        )
    if action is GateAction.RETAIN:
        kept_by = _options_text(rule, values=("K",))
        what = "identifies the equipment, not a person," if rule.option("rtnDevIdOpt") == "K" else (
            "is a patient characteristic"
        )
        return f"{name} {what} and is kept (K) by the {kept_by} (basic profile action {basic})."
    if action is GateAction.UID:
        return (
            f"{name} is a UID (basic profile action {basic}: replace); the site is expected to have replaced "
            "it, and the gate collects its value as sensitive (never released) so that the leak scan can "
            "prove no UID reaches the release."
        )
    cleaned = _options_text(rule, values=("C",))
    clean_desc = rule.option("cleanDescOpt") == "C"
    why = f"{name} can carry identifying information (basic profile action {basic})"
    if cleaned:
        why += (
            f"; the {cleaned} would keep a cleaned value, but a checker cannot tell a cleaned value from "
            "one that was not cleaned"
        )
    elif clean_desc:
        why += "; only the Clean Descriptors Option, which the gate does not apply to it, would keep a cleaned value"
    return why + ", so it must be empty or absent."


def _read_standard() -> list[GateRule]:
    entries = json.loads(STANDARD_JSON.read_text(encoding="utf-8"))
    rules = [_standard_rule(e) for e in entries]
    order = {r.tag: i for i, r in enumerate(rules)}
    if len(order) != len(rules):
        raise SystemExit(f"{STANDARD_JSON.name}: a tag is listed twice")
    return rules


def _normal_tag(tag: str) -> str:
    return tag.strip().upper().replace("X", "x")


def _read_current(standard_tags: set[str]) -> tuple[dict[str, dict[str, str]], list[dict[str, str]]]:
    """Current rows of the standard's tags (by tag) and the project's own rows (in order)."""
    standard, project = {}, []
    with open(PROFILE_CSV, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            tag = _normal_tag(row["tag"])
            if row.get("creator") or row.get("source") == SOURCE_PROJECT or tag not in standard_tags:
                project.append(row)
            else:
                standard[tag] = row
    return standard, project


def build_rows(notes: list[str]) -> list[dict[str, str]]:
    """Make every row of the new table: E.1-1's in tag order, then the project's.

    Parameters
    ----------
    notes
        Receives one line per row added or changed.

    Returns
    -------
    list[dict[str, str]]
        CSV rows keyed by :data:`anonymization.gate.CSV_COLUMNS`.
    """
    rules = _read_standard()
    standard_tags = {r.tag for r in rules}
    current, project_rows = _read_current(standard_tags)
    out: list[dict[str, str]] = []
    for rule in sorted(rules, key=lambda r: (r.tag == PRIVATE_DEFAULT_TAG, r.tag.replace("x", "0"))):
        old = current.get(rule.tag)
        derived = derived_action(rule)
        if old is None:
            action, reason = derived, derived_reason(rule, derived)
            notes.append(f"new row {rule.tag} {rule.keyword}: {action.value}")
        else:
            action = GateAction(old["action"])
            reason = old["reason"]
            if action not in allowed_actions(rule):
                notes.append(
                    f"row {rule.tag} {rule.keyword}: {action.value} is not allowed under our options "
                    f"({rule.basic_profile}, {rule.options_text() or 'no option'}); now {derived.value}"
                )
                action, reason = derived, derived_reason(rule, derived)
            elif action is GateAction.RETAIN and rule.option("rtnLongFullDatesOpt") == "K":
                reason = derived_reason(rule, action)
        out.append(_csv_row(rule, action, reason))
    for row in project_rows:
        tag = row["tag"]
        out.append({
            **dict.fromkeys(CSV_COLUMNS, ""),
            "tag": tag,
            "creator": row.get("creator", ""),
            "keyword": row["keyword"],
            "name": row.get("name") or row["keyword"],
            "source": SOURCE_PROJECT,
            "action": row["action"],
            "reason": row["reason"],
        })
    return out


def _csv_row(rule: GateRule, action: GateAction, reason: str) -> dict[str, str]:
    row = dict.fromkeys(CSV_COLUMNS, "")
    row.update(tag=rule.tag, keyword=rule.keyword, name=rule.name, source=rule.source,
               basicProfile=rule.basic_profile, action=action.value, reason=reason)
    for column in OPTION_COLUMNS:
        row[column] = rule.option(column)
    return row


def render(rows: list[dict[str, str]]) -> str:
    """Render the table as CSV text: LF line ends, minimal quoting, :data:`CSV_COLUMNS` order.

    Parameters
    ----------
    rows
        From :func:`build_rows`.

    Returns
    -------
    str
        The content of ``deid_profile.csv``.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Rewrite ``deid_profile.csv`` (or, with ``--check``, only compare it).

    Parameters
    ----------
    argv
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit code: 0, or 1 when ``--check`` finds the file differs.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the file differs")
    args = parser.parse_args(argv)
    notes: list[str] = []
    text = render(build_rows(notes))
    if args.check:
        same = PROFILE_CSV.read_text(encoding="utf-8") == text
        print(f"{PROFILE_CSV}: {'up to date' if same else 'differs from what this script makes'}")
        return 0 if same else 1
    for note in notes:
        print(note)
    PROFILE_CSV.write_text(text, encoding="utf-8")
    print(f"{PROFILE_CSV}: {text.count(chr(10)) - 1} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
