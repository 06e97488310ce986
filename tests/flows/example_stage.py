"""An example per-case stage, declared in one module: label voxel counts of every prepared case.

It is what a newcomer writes to add a stage: a frozen dataclass subclassing
:class:`curation.stage.CaseStage` with its declarations and its work.  The
test adds it to the build with one line (see ``test_stages.py``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import nibabel as nib
import numpy as np

from curation.atomic import atomic_write_json, sha256_file
from curation.model import ImageFile, Phase, PreparedCase
from curation.stage import CaseStage, StudySubject
from curation.state import StatePaths


@dataclasses.dataclass(frozen=True)
class VoxelCounts:
    """The stage's record: where the counts went and their hash."""

    site: str
    StudyInstanceUID: str
    fingerprint: str
    counts: ImageFile  # any record with path and sha256 will do; ImageFile has both


@dataclasses.dataclass(frozen=True)
class VoxelCountStage(CaseStage[VoxelCounts]):
    """Count the labelled voxels of each category (upstream: ``(ConvertedCase, PreparedCase)``)."""

    name: ClassVar[str] = "count"
    phase: ClassVar[Phase] = Phase.BUILD
    version: ClassVar[int] = 1
    record_type: ClassVar[type] = VoxelCounts
    done: ClassVar[str] = "counted"
    done_event: ClassVar[str] = "case-counted"
    input_name: ClassVar[str] = "prepared"

    state: StatePaths

    def record_path(self, subject: StudySubject) -> Path:
        return self.state.root / "counts" / subject.key / "record.json"

    def fingerprint_parts(self, upstream: tuple[Any, ...]) -> dict[str, Any]:
        prepared: PreparedCase = upstream[1]
        return {"labels": {cat: img.sha256 for cat, img in sorted(prepared.labels.items())}}

    def produce(self, upstream: tuple[Any, ...], fingerprint: str) -> VoxelCounts:
        prepared: PreparedCase = upstream[1]
        counts = {cat: int(np.count_nonzero(np.asanyarray(nib.load(img.path).dataobj)))
                  for cat, img in sorted(prepared.labels.items())}
        path = self.state.root / "counts" / prepared.key / "counts.json"
        atomic_write_json(path, counts)
        image = ImageFile(path=str(path), sha256=sha256_file(path), shape=(), dtype="json", affine=())
        return VoxelCounts(prepared.site, prepared.StudyInstanceUID, fingerprint, image)

    def outputs(self, record: VoxelCounts) -> dict[str, ImageFile]:
        return {"counts.json": record.counts}

    def parameters(self, record: VoxelCounts) -> dict[str, Any]:
        return {"categories": 7}
