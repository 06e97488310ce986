"""Where everything lives inside ``state_dir`` (never released).

```
state_dir/
  audit.jsonl                         append-only audit chain (flows.audit)
  registry.sqlite                     study -> case number (curation.registry)
  build.lock                          held while a build runs
  sites/<site>/index.json             the last index of the site's dicom_dir
  sites/<site>/stat-cache.json        each file's digest and header values, by stat (curation.statcache)
  sites/<site>/sensitive/<key>.json   identifying values of one study (written by ingest)
  sites/<site>/studies/<key>.json     ingest's record: {"status": "converted"|"rejected", "record": ...}
  cases/<key>/CT.nii.gz, PT.nii.gz    converted volumes
  cases/<key>/case.json               ConvertedCase
  prepared/<key>/...                  defaced images and label maps
  prepared/<key>/prepared.json        prepare's record: {"status": "prepared"|"rejected", "record": ...}
  qc/<key>.json                       CaseQC: the case's QC pictures and numbers (curation.qc)
  report/index.html                   the steward's QC report (flows.report)
  report/qc/<key>/*.png               the QC pictures, full size and thumbnails
  releases/<name>-<version>.json      build manifest of a release (zip or parts; release.assemble)
  parts/<name>.json                   case ranges of a release in parts, fixed across builds (release.parts)
  parts/<name>-<version>/<part>.json  what a written part holds and its sha256 (reuse without rewriting)
```
The report folder holds no UID: the QC records, which do, stay outside it.
``<key>`` is :func:`curation.model.study_key` of the StudyInstanceUID.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from curation.model import ConvertedCase, Rejection
from curation.stage import read_record


@dataclass(frozen=True)
class StatePaths:
    """Paths inside one ``state_dir``."""

    root: Path

    @property
    def audit_log(self) -> Path:
        """The hash-chained audit log."""
        return self.root / "audit.jsonl"

    @property
    def registry(self) -> Path:
        """The SQLite registry of case numbers."""
        return self.root / "registry.sqlite"

    @property
    def build_lock(self) -> Path:
        """Held while a build of the release runs."""
        return self.root / "build.lock"

    def site_dir(self, site: str) -> Path:
        """One site's index, ingest records and identifying values."""
        return self.root / "sites" / site

    def site_index(self, site: str) -> Path:
        """The last index of the site's ``dicom_dir``."""
        return self.site_dir(site) / "index.json"

    def stat_cache(self, site: str) -> Path:
        """What reading each file of the site's ``dicom_dir`` gave, by file stat (:mod:`curation.statcache`)."""
        return self.site_dir(site) / "stat-cache.json"

    def sensitive_dir(self, site: str) -> Path:
        """Per-study identifying values seen at ingest: ``sensitive/<key>.json`` (for the leak scan)."""
        return self.site_dir(site) / "sensitive"

    def study_outcome(self, site: str, key: str) -> Path:
        """The ingest stage's record of one study."""
        return self.site_dir(site) / "studies" / f"{key}.json"

    def study_outcomes_of_every_site(self, key: str) -> list[Path]:
        """The ingest records of one study at every site that delivered it, by site id."""
        return sorted((self.root / "sites").glob(f"*/studies/{key}.json"))

    def case_dir(self, key: str) -> Path:
        """Converted volumes of one study (``CT.nii.gz``, ``PT.nii.gz``, ``case.json``)."""
        return self.root / "cases" / key

    def prepared_dir(self, key: str) -> Path:
        """Prepared images and label maps of one case."""
        return self.root / "prepared" / key

    def prepared_record(self, key: str) -> Path:
        """The prepare stage's record of one case."""
        return self.prepared_dir(key) / "prepared.json"

    @property
    def report_dir(self) -> Path:
        """The steward's report: ``index.html`` and the QC pictures under ``qc/``."""
        return self.root / "report"

    def qc_dir(self, key: str) -> Path:
        """Where the QC pictures of one case go (inside the report folder)."""
        return self.report_dir / "qc" / key

    def qc_record(self, key: str) -> Path:
        """The QC stage's record of one case (:class:`~curation.model.CaseQC`)."""
        return self.root / "qc" / f"{key}.json"

    def sensitive_files(self) -> list[Path]:
        """Every study's identifying values of every site (``sites/*/sensitive/<key>.json``), sorted.

        Atomic-write temporaries (names starting with ``.``) are left out.
        """
        files = (self.root / "sites").glob("*/sensitive/*.json")
        return sorted(p for p in files if not p.name.startswith("."))

    def release_manifest(self, zip_name: str) -> Path:
        """The build manifest of the release zip called ``zip_name``: ``releases/<name>-<version>.json``."""
        return self.root / "releases" / f"{zip_name.removesuffix('.zip')}.json"

    def parts_layout(self, name: str) -> Path:
        """The case ranges of a release in parts, kept across builds and versions: ``parts/<name>.json``."""
        return self.root / "parts" / f"{name}.json"

    def part_record(self, release: str, part: str) -> Path:
        """What a written part holds and its sha256: ``parts/<name>-<version>/<part>.json``."""
        return self.root / "parts" / release / f"{part}.json"

    def release_manifests(self) -> list[Path]:
        """The build manifests of every release built from this state folder, sorted."""
        return sorted(p for p in (self.root / "releases").glob("*.json") if not p.name.startswith("."))


def site_outcomes(state: StatePaths, site: str) -> list[ConvertedCase | Rejection]:
    """Every recorded ingest outcome of a site, in file-name order.

    Parameters
    ----------
    state
        The state folder.
    site
        The site's id.

    Returns
    -------
    list
        Converted cases and rejections, as ingest recorded them.
    """
    folder = state.site_dir(site) / "studies"
    if not folder.is_dir():
        return []
    # names starting with "." are atomic_output temporaries (a run killed mid-write leaves one)
    return [read_record(p, ConvertedCase) for p in sorted(folder.glob("*.json")) if not p.name.startswith(".")]


def load_sensitive_values(state_dir: Path, *, include_dates: bool = False) -> frozenset[str]:
    """Every sensitive value ingest recorded under ``state_dir``.

    Reads every study's file (:meth:`curation.state.StatePaths.sensitive_files`).
    A file holds either a JSON list of strings or an object whose ``values``
    is such a list (its other string fields, e.g. ``StudyInstanceUID``, count
    as values too).  An object's ``dates`` list holds every date of the
    study's headers in each form a release can carry it (``YYYYMMDD``,
    ``YYYY-MM-DD``, spreadsheet serial).

    Parameters
    ----------
    state_dir
        The pipeline's state folder.
    include_dates
        Add the ``dates`` lists too: for a release that does not publish its
        dates as delivered (``[release] dates`` ``shift`` or ``year``).

    Returns
    -------
    frozenset[str]
        The values, stripped, empty ones left out.

    Raises
    ------
    ValueError
        A file of another shape (naming the file).
    """
    values: set[str] = set()
    for path in StatePaths(Path(state_dir)).sensitive_files():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        dates: object = []
        if isinstance(data, dict):
            extra = [v for k, v in data.items() if k != "values" and isinstance(v, str)]
            dates = data.get("dates", [])
            data = data.get("values")
            if isinstance(data, list):
                data = data + extra
        if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
            raise ValueError(f'{path}: expected a JSON list of strings or {{"values": [...]}}')
        if not isinstance(dates, list) or not all(isinstance(v, str) for v in dates):
            raise ValueError(f'{path}: "dates" must be a JSON list of strings')
        values.update(v.strip() for v in data if v.strip())
        if include_dates:
            values.update(v.strip() for v in dates if v.strip())
    return frozenset(values)
