"""Phantom helpers only the tests use: the demo manifest reader and extra ingest defects.

The phantom itself is :mod:`curation.phantom`; what lives here is not needed
by ``petct-release demo`` or the benchmarks.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pydicom

# the phantom's private writers: the damaged files are encoded exactly as write_study encodes files
from curation.phantom.dicom import StudyFiles, _dicom_bytes, _ds_str, _hexname, _uid, _write_file
from curation.phantom.sites import MANIFEST_NAME

__all__ = ["INGEST_DEFECTS", "add_ingest_defect", "read_manifest"]


def read_manifest(config_path: Path) -> dict[str, list[dict[str, object]]]:
    """Read the manifest :func:`curation.phantom.write_demo_sites` wrote beside ``release.toml``.

    Parameters
    ----------
    config_path
        The ``release.toml`` that ``write_demo_sites`` returned.

    Returns
    -------
    dict[str, list[dict[str, object]]]
        Site id -> one entry per study: StudyInstanceUID, PatientID, vendor,
        defect, plant_phi, feet_first, decoys and ``expected`` (``"case"`` or
        the reason code the study must be rejected with).
    """
    return json.loads((Path(config_path).parent / MANIFEST_NAME).read_text("utf-8"))


#: Defects :func:`add_ingest_defect` plants into a study ``write_study`` already wrote.
INGEST_DEFECTS: tuple[str, ...] = ("inconsistent-orientation", "second-ct-series", "short-ct-pixel-data")


def add_ingest_defect(study: StudyFiles, defect: str) -> StudyFiles:
    """Damage a written study in place so that ingest must reject it.

    ``inconsistent-orientation``: the middle CT slice is rotated 10 degrees in
    plane (same normal, other ImageOrientationPatient).  ``second-ct-series``:
    a second diagnostic CT series on the same frame of reference (a copy with
    its own UIDs, role ``ct2``), so the case is ambiguous.
    ``short-ct-pixel-data``: the middle CT slice keeps a well-formed file but
    its PixelData holds half the pixels Rows x Columns needs.

    Parameters
    ----------
    study
        A study :func:`curation.phantom.write_study` wrote.
    defect
        One of :data:`INGEST_DEFECTS`.

    Returns
    -------
    StudyFiles
        ``study`` with ``files`` and ``defect`` updated.

    Raises
    ------
    ValueError
        For an unknown ``defect``.
    """
    if defect not in INGEST_DEFECTS:
        raise ValueError(f"add_ingest_defect: defect {defect!r} is not one of {', '.join(INGEST_DEFECTS)}")
    files = dict(study.files)
    ct_paths = study.files["ct"]
    middle = ct_paths[len(ct_paths) // 2]
    if defect == "inconsistent-orientation":
        ds = pydicom.dcmread(middle)
        angle = np.deg2rad(10.0)
        row = [np.cos(angle), np.sin(angle), 0.0]
        col = [-np.sin(angle), np.cos(angle), 0.0]
        ds.ImageOrientationPatient = [_ds_str(float(v)) for v in (*row, *col)]
        _write_file(middle, _dicom_bytes(ds))
    elif defect == "short-ct-pixel-data":
        ds = pydicom.dcmread(middle)
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        _write_file(middle, _dicom_bytes(ds))
    else:
        series_uid = _uid(study.StudyInstanceUID, "second ct")
        copies = []
        for k, path in enumerate(ct_paths):
            ds = pydicom.dcmread(path)
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = 9
            ds.SeriesDescription = "CT WB 2.0 recon"
            ds.SOPInstanceUID = _uid(study.StudyInstanceUID, series_uid, k)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            copy = path.with_name(f"{_hexname(16, series_uid, k)}")
            _write_file(copy, _dicom_bytes(ds))
            copies.append(copy)
        files["ct2"] = tuple(copies)
    return dataclasses.replace(study, files=files, defect=defect)
