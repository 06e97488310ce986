"""The steward's QC report: ``<state_dir>/report/index.html``, one static page.

:func:`write_report` reads the state folder only (site indexes, study outcomes,
prepared and QC records, the registry, the audit log and its head file, the
release manifest and the zip's ``.sha256``) plus the config, and writes a page
that opens from the file system with no server and fetches nothing: CSS and a
few lines of script are inline, and the QC pictures are referenced by relative
path inside the report folder (they are drawn there, see
:func:`curation.state.StatePaths.qc_dir`, or copied there).

The page is for the steward: it shows faces of sites that are not defaced, so
it stays in ``state_dir``.  It shows no UID, PatientID or path: rejection
sentences are blanked with :func:`anonymization.redact.public_sentence`, cases
are named by their case number (or the first characters of their state key
while they have none), and every text is HTML-escaped.

Contents: per site, studies seen, converted, rejected by reason, released and
withdrawn, with a small chart; the last release (zip, sha256, verify result,
audit head); every rejection with its reason code, its sentence and what the
steward can do (:mod:`curation.advice`); every case with its number, site,
indication, scanner, defacing, key metadata and QC thumbnails linking to the
full pictures; a filter by site and by reason code.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import shutil
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anonymization.redact import public_sentence
from curation.advice import STEWARD_ADVICE
from curation.atomic import atomic_write_text, sha256_file
from curation.clinical import read_clinical_sheet
from curation.config import Config
from curation.errors import RejectReason
from curation.labels import load_release_labels, load_site_tables
from curation.model import (
    CaseQC,
    ConvertedCase,
    PreparedCase,
    Rejection,
    SiteIndex,
    from_jsonable,
    index_identifiers,
)
from curation.qc import qc_fingerprint
from curation.registry import Registry, RegistryEntry, format_case_number
from curation.stage import read_record
from curation.state import StatePaths, load_sensitive_values, site_outcomes
from flows.audit import AuditError, AuditEvent, AuditLog, read_head

logger = logging.getLogger(__name__)

#: Characters of the state key that name a case without a number.
SHORT_KEY = 8


# ---------------------------------------------------------------------------
# what the state says


@dataclass(frozen=True)
class SiteSummary:
    """One site's row of the summary (what ``petct-release status`` prints, too).

    ``rejected`` counts, by reason code, studies rejected at ingest and
    converted cases held back at build; ``released`` the cases of the site in
    the config's release zip.
    """

    site: str
    studies_seen: int
    converted: int
    rejected: dict[str, int]
    released: int
    withdrawn: int


@dataclass(frozen=True)
class RejectionRow:
    """A rejected study or held-back case as the report shows it (sentence already blanked)."""

    site: str
    phase: str  # "ingest" (rejected) | "build" (held back)
    stage: str  # the stage that stopped it: "ingest", "prepare", "qc"
    reason: RejectReason
    sentence: str
    case: str  # case number or short key


@dataclass(frozen=True)
class CaseRow:
    """A converted case as the report shows it."""

    key: str
    site: str
    number: str | None
    status: str  # released | ready | withdrawn | held back | not prepared
    reason: str  # reason code when held back, else ""
    indication: str
    scanner: str
    defaced: str
    facts: tuple[tuple[str, str], ...]
    pictures: tuple[tuple[str, str, str, str, int, int], ...]  # name, title, full and thumbnail URL, size
    note: str = ""


@dataclass(frozen=True)
class ReleaseInfo:
    """The config's release zip as the state knows it."""

    zip_name: str
    present: bool
    sha256: str
    verify: str  # "ok", "failed (N problems)", "not verified", ...
    verified_at: str
    quarantined: bool
    audit_records: int
    audit_head: str
    parts: tuple[tuple[str, int, str, str], ...] = ()  # a release in parts: name, bytes, cases, sha256


@dataclass
class _State:
    """Everything the report reads, gathered once."""

    config: Config
    state: StatePaths
    outcomes: dict[str, list[ConvertedCase | Rejection]]  # site -> ingest records
    prepared: dict[str, PreparedCase | Rejection]  # study key -> prepare record (a rejection: held back)
    qc: dict[str, CaseQC | Rejection]  # study key -> QC record
    seen: dict[str, int]
    registry: dict[str, RegistryEntry]  # StudyInstanceUID -> entry
    released: dict[str, str]  # study key -> case number
    audit: list[dict[str, Any]]
    hidden: set[str] = field(default_factory=set)  # identifying values to blank

    def held_back(self) -> dict[str, Rejection]:
        """Study key -> the rejection of a converted case held back by a build stage (prepare or QC)."""
        out = {}
        for records in (self.prepared, self.qc):
            for key, record in records.items():
                if isinstance(record, Rejection):
                    out.setdefault(key, record)
        return out


