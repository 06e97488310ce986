"""Where everything lives inside ``state_dir`` (never released).

```
state_dir/
  audit.jsonl                         append-only audit chain (flows.audit)
  registry.sqlite                     study -> case number (curation.registry)
  build.lock                          held while a build runs
  sites/<site>/index.json             the last index of the site's dicom_dir
  sites/<site>/sensitive.json         identifying values seen at ingest (for the leak scan)
  sites/<site>/sensitive/<key>.json   identifying values of one study (written by ingest)
  sites/<site>/studies/<key>.json     {"status": "converted"|"rejected", "record": ...}
  cases/<key>/CT.nii.gz, PT.nii.gz    converted volumes
  cases/<key>/case.json               ConvertedCase
  prepared/<key>/...                  defaced images and label maps, prepared.json
```
``<key>`` is :func:`curation.model.study_key` of the StudyInstanceUID.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.atomic import atomic_write_json
from curation.model import ConvertedCase, PreparedCase, Rejection, from_jsonable, to_jsonable


@dataclass(frozen=True)
class StatePaths:
    """Paths inside one ``state_dir``."""

    root: Path

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.jsonl"

    @property
    def registry(self) -> Path:
        return self.root / "registry.sqlite"

    @property
    def build_lock(self) -> Path:
        return self.root / "build.lock"

    def site_dir(self, site: str) -> Path:
        return self.root / "sites" / site

    def site_index(self, site: str) -> Path:
        return self.site_dir(site) / "index.json"

    def sensitive_values(self, site: str) -> Path:
        return self.site_dir(site) / "sensitive.json"

    def sensitive_dir(self, site: str) -> Path:
        """Per-study identifying values seen at ingest: ``sensitive/<key>.json`` (for the leak scan)."""
        return self.site_dir(site) / "sensitive"

    def study_outcome(self, site: str, key: str) -> Path:
        return self.site_dir(site) / "studies" / f"{key}.json"

    def case_dir(self, key: str) -> Path:
        return self.root / "cases" / key

    def prepared_dir(self, key: str) -> Path:
        return self.root / "prepared" / key


def write_outcome(state: StatePaths, outcome: ConvertedCase | Rejection) -> Path:
    """Record the ingest outcome of one study (atomically)."""
    status = "converted" if isinstance(outcome, ConvertedCase) else "rejected"
    path = state.study_outcome(outcome.site, outcome.key)
    atomic_write_json(path, {"status": status, "record": to_jsonable(outcome)})
    return path


def read_outcome(path: Path) -> ConvertedCase | Rejection:
    """Read a record written by :func:`write_outcome`."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    cls = ConvertedCase if data["status"] == "converted" else Rejection
    return from_jsonable(cls, data["record"])  # type: ignore[return-value]


def site_outcomes(state: StatePaths, site: str) -> list[ConvertedCase | Rejection]:
    """Every recorded ingest outcome of a site, in file-name order."""
    folder = state.site_dir(site) / "studies"
    if not folder.is_dir():
        return []
    # names starting with "." are atomic_output temporaries (a run killed mid-write leaves one)
    return [read_outcome(p) for p in sorted(folder.glob("*.json")) if not p.name.startswith(".")]


def write_prepared(state: StatePaths, case: PreparedCase) -> Path:
    path = state.prepared_dir(case.key) / "prepared.json"
    atomic_write_json(path, to_jsonable(case))
    return path


def read_prepared(path: Path) -> PreparedCase:
    return from_jsonable(PreparedCase, json.loads(path.read_text(encoding="utf-8")))
