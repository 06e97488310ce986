"""Small release inputs built in code: tiny NIfTI volumes, records and a config.

Every case has a CT (int16), a PET (float32) and seven label maps (uint8) with
values from the builtin label set; cases of the defaced site are defaced with
the real :func:`anonymization.deface.cylinder_mask` over a recorded cylinder.
Each converted case carries a planted UID and PatientID, so tests can show
that no identifier reaches the release.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from anonymization.dates import install_secret
from anonymization.deface import cylinder_mask
from curation.atomic import sha256_file
from curation.config import Config, config_from_dict
from curation.labels import ReleaseLabels, load_release_labels
from curation.metadata import CT_FIELDS, PT_FIELDS
from curation.model import (
    CATEGORIES,
    ConvertedCase,
    DefaceCylinder,
    ImageFile,
    PreparedCase,
)
from release.assemble import ReleaseEntry
from release.checksums import sha256sums_text

CT_SHAPE = (12, 10, 8)
CT_AFFINE = np.array([[2.0, 0, 0, -11.0], [0, 2.0, 0, -9.0], [0, 0, 3.0, -10.5], [0, 0, 0, 1]])
PT_SHAPE = (6, 5, 4)
PT_AFFINE = np.array([[4.0, 0, 0, -10.0], [0, 4.0, 0, -8.0], [0, 0, 6.0, -9.0], [0, 0, 0, 1]])
#: Covers the top slices of both grids, around the in-plane centre.
CYLINDER = DefaceCylinder(z_lo=0.0, z_hi=15.0, axis_x=0.0, axis_y=0.0, radius=5.0, landmarks="segmentation")

#: The date-shift secret of the test state folders (so two folders give the same release bytes).
TEST_SECRET = bytes(range(100, 132))
PLANTED_UID_ROOT = "1.2.826.0.1.3680043.8.498.7777"
PLANTED_PATIENT_ID = "PSEUDO-PATIENT-4242"


def planted_uid(i: int) -> str:
    return f"{PLANTED_UID_ROOT}.{i}"


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> ImageFile:
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return ImageFile(
        path=str(path),
        sha256=sha256_file(path),
        shape=tuple(int(n) for n in data.shape),
        dtype=str(data.dtype),
        affine=tuple(tuple(float(v) for v in row) for row in affine),
    )


def ct_metadata(i: int) -> dict[str, object]:
    values: dict[str, object] = {
        "Manufacturer": "SIEMENS",
        "ManufacturerModelName": "Biograph128",
        "KVP": 120.0,
        "FilterType": "FLAT",
        "ConvolutionKernel": "B30f",
        "PixelSpacingRow": 2.0,
        "PixelSpacingColumn": 2.0,
        "SliceThickness": 3.0,
        "SpacingBetweenSlices": 3.0,
        "NumberOfSlices": CT_SHAPE[2],
        "Rows": CT_SHAPE[1],
        "Columns": CT_SHAPE[0],
        "FocalSpots": "1.2",
        "XRayTubeCurrent": 80.5 + i,
        "Exposure": 33.0,
        "AcquisitionDate": f"2024-03-{i + 1:02d}",
        "AcquisitionTime": "14:05:09",
        "LossyImageCompression": "00",
        "LossyImageCompressionRatio": None,
        "LossyImageCompressionMethod": None,
    }
    assert [k for k, _ in CT_FIELDS] == list(values), "fixture out of step with CT_FIELDS"
    values["PatientID"] = PLANTED_PATIENT_ID  # never a column: must not reach the release
    values["StudyInstanceUID"] = planted_uid(i)
    return values


def pt_metadata(i: int) -> dict[str, object]:
    values: dict[str, object] = {name: None for name, _ in PT_FIELDS}
    values.update(
        {
            "Manufacturer": "SIEMENS",
            "ManufacturerModelName": "Biograph128",
            "PatientSex": "F" if i % 2 else "M",
            "PatientAge": 50 + i,
            "PatientWeight": 71.5,
            "PatientSize": 1.72,
            "Radiopharmaceutical": "Fluorodeoxyglucose",
            "RadionuclideTotalDose": 3.1e8,
            "RadiopharmaceuticalStartDateTime": f"2024-03-{i + 1:02d}T13:01:02",
            "RadionuclideHalfLife": 6586.2,
            "Units": "BQML",
            "DecayCorrection": "START",
            "CorrectedImage": "ATTN\\DECY",
            "RescaleSlopeMin": 0.5,
            "RescaleSlopeMax": 2.25,
            "RescaleIntercept": 0.0,
            "NumberOfSlices": PT_SHAPE[2],
            "AcquisitionDate": f"2024-03-{i + 1:02d}",
            "AcquisitionTime": "14:20:00",
            "SeriesDate": f"2024-03-{i + 1:02d}",
            "SeriesTime": "14:20:00",
            "SeriesStartDateTime": f"2024-03-{i + 1:02d}T14:20:00",
            "InjectionToSeriesStartSeconds": 4738.0,  # 13:01:02 -> 14:20:00
            "DecayCorrectionReferenceDateTime": f"2024-03-{i + 1:02d}T14:20:00",
            "DecayFactorMin": 1.645,
            "DecayFactorMax": 1.645,
            "FrameReferenceTimeMin": 0.0,
            "FrameReferenceTimeMax": 0.0,
            # 71500 / (3.1e8 * 2 ** (-4738 / 6586.2))
            "SUVbwScaleFactor": 71500 / (3.1e8 * 2 ** (-4738 / 6586.2)),
        }
    )
    values["PatientName"] = "Doe^Planted"
    return values


@dataclass
class ReleaseInputs:
    """A config, labels and entries for a small release, plus a way to rebuild one case."""

    root: Path
    config: Config
    labels: ReleaseLabels
    entries: list[ReleaseEntry]

    def replace_image(
        self, number: int, which: str, data: np.ndarray, affine: np.ndarray | None = None
    ) -> None:
        """Overwrite a case's CT, PT or label map (by category) and update its records."""
        idx = next(i for i, e in enumerate(self.entries) if e.number == number)
        entry = self.entries[idx]
        prepared = entry.prepared
        old = prepared.ct if which == "CT" else prepared.pt if which == "PT" else prepared.labels[which]
        new = save_nifti(Path(old.path), data, CT_AFFINE if affine is None else affine)
        if which == "CT":
            prepared = dataclasses.replace(prepared, ct=new)
        elif which == "PT":
            prepared = dataclasses.replace(prepared, pt=new)
        else:
            prepared = dataclasses.replace(prepared, labels={**prepared.labels, which: new})
        self.entries[idx] = dataclasses.replace(entry, prepared=prepared)