def _audit_records(path: Path) -> list[dict[str, Any]]:
    """The audit log's records for the report; a damaged log is reported by ``audit --verify``, not here."""
    try:
        return AuditLog(path).records()
    except AuditError as exc:
        logger.warning("report: %s; the last release's verification is not shown", exc)
        return []


def _audit_head(path: Path) -> tuple[int, str] | None:
    try:
        return read_head(path)
    except AuditError as exc:
        logger.warning("report: %s", exc)
        return None


def _gather(config: Config) -> _State:
    state = StatePaths(config.release.state_dir)
    outcomes = {site.id: site_outcomes(state, site.id) for site in config.sites}
    seen: dict[str, int] = {}
    hidden: set[str] = set()
    for site in config.sites:
        index_path = state.site_index(site.id)
        if index_path.is_file():
            index = from_jsonable(SiteIndex, json.loads(index_path.read_text(encoding="utf-8")))
            seen[site.id] = len(index.studies)
            for study in index.studies:
                hidden |= index_identifiers(study)
        else:
            seen[site.id] = len(outcomes[site.id])
    for site_outcomes_ in outcomes.values():
        for outcome in site_outcomes_:
            hidden.add(outcome.StudyInstanceUID)
            if isinstance(outcome, ConvertedCase):
                hidden |= {outcome.PatientID, outcome.ct_series, outcome.pt_series}
    try:  # every identifying value ingest recorded, names too
        hidden |= load_sensitive_values(state.root)
    except ValueError as exc:
        logger.warning("report: the recorded identifying values cannot be read (%s); UIDs and paths are "
                       "still blanked", exc)
    registry = {e.StudyInstanceUID: e for e in Registry(state.registry).entries()} if state.registry.is_file() else {}
    released: dict[str, str] = {}
    manifest = state.release_manifest(config.release.release_path.name)
    if manifest.is_file() and config.release.release_path.exists():
        for entry in json.loads(manifest.read_text(encoding="utf-8")).get("cases", []):
            released[str(entry["study_key"])] = str(entry["case"])
    prepared: dict[str, PreparedCase | Rejection] = {}
    qc: dict[str, CaseQC | Rejection] = {}
    for site_outcomes_ in outcomes.values():
        for outcome in site_outcomes_:
            if isinstance(outcome, ConvertedCase):
                for path, record_type, records in ((state.prepared_record(outcome.key), PreparedCase, prepared),
                                                   (state.qc_record(outcome.key), CaseQC, qc)):
                    record = _record(path, record_type)
                    if record is not None:
                        records[outcome.key] = record
    return _State(config, state, outcomes, prepared, qc, seen, registry, released, _audit_records(state.audit_log),
                  hidden)


def _record(path: Path, record_type: type) -> Any:
    """A stage's record, or None when there is none (or it is damaged: the next build redoes it)."""
    if not path.is_file():
        return None
    try:
        return read_record(path, record_type)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("%s: unreadable record (%s); the report leaves it out", path, exc)
        return None


def site_summary(config: Config) -> list[SiteSummary]:
    """Per site of ``config``: studies seen, converted, rejected by reason, released, withdrawn.

    Read from ``state_dir`` only (site indexes, study outcomes, prepared
    records, the registry, the audit log and the release manifest).
    """
    return _summaries(_gather(config))


def _summaries(data: _State) -> list[SiteSummary]:
    held = data.held_back()
    rows = []
    for site in data.config.sites:
        outcomes = data.outcomes[site.id]
        rejected = Counter(o.reason.value for o in outcomes if isinstance(o, Rejection))
        rejected.update(held[o.key].reason.value for o in outcomes if o.key in held)
        rows.append(SiteSummary(
            site=site.id,
            studies_seen=data.seen[site.id],
            converted=sum(1 for o in outcomes if isinstance(o, ConvertedCase)),
            rejected=dict(sorted(rejected.items())),
            released=sum(1 for o in outcomes if o.key in data.released),
            withdrawn=sum(1 for e in data.registry.values() if e.site == site.id and e.withdrawn),
        ))
    return rows


