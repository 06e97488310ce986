"""``petct-release status``: per site, what the state folder says (no Prefect, no server).

Read from ``state_dir`` only: the site indexes, the stages' records, the
registry, and the manifest of the config's release zip.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from curation.config import Config
from curation.model import ConvertedCase, PreparedCase, Rejection, study_key
from curation.registry import Registry
from curation.stage import read_record
from curation.state import StatePaths, site_outcomes


def rejected_text(by_reason: dict[str, int]) -> str:
    """``"3 (no-ct 1, phi-detected 2)"``, or ``"0"``."""
    if not by_reason:
        return "0"
    total = sum(by_reason.values())
    return f"{total} (" + ", ".join(f"{code} {n}" for code, n in sorted(by_reason.items())) + ")"


def site_status(config: Config) -> list[dict[str, Any]]:
    """Per site: studies seen, cases ready, rejected by reason, released, withdrawn.

    Read from ``state_dir`` only: the site indexes and study outcomes, the
    registry, and the manifest of this config's release zip.
    """
    state = StatePaths(config.release.state_dir)
    registry_entries = _registry_entries(state)
    withdrawn = Counter(e.site for e in registry_entries if e.withdrawn)
    withdrawn_uids = {e.StudyInstanceUID for e in registry_entries if e.withdrawn}
    released = Counter(c.get("site", "") for c in _manifest_cases(config))
    outcomes = {site.id: site_outcomes(state, site.id) for site in config.sites}
    converted = {
        o.StudyInstanceUID
        for site_list in outcomes.values()
        for o in site_list
        if isinstance(o, ConvertedCase) and o.StudyInstanceUID not in withdrawn_uids
    }
    held_back = _held_back(state, converted)
    rows = []
    for site in config.sites:
        site_list = outcomes[site.id]
        rejected = Counter(o.reason.value for o in site_list if isinstance(o, Rejection))
        rejected.update(
            held_back[o.StudyInstanceUID] for o in site_list if o.StudyInstanceUID in held_back
        )
        ready = sum(
            1
            for o in site_list
            if o.StudyInstanceUID in converted and o.StudyInstanceUID not in held_back
        )
        rows.append(
            {
                "site": site.id,
                "studies seen": _studies_seen(state, site.id, len(site_list)),
                "cases ready": ready,
                "released": released.get(site.id, 0),
                "withdrawn": withdrawn.get(site.id, 0),
                # last: the widest column, so the numbers stay together
                "rejected": dict(sorted(rejected.items())),
            }
        )
    return rows


def _registry_entries(state: StatePaths) -> list[Any]:
    if not state.registry.is_file():
        return []
    return Registry(state.registry).entries()


def _manifest_cases(config: Config) -> list[dict[str, Any]]:
    path = StatePaths(config.release.state_dir).release_manifest(config.release.release_path.name)
    if not path.is_file() or not config.release.release_path.exists():
        return []
    return list(json.loads(path.read_text(encoding="utf-8")).get("cases", []))


def _studies_seen(state: StatePaths, site: str, fallback: int) -> int:
    path = state.site_index(site)
    if not path.is_file():
        return fallback
    data = json.loads(path.read_text(encoding="utf-8"))
    return len(data.get("studies", ()))


def _held_back(state: StatePaths, studies: set[str]) -> dict[str, str]:
    """StudyInstanceUID -> reason code for converted cases the prepare stage held back."""
    out: dict[str, str] = {}
    for uid in studies:
        path = state.prepared_record(study_key(uid))
        if not path.is_file():
            continue
        try:
            record = read_record(path, PreparedCase)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # damaged: the next build redoes the case
        if isinstance(record, Rejection):
            out[uid] = record.reason.value
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows of equal keys as an aligned text table (numbers right-aligned), with a total row."""
    if not rows:
        return ""
    headers = list(rows[0])
    total: dict[str, Any] = {"site": "total"}
    for key in headers[1:]:
        if isinstance(rows[0][key], dict):
            merged: Counter[str] = Counter()
            for row in rows:
                merged.update(row[key])
            total[key] = dict(sorted(merged.items()))
        else:
            total[key] = sum(row[key] for row in rows)
    cells = [
        [rejected_text(v) if isinstance(v, dict) else str(v) for v in (row[k] for k in headers)]
        for row in [*rows, total]
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    numeric = [all(c[i].isdigit() for c in cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(c) for c in cells[:-1]), sep, line(cells[-1])])


