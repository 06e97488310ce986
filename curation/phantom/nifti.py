"""NIfTI writers of the phantom: a site's segmentation label maps and lesion masks.

:func:`write_segmentations` writes the phantom's label maps per release
category, with release or MOOSE file names and values; :func:`write_lesion`
writes its lesion mask.  Both can write the CT grid in another axis order
(the affine always describes the same grid in world space).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np

from curation.atomic import atomic_output
from curation.labels import MOOSE_MODEL_PREFIX
from curation.model import CATEGORIES, CATEGORY_ALIASES
from curation.phantom.anatomy import Phantom, release_label_table

__all__ = ["moose_label_table", "write_lesion", "write_segmentations"]

#: release category -> the model name in MOOSE's label table (``clin_ct_organs`` -> ``organs``)
_MOOSE_MODEL = {category: alias.removeprefix(MOOSE_MODEL_PREFIX) for alias, category in CATEGORY_ALIASES.items()}


def moose_label_table() -> dict[str, dict[str, int]]:
    """The MOOSE label values by name, from ``curation/data/moose_label_codes.csv``.

    Returns
    -------
    dict[str, dict[str, int]]
        Release category -> {label name: MOOSE value} of the MOOSE model that
        fills the category.
    """
    text = resources.files("curation").joinpath("data/moose_label_codes.csv").read_text("utf-8")
    by_model: dict[str, dict[str, int]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        by_model.setdefault(row["model"], {})[row["label_name"]] = int(row["label_id"])
    return {cat: by_model[model] for cat, model in _MOOSE_MODEL.items()}


def _reorder(arr: np.ndarray, affine: np.ndarray, axis_order: str) -> tuple[np.ndarray, np.ndarray]:
    """The same grid in another axis order: flipped or permuted array with its matching affine."""
    if axis_order == "native":
        return arr, affine
    if axis_order == "flipped":
        flip = np.eye(4)
        for axis in (0, 2):
            flip[axis, axis] = -1.0
            flip[axis, 3] = arr.shape[axis] - 1
        return arr[::-1, :, ::-1], affine @ flip
    if axis_order == "permuted":
        perm = (2, 0, 1)
        new = np.transpose(arr, perm)
        out = affine.copy()
        for d, src in enumerate(perm):
            out[:, d] = affine[:, src]
        return new, out
    raise ValueError(f"axis_order {axis_order!r} is not one of 'native', 'flipped', 'permuted'")


def _save_nifti(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(np.ascontiguousarray(arr), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_output(path) as tmp:
        nib.save(img, tmp)


def write_segmentations(phantom: Phantom, seg_dir: Path, study_uid: str, *, axis_order: str = "native",
                        moose_names: bool = False, categories: Iterable[str] = CATEGORIES) -> list[Path]:
    """Write the phantom's label maps as ``seg_dir/<study_uid>/<Category>.nii.gz``.

    Parameters
    ----------
    phantom
        A phantom made with labels.
    seg_dir
        The site's segmentations folder.
    study_uid
        StudyInstanceUID of the study the maps belong to (the folder name).
    axis_order
        ``"native"`` (the CT grid as it is), ``"flipped"`` (first and last axes
        reversed) or ``"permuted"`` (axes in the order slice, column, row); the
        affine always describes the same grid in world space.
    moose_names
        Write MOOSE model file names (``clin_ct_organs.nii.gz`` ...) with MOOSE
        label values (looked up by name in ``moose_label_codes.csv``); the
        organs map then also holds ``trachea``, which the release drops.
    categories
        The release categories to write (default: all seven).

    Returns
    -------
    list[Path]
        The files written.

    Raises
    ------
    ValueError
        If the phantom was made without labels, or for an unknown ``axis_order``.
    """
    if not phantom.labels:
        raise ValueError("write_segmentations: the phantom was made without labels (with_labels=False)")
    release = release_label_table()
    moose = moose_label_table()
    alias_for = {cat: alias for alias, cat in CATEGORY_ALIASES.items()}
    affine = phantom.ct_geometry.affine_ras()
    out: list[Path] = []
    for category in categories:
        arr = phantom.labels[category]
        name = category
        if moose_names:
            lut = np.zeros(256, dtype=np.uint8)
            for label, value in release[category].items():
                lut[value] = moose[category][label]
            arr = lut[arr]
            if category == "Organs":
                for extra_name, mask in phantom.extra_labels.items():
                    arr[mask] = moose[category][extra_name]
            name = alias_for[category]
        data, aff = _reorder(arr, affine, axis_order)
        path = Path(seg_dir) / study_uid / f"{name}.nii.gz"
        _save_nifti(data.astype(np.uint8), aff, path)
        out.append(path)
    return out


def write_lesion(phantom: Phantom, lesions_dir: Path, study_uid: str, *, axis_order: str = "native") -> Path:
    """Write the lesion mask as ``lesions_dir/<study_uid>.nii.gz`` (uint8 0/1 on the CT grid).

    Parameters
    ----------
    phantom
        A phantom made with labels.
    lesions_dir
        The site's lesion folder.
    study_uid
        StudyInstanceUID of the study the mask belongs to (the file name).
    axis_order
        ``"native"``, ``"flipped"`` or ``"permuted"``, as for
        :func:`write_segmentations`.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ValueError
        For an unknown ``axis_order``.
    """
    data, aff = _reorder(phantom.lesion.astype(np.uint8), phantom.ct_geometry.affine_ras(), axis_order)
    path = Path(lesions_dir) / f"{study_uid}.nii.gz"
    _save_nifti(data, aff, path)
    return path