def _case_name(data: _State, uid: str, key: str) -> str:
    entry = data.registry.get(uid)
    return format_case_number(entry.number) if entry is not None else key[:SHORT_KEY]


def _rejections(data: _State) -> list[RejectionRow]:
    roots = data.config.configured_paths()
    held = data.held_back()
    rows = []
    for site in data.config.sites:
        for outcome in data.outcomes[site.id]:
            rejection = outcome if isinstance(outcome, Rejection) else held.get(outcome.key)
            if rejection is None:
                continue
            rows.append(RejectionRow(
                site=site.id,
                phase=rejection.phase.value,
                stage=rejection.stage,
                reason=rejection.reason,
                sentence=public_sentence(rejection.message, data.hidden, roots),
                case=_case_name(data, outcome.StudyInstanceUID, outcome.key),
            ))
    return sorted(rows, key=lambda r: ([s.id for s in data.config.sites].index(r.site), r.reason.value, r.case))


# ---------------------------------------------------------------------------
# cases


def _number(value: Any, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}{unit}"
    return f"{value}{unit}"


def _scanner(metadata: Mapping[str, Any]) -> str:
    parts = [str(metadata.get(k) or "").strip() for k in ("Manufacturer", "ManufacturerModelName")]
    return " ".join(p for p in parts if p) or "unknown"


def _facts(case: ConvertedCase, prepared: PreparedCase | None, qc: CaseQC | None) -> tuple[tuple[str, str], ...]:
    ct, pt = case.ct_metadata, case.pt_metadata
    dose = pt.get("RadionuclideTotalDose")
    facts = [
        ("Sex / age / weight", f"{pt.get('PatientSex') or '-'} / {_number(pt.get('PatientAge'))} / "
                               f"{_number(pt.get('PatientWeight'), ' kg')}"),
        ("Tracer", f"{pt.get('Radiopharmaceutical') or '-'}, {_number(dose / 1e6 if dose else None, ' MBq')}"),
        ("CT", f"{_number(ct.get('Rows'))} x {_number(ct.get('Columns'))} x {_number(ct.get('NumberOfSlices'))}, "
               f"{_number(ct.get('PixelSpacingRow'))} x {_number(ct.get('PixelSpacingColumn'))} x "
               f"{_number(ct.get('SpacingBetweenSlices') or ct.get('SliceThickness'))} mm, "
               f"{_number(ct.get('KVP'), ' kV')}"),
        ("PET", f"{_number(pt.get('Rows'))} x {_number(pt.get('Columns'))} x {_number(pt.get('NumberOfSlices'))}, "
                f"{_number(pt.get('PixelSpacingRow'))} x {_number(pt.get('PixelSpacingColumn'))} x "
                f"{_number(pt.get('SpacingBetweenSlices') or pt.get('SliceThickness'))} mm, "
                f"{pt.get('Units') or '-'}"),
    ]
    if _scanner(pt) != _scanner(ct):
        facts.insert(0, ("PET scanner", _scanner(pt)))
    if prepared is not None:
        if prepared.cylinder is not None:
            c = prepared.cylinder
            facts.append(("Defacing cylinder", f"radius {c.radius:.0f} mm, z {c.z_lo:.0f} to {c.z_hi:.0f} mm "
                                               f"({c.landmarks})"))
        if prepared.lesion_voxels_removed:
            facts.append(("Lesion voxels removed", str(prepared.lesion_voxels_removed)))
        if prepared.dropped_labels:
            facts.append(("Labels dropped", "; ".join(f"{c}: {', '.join(n)}"
                                                      for c, n in sorted(prepared.dropped_labels.items()))))
    if qc is not None:
        facts.append(("PET activity inside the CT body", f"{100 * qc.pet_inside_body:.1f} %"))
        if qc.defaced:
            facts.append(("CT voxels blanked by defacing", f"{qc.face_voxels_blanked:,}"))
        facts.append(("Label colours", qc.colours))
    return tuple(facts)


def _url(path: Path, base: Path) -> str:
    return urllib.parse.quote(Path(os.path.relpath(path, base)).as_posix())


def _placed(path: Path, out_dir: Path, key: str, sha256: str) -> Path:
    """``path`` if it is inside ``out_dir``, else its copy there (under ``qc/<key>/``)."""
    try:
        path.resolve().relative_to(out_dir.resolve())
        return path
    except ValueError:
        pass
    target = out_dir / "qc" / key / path.name
    if not target.is_file() or sha256_file(target) != sha256:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return target