def _config(root: Path, *, name: str = "enhance-pet-test", version: str = "1.0.0", **release: object) -> Config:
    raw = {
        "release": {"name": name, "version": version, "output_dir": "dist", "state_dir": "state", **release},
        "defacing": {"height_voxels": 2, "margin_mm": 3.0, "clear_labels": True},
        "site": [
            {
                "id": "leipzig",
                "dicom_dir": "drops/leipzig",
                "segmentations_dir": "seg/leipzig",
                "license": "CC-BY-4.0",
                "deface": True,
                "indication": "lung cancer",
            },
            {
                "id": "vienna",
                "dicom_dir": "drops/vienna",
                "segmentations_dir": "seg/vienna",
                "license": "CC-BY-NC-4.0",
                "deface": False,
                "indication": "lymphoma",
            },
        ],
    }
    return config_from_dict(raw, root / "release.toml")


def make_inputs(
    root: Path, *, cases: int = 3, seed: int = 0, secret: bytes | None = TEST_SECRET, **release: object
) -> ReleaseInputs:
    """Build ``cases`` cases (alternating sites, the first at the defaced site).

    ``release`` sets ``[release]`` keys (``dates``, ``age_cap``); ``secret`` is
    put into the state folder as its date-shift secret (``None``: the build makes one).
    """
    config = _config(root, **release)
    if secret is not None:
        install_secret(config.release.state_dir, secret)
    labels = load_release_labels("builtin:enhance-pet")
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(cases):
        site = config.sites[i % 2]
        uid = planted_uid(i)
        case_dir = root / "prepared" / f"c{i}"
        ct = rng.integers(-1000, 1500, size=CT_SHAPE).astype(np.int16)
        pt = (rng.random(PT_SHAPE) * 5000).astype(np.float32)
        maps = {}
        owner = rng.integers(0, len(CATEGORIES) + 1, size=CT_SHAPE)  # categories do not overlap
        for k, category in enumerate(CATEGORIES, start=1):
            values = np.array(list(labels.categories[category]), dtype=np.uint8)
            maps[category] = np.where(owner == k, rng.choice(values, size=CT_SHAPE), 0).astype(np.uint8)
        if site.deface:
            ct_mask = cylinder_mask(CYLINDER, CT_SHAPE, CT_AFFINE)
            ct[ct_mask] = -1000
            pt[cylinder_mask(CYLINDER, PT_SHAPE, PT_AFFINE)] = 0
            for category in CATEGORIES:
                maps[category][ct_mask] = 0
        ct_file = save_nifti(case_dir / "CT.nii.gz", ct, CT_AFFINE)
        pt_file = save_nifti(case_dir / "PT.nii.gz", pt, PT_AFFINE)
        label_files = {c: save_nifti(case_dir / f"{c}.nii.gz", maps[c], CT_AFFINE) for c in CATEGORIES}
        converted = ConvertedCase(
            site=site.id,
            StudyInstanceUID=uid,
            PatientID=PLANTED_PATIENT_ID,
            StudyDate="20240301",
            fingerprint=f"fp{i}",
            ct_series=f"{uid}.1",
            pt_series=f"{uid}.2",
            ct=ct_file,
            pt=pt_file,
            ct_metadata=ct_metadata(i),
            pt_metadata=pt_metadata(i),
            ignored=(),
            private_review=(),
        )
        prepared = PreparedCase(
            site=site.id,
            StudyInstanceUID=uid,
            fingerprint=f"pfp{i}",
            ct=ct_file,
            pt=pt_file,
            labels=label_files,
            cylinder=CYLINDER if site.deface else None,
            defaced=site.deface,
            head_missing_released=False,
            dropped_labels={},
            lesion_voxels_removed=0,
        )
        entries.append(ReleaseEntry(i + 1, prepared, converted, site.indication, site.license))
    return ReleaseInputs(root, config, labels, entries)