def _cases(data: _State, out_dir: Path, indications: Mapping[tuple[str, str], str]) -> list[CaseRow]:
    held = data.held_back()
    release_labels = load_release_labels(data.config.release.labels)
    source_tables = load_site_tables(data.config.sites, release_labels)
    rows = []
    for site in data.config.sites:
        for case in data.outcomes[site.id]:
            if not isinstance(case, ConvertedCase):
                continue
            entry = data.registry.get(case.StudyInstanceUID)
            prepared = data.prepared.get(case.key)
            prepared = prepared if isinstance(prepared, PreparedCase) else None
            qc = data.qc.get(case.key)
            qc = qc if isinstance(qc, CaseQC) and prepared is not None else None
            reason = ""
            # the latest decision first: a case held back since the last release leaves the next one
            if entry is not None and entry.withdrawn:
                status = "withdrawn"
            elif case.key in held:
                status, reason = "held back", held[case.key].reason.value
            elif case.key in data.released:
                status = "released"
            elif prepared is not None:
                status = "ready"
            else:
                status = "not prepared"
            pictures: list[tuple[str, str, str, str, int, int]] = []
            note = ""
            if qc is not None and prepared is not None:
                if qc.fingerprint != qc_fingerprint(case, prepared, source_table=source_tables[site.id],
                                                   release_labels=release_labels):
                    note = "The pictures were drawn from an earlier preparation of this case."
                for image in qc.images:
                    if not (Path(image.full.path).is_file() and Path(image.thumbnail.path).is_file()):
                        note = "Some pictures are missing: render the QC again."
                        continue
                    full = _placed(Path(image.full.path), out_dir, case.key, image.full.sha256)
                    thumb = _placed(Path(image.thumbnail.path), out_dir, case.key, image.thumbnail.sha256)
                    pictures.append((image.name, image.title, _url(full, out_dir), _url(thumb, out_dir),
                                     image.thumbnail.width, image.thumbnail.height))
            elif prepared is not None:
                note = "No QC pictures yet."
            if prepared is None:
                defaced = "-"
            elif prepared.defaced:
                defaced = "yes"
            elif prepared.head_missing_released:
                defaced = "no: head not found, released undefaced"
            else:
                defaced = "no (site not defaced)"
            rows.append(CaseRow(
                key=case.key,
                site=site.id,
                number=format_case_number(entry.number) if entry is not None else None,
                status=status,
                reason=reason,
                indication=indications.get((site.id, case.StudyInstanceUID), site.indication),
                scanner=_scanner(case.ct_metadata),
                defaced=defaced,
                facts=_facts(case, prepared, qc),
                pictures=tuple(pictures),
                note=note,
            ))
    return sorted(rows, key=lambda r: (r.number is None, r.number or "", r.site, r.key))


# ---------------------------------------------------------------------------
# the release