@pytest.fixture
def inputs(tmp_path: Path) -> ReleaseInputs:
    return make_inputs(tmp_path)


def rewrite_zip(
    src: Path,
    dst: Path,
    *,
    replace: Mapping[str, bytes | None] | None = None,
    add: Mapping[str, bytes] | None = None,
    fix_sums: bool = True,
    transform: Callable[[str, bytes], bytes] | None = None,
) -> None:
    """Copy a release zip, replacing (None: dropping) or adding members by their path inside ``<top>/``.

    With ``fix_sums`` the copy's SHA256SUMS is recomputed, so the only problem
    left is the one the test plants.
    """
    import hashlib

    replace = dict(replace or {})
    add = dict(add or {})
    with zipfile.ZipFile(src) as zin:
        top = zin.namelist()[0].split("/", 1)[0]
        contents = {}
        for info in zin.infolist():
            rel = info.filename[len(top) + 1 :]
            data = zin.read(info)
            if rel in replace:
                if replace[rel] is None:
                    continue
                data = replace[rel]  # type: ignore[assignment]
            if transform is not None:
                data = transform(rel, data)
            contents[rel] = data
    contents.update(add)
    if fix_sums:
        digests = {
            r: hashlib.sha256(d).hexdigest() for r, d in contents.items() if r not in ("SHA256SUMS", "") and not r.endswith("/")
        }
        contents["SHA256SUMS"] = sha256sums_text(digests).encode()
    with zipfile.ZipFile(dst, "w") as zout:
        for rel in sorted(contents):
            method = zipfile.ZIP_STORED if rel.endswith(".nii.gz") else zipfile.ZIP_DEFLATED
            zout.writestr(zipfile.ZipInfo(f"{top}/{rel}", (1980, 1, 1, 0, 0, 0)), contents[rel], compress_type=method)