def _published_parts(data: _State) -> tuple[str, tuple[tuple[str, int, str, str], ...]]:
    """A published release in parts: its digest and its zips (name, bytes, case range, sha256), from its manifest."""
    try:
        manifest = json.loads(data.state.release_manifest(data.config.release.parts_name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "", ()
    digest = manifest.get("published") if isinstance(manifest, dict) else None
    if not isinstance(digest, str) or not isinstance(manifest.get("parts"), dict):
        return "", ()
    parts = []
    for name, facts in manifest["parts"].items():
        cases = facts.get("cases") or []
        parts.append((name, int(facts.get("bytes", 0)), f"{cases[0]}-{cases[-1]} ({len(cases)})" if cases else "",
                      str(facts.get("sha256", ""))))
    return digest, tuple(parts)


def _release(data: _State) -> ReleaseInfo:
    zip_path = data.config.release.release_path
    sidecar = zip_path.with_name(zip_path.name + ".sha256")
    sha256 = ""
    parts: tuple[tuple[str, int, str, str], ...] = ()
    if zip_path.is_dir():
        sha256, parts = _published_parts(data)
    elif sidecar.is_file():
        match = re.match(r"([0-9a-f]{64})\b", sidecar.read_text(encoding="ascii", errors="replace"))
        sha256 = match.group(1) if match else ""
    verify, verified_at = "not verified", ""
    for record in reversed(data.audit):
        if record.get("event") == AuditEvent.RELEASE_VERIFIED and zip_path.name in (record.get("inputs") or {}):
            problems = len((record.get("parameters") or {}).get("problems", []))
            verify = "ok" if record.get("outcome") == "ok" else f"failed ({problems} problems)"
            if sha256 and record["inputs"][zip_path.name] != sha256:
                verify += ", of an earlier build of this zip"
            verified_at = str(record.get("time", ""))
            break
    head = _audit_head(data.state.audit_log)
    return ReleaseInfo(
        zip_name=zip_path.name,
        present=zip_path.exists(),
        sha256=sha256,
        verify=verify,
        verified_at=verified_at,
        quarantined=zip_path.with_name(zip_path.name + ".failed-verify").exists(),
        audit_records=head[0] if head else len(data.audit),
        audit_head=head[1] if head else "",
        parts=parts,
    )


# ---------------------------------------------------------------------------
# HTML

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 1.5em 3em;color:#222;background:#fafafa}
h1{font-size:1.5em;margin:.8em 0 .2em}h2{font-size:1.2em;margin:1.6em 0 .5em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;background:#fff}th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;
vertical-align:top}th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:.95em}.muted{color:#777}.bad{color:#b00}.good{color:#070}
.filters{position:sticky;top:0;background:#fafafa;padding:.5em 0;border-bottom:1px solid #ccc;z-index:1}
.filters label{margin-right:1.5em}.cases{display:flex;flex-direction:column;gap:1em}
.case{background:#fff;border:1px solid #ccc;padding:.6em .8em}.case h3{margin:0 0 .4em;font-size:1.05em}
.case table{font-size:.92em;margin-bottom:.5em}.thumbs{display:flex;flex-wrap:wrap;gap:.4em}
.thumbs figure{margin:0}.thumbs a{display:block;border:1px solid #ccc;background:#000}
.thumbs img{display:block;height:150px;width:auto}.thumbs figcaption{font-size:.8em;color:#555;text-align:center}
.status-released{color:#070}.status-held{color:#b00}.status-withdrawn{color:#777}
svg text{font:11px system-ui,sans-serif}
"""

_SCRIPT = """
(function () {
  var site = document.getElementById("filter-site");
  var reason = document.getElementById("filter-reason");
  function apply() {
    var shown = 0;
    document.querySelectorAll("[data-filter]").forEach(function (el) {
      var ok = (!site.value || el.getAttribute("data-site") === site.value) &&
               (!reason.value || el.getAttribute("data-reason") === reason.value);
      el.hidden = !ok;
      if (ok && el.classList.contains("case")) { shown += 1; }
    });
    document.getElementById("cases-shown").textContent = String(shown);
  }
  site.addEventListener("change", apply);
  reason.addEventListener("change", apply);
  apply();
})();
"""

_BAR_COLOURS = {
    "studies seen": "#888",
    "converted": "#4a7ebb",
    "rejected": "#c0504d",
    "released": "#3d9a3d",
    "withdrawn": "#b08c00",
}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _chart(row: SiteSummary, scale: int) -> str:
    """A small inline SVG bar chart of one site's counts (bars on a shared scale)."""
    values = {
        "studies seen": row.studies_seen,
        "converted": row.converted,
        "rejected": sum(row.rejected.values()),
        "released": row.released,
        "withdrawn": row.withdrawn,
    }
    width, bar, label = 160, 12, 90
    parts = [f'<svg width="{label + width + 40}" height="{len(values) * (bar + 3)}" role="img" '
             f'aria-label="{_e(row.site)} counts">']
    for i, (name, value) in enumerate(values.items()):
        y = i * (bar + 3)
        length = round(width * value / scale) if scale else 0
        parts.append(f'<text x="0" y="{y + bar - 2}">{_e(name)}</text>'
                     f'<rect x="{label}" y="{y}" width="{length}" height="{bar}" fill="{_BAR_COLOURS[name]}"/>'
                     f'<text x="{label + length + 4}" y="{y + bar - 2}">{value}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _rejected_text(rejected: Mapping[str, int]) -> str:
    if not rejected:
        return "0"
    return f"{sum(rejected.values())}: " + ", ".join(f"{code} {n}" for code, n in rejected.items())


def _summary_html(rows: list[SiteSummary]) -> str:
    scale = max((r.studies_seen for r in rows), default=0)
    out = ["<table><tr><th>site</th><th>studies seen</th><th>converted</th><th>rejected (by reason)</th>"
           "<th>released</th><th>withdrawn</th><th>chart</th></tr>"]
    for r in rows:
        out.append(f"<tr><td>{_e(r.site)}</td><td class=n>{r.studies_seen}</td><td class=n>{r.converted}</td>"
                   f"<td>{_e(_rejected_text(r.rejected))}</td><td class=n>{r.released}</td>"
                   f"<td class=n>{r.withdrawn}</td><td>{_chart(r, scale)}</td></tr>")
    total = Counter[str]()
    for r in rows:
        total.update(r.rejected)
    out.append(f"<tr><th>total</th><td class=n>{sum(r.studies_seen for r in rows)}</td>"
               f"<td class=n>{sum(r.converted for r in rows)}</td>"
               f"<td>{_e(_rejected_text(dict(sorted(total.items()))))}</td>"
               f"<td class=n>{sum(r.released for r in rows)}</td><td class=n>{sum(r.withdrawn for r in rows)}</td>"
               "<td></td></tr></table>")
    return "".join(out)


def _release_html(info: ReleaseInfo) -> str:
    if info.present:
        state = "present"
    elif info.quarantined:
        state = '<span class="bad">failed verify: moved aside as .failed-verify, not to be published</span>'
    else:
        state = "not built"
    verify_class = "good" if info.verify == "ok" else "bad" if info.verify.startswith("failed") else "muted"
    rows = [
        ("parts" if info.parts else "zip", f"<code>{_e(info.zip_name)}</code> ({state})"),
        ("digest of every file" if info.parts else "sha256", f"<code>{_e(info.sha256 or '-')}</code>"),
        ("verify", f'<span class="{verify_class}">{_e(info.verify)}</span>'
                   + (f' <span class="muted">({_e(info.verified_at)})</span>' if info.verified_at else "")),
        ("audit log head", f"{info.audit_records} records, last line sha256 <code>{_e(info.audit_head or '-')}"
                           "</code>"),
    ]
    table = "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
    if info.parts:
        table += ("<table><tr><th>part</th><th>bytes</th><th>cases</th><th>sha256</th></tr>"
                  + "".join(f"<tr><td><code>{_e(name)}</code></td><td>{size:,}</td><td>{_e(cases)}</td>"
                            f"<td><code>{_e(digest)}</code></td></tr>" for name, size, cases, digest in info.parts)
                  + "</table>")
    return table


def _rejections_html(rows: list[RejectionRow]) -> str:
    if not rows:
        return "<p>No study was rejected and no case is held back.</p>"
    out = ["<table id=rejections><tr><th>site</th><th>case</th><th>stopped at</th><th>reason</th><th>why</th></tr>"]
    for r in rows:
        out.append(f'<tr data-filter data-site="{_e(r.site)}" data-reason="{_e(r.reason.value)}">'
                   f"<td>{_e(r.site)}</td><td>{_e(r.case)}</td><td>{_e(r.stage)}"
                   f"{' (held back)' if r.phase == 'build' else ''}</td>"
                   f'<td><a href="#advice-{_e(r.reason.value)}"><code>{_e(r.reason.value)}</code></a></td>'
                   f'<td class="sentence">{_e(r.sentence)}</td></tr>')
    out.append("</table>")
    return "".join(out)


def _advice_html(rows: list[RejectionRow]) -> str:
    """Advice for the reason codes of this report's rejections; the other codes folded away."""
    seen = Counter(r.reason for r in rows)

    def table(reasons: list[RejectReason]) -> str:
        return ("<table><tr><th>reason</th><th>studies</th><th>what to do</th></tr>" + "".join(
            f'<tr id="advice-{_e(reason.value)}"><td><code>{_e(reason.value)}</code></td>'
            f"<td class=n>{seen[reason]}</td><td>{_e(STEWARD_ADVICE[reason])}</td></tr>" for reason in reasons
        ) + "</table>")

    present = sorted(seen, key=lambda r: (-seen[r], r.value))
    others = sorted((r for r in RejectReason if r not in seen), key=lambda r: r.value)
    out = table(present) if present else "<p>Nothing to do: no rejection.</p>"
    if others:
        out += f"<details><summary>The other reason codes ({len(others)})</summary>{table(others)}</details>"
    return out


def _case_html(row: CaseRow) -> str:
    title = row.number or f"unnumbered {row.key[:SHORT_KEY]}"
    status_class = {"released": "status-released", "held back": "status-held", "withdrawn": "status-withdrawn"}
    status = row.status + (f": {row.reason}" if row.reason else "")
    facts = [("site", row.site), ("indication", row.indication), ("scanner", row.scanner),
             ("defaced", row.defaced), *row.facts]
    out = [f'<section class="case" id="case-{_e(row.number or row.key[:SHORT_KEY])}" data-filter '
           f'data-site="{_e(row.site)}" data-reason="{_e(row.reason)}">'
           f'<h3>Case {_e(title)} <span class="{status_class.get(row.status, "")}">{_e(status)}</span></h3>'
           "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts) + "</table>"]
    if row.note:
        out.append(f'<p class="muted">{_e(row.note)}</p>')
    if row.pictures:
        out.append('<div class="thumbs">')
        for name, title_, full, thumb, width, height in row.pictures:
            out.append(f'<figure><a href="{_e(full)}" title="{_e(title_)}"><img src="{_e(thumb)}" '
                       f'width="{width}" height="{height}" alt="{_e(title_)}" loading="lazy"></a>'
                       f"<figcaption>{_e(name.replace('-', ' '))}</figcaption></figure>")
        out.append("</div>")
    out.append("</section>")
    return "".join(out)


def _page(config: Config, summary: list[SiteSummary], release: ReleaseInfo, rejections: list[RejectionRow],
          cases: list[CaseRow], as_of: str) -> str:
    name = f"{config.release.name} {config.release.version}"
    reasons = sorted({r.reason.value for r in rejections})
    site_options = "".join(f'<option value="{_e(s.id)}">{_e(s.id)}</option>' for s in config.sites)
    reason_options = "".join(f'<option value="{_e(r)}">{_e(r)}</option>' for r in reasons)
    return "".join([
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>QC report: {_e(name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>QC report: {_e(name)}</h1>",
        f'<p class="muted">From the state folder as of the last audit record ({_e(as_of or "none")}). '
        "For the data steward only: pictures of cases that are not defaced show faces. "
        "Pictures: head up, the patient's right on the viewer's left.</p>",
        "<h2>Sites</h2>", _summary_html(summary),
        "<h2>Last release</h2>", _release_html(release),
        '<div class="filters"><label>site <select id="filter-site"><option value="">all</option>',
        site_options, '</select></label><label>reason <select id="filter-reason"><option value="">all</option>',
        reason_options, '</select></label><span class="muted"><span id="cases-shown">',
        str(len(cases)), f"</span> of {len(cases)} cases shown</span></div>",
        f"<h2>Rejected studies and held-back cases ({len(rejections)})</h2>", _rejections_html(rejections),
        "<h2>What to do about each reason</h2>", _advice_html(rejections),
        f"<h2>Cases ({len(cases)})</h2>", '<div class="cases">', *(_case_html(c) for c in cases), "</div>",
        f"<script>{_SCRIPT}</script></body></html>\n",
    ])


# ---------------------------------------------------------------------------
# the entry point


def write_report(config: Config, *, out_dir: Path | None = None) -> Path:
    """Write the steward's QC report for ``config`` and return the path of its ``index.html``.

    Parameters
    ----------
    config
        The release configuration; its ``state_dir`` is read, nothing else is
        (besides each site's clinical sheet, for the indications).
    out_dir
        The report folder (default ``<state_dir>/report``).  QC pictures that
        are not inside it already are copied into ``<out_dir>/qc/<key>/``.

    Returns
    -------
    Path
        ``<out_dir>/index.html``, written atomically.

    Raises
    ------
    curation.clinical.ClinicalSheetError
        When a site's clinical sheet cannot be read.
    """
    data = _gather(config)
    out = Path(out_dir) if out_dir is not None else data.state.report_dir
    out.mkdir(parents=True, exist_ok=True)
    indications: dict[tuple[str, str], str] = {}
    for site in config.sites:
        if site.clinical_sheet is not None:
            indications.update({(site.id, uid): text for uid, text in read_clinical_sheet(site.clinical_sheet).items()})
    summary = _summaries(data)
    rejections = _rejections(data)
    cases = _cases(data, out, indications)
    as_of = str(data.audit[-1].get("time", "")) if data.audit else ""
    page = _page(config, summary, _release(data), rejections, cases, as_of)
    path = out / "index.html"
    atomic_write_text(path, page)
    logger.info("%s: %d cases, %d rejections", path, len(cases), len(rejections))
    return path
