"""Multi-frame CT and PET objects as a stack of single-frame "slice" views.

Enhanced CT, Enhanced PET and Legacy Converted Enhanced CT/PET Image Storage
put a whole series into one object: the pixel data holds every frame, and what a
single-frame slice carries at the top level (ImagePositionPatient,
ImageOrientationPatient, PixelSpacing, RescaleSlope, ...) lives in functional
groups: SharedFunctionalGroupsSequence for what all frames share,
PerFrameFunctionalGroupsSequence for what each frame has of its own.

:func:`expand_frames` turns every such object into one :class:`FrameView` per
frame: a dataset with the object's top-level attributes, then the shared
functional groups' attributes, then the frame's own (each later one wins), and
a ``pixel_array`` that decodes that one frame.  So the geometry QA
(:mod:`curation.geometry`), the conversion with its per-slice rescale rule
(:mod:`curation.convert`) and the metadata (:mod:`curation.metadata`) run the
same code on a multi-frame object as on a series of single-frame files.

Flattening a functional group means: each sequence of the group item that has
exactly one item (a functional group macro such as PlanePositionSequence,
PixelMeasuresSequence, PixelValueTransformationSequence, CTExposureSequence,
or the legacy objects' Unassigned Shared / Per-Frame Converted Attributes
Sequences) gives its item's attributes; anything else is kept as it is.

Enhanced PET states its corrections as YES/NO flags (AttenuationCorrected,
DecayCorrected, ...) instead of CorrectedImage, and its units as the
RescaleType of the Pixel Value Transformation functional group instead of
Units; a view of an Enhanced PET frame carries both as the single-frame
attributes (:data:`ENHANCED_PET_CORRECTIONS`), so the selection rules read one
vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.tag import Tag

from curation.errors import ConversionFailedError
from curation.model import ENHANCED_PET_CORRECTIONS

#: Enhanced CT Image Storage.
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
#: Legacy Converted Enhanced CT Image Storage.
LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
#: Enhanced PET Image Storage.
ENHANCED_PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.130"
#: Legacy Converted Enhanced PET Image Storage.
LEGACY_CONVERTED_ENHANCED_PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128.1"


#: RescaleType values that say nothing about units ("US": unspecified).
_NO_UNITS = ("", "US")

_PIXEL_DATA = Tag(0x7FE0, 0x0010)
_SHARED = Tag(0x5200, 0x9229)  # SharedFunctionalGroupsSequence
_PER_FRAME = Tag(0x5200, 0x9230)  # PerFrameFunctionalGroupsSequence
#: Top-level attributes of a multi-frame object that describe the whole object, not a frame.
_OBJECT_ONLY = frozenset(
    {
        _PIXEL_DATA,
        _SHARED,
        _PER_FRAME,
        Tag(0x0028, 0x0008),  # NumberOfFrames
        Tag(0x0028, 0x0009),  # FrameIncrementPointer
        Tag(0x7FE0, 0x0001),  # ExtendedOffsetTable
        Tag(0x7FE0, 0x0002),  # ExtendedOffsetTableLengths
    }
)


class FrameView(Dataset):
    """One frame of a multi-frame image, as a single-frame dataset.

    Every attribute is the object's (top level, then shared functional groups,
    then this frame's functional groups, flattened); the data elements are
    shared with the object, never copied.  :attr:`pixel_array` decodes this
    one frame of the object's pixel data.

    Parameters
    ----------
    source
        The multi-frame dataset, read with its pixel data.
    frame
        The frame's index (0-based) in ``source``'s pixel data.
    """

    def __init__(self, source: Dataset, frame: int) -> None:
        super().__init__()
        self._source = source
        self._frame = frame

    @property
    def frame(self) -> int:
        """The frame's index (0-based) in the object's pixel data."""
        return self._frame

    @property
    def pixel_array(self) -> np.ndarray:  # type: ignore[override]
        """The stored values of this frame, (Rows, Columns), as pydicom decodes them."""
        return pixel_array(self._source, index=self._frame)


def is_multi_frame(ds: Dataset) -> bool:
    """Whether ``ds`` keeps its frames' geometry in functional groups (an enhanced object).

    Parameters
    ----------
    ds
        A dataset (header-only reads are enough).

    Returns
    -------
    bool
        True when ``ds`` has a PerFrameFunctionalGroupsSequence or a
        SharedFunctionalGroupsSequence.
    """
    return _PER_FRAME in ds or _SHARED in ds


def _flatten_group(view: Dataset, group: Dataset) -> None:
    """Copy one functional-group item's attributes into ``view`` (macros with one item flattened)."""
    for element in group:
        value = element.value
        if element.VR == "SQ" and len(value) == 1:
            for inner in value[0]:
                view[inner.tag] = inner
        else:
            view[element.tag] = element


def _enhanced_pet_terms(view: Dataset) -> None:
    """CorrectedImage and Units of an Enhanced PET frame from its correction flags and RescaleType."""
    if str(view.get("Modality", "")) != "PT":
        return
    if "CorrectedImage" not in view:
        terms = [term for keyword, term in ENHANCED_PET_CORRECTIONS if str(view.get(keyword, "")).upper() == "YES"]
        if terms:
            view.CorrectedImage = terms
    rescale_type = str(view.get("RescaleType", "") or "").strip().upper()
    if not str(view.get("Units", "") or "").strip() and rescale_type not in _NO_UNITS:
        view.Units = rescale_type


def frame_view(source: Dataset, frame: int, *, per_frame: Dataset | None = None) -> FrameView:
    """The :class:`FrameView` of frame ``frame`` of ``source``.

    Parameters
    ----------
    source
        A multi-frame dataset (pixel data is needed only for ``pixel_array``).
    frame
        The frame's index, 0-based.
    per_frame
        The frame's PerFrameFunctionalGroupsSequence item (looked up when None).

    Returns
    -------
    FrameView
        Attributes of the object, its shared groups and the frame's groups;
        ``file_meta`` is the object's.
    """
    view = FrameView(source, frame)
    if hasattr(source, "file_meta"):
        view.file_meta = source.file_meta
    for element in source:
        if element.tag not in _OBJECT_ONLY:
            view.add(element)
    shared = source.get(_SHARED)
    if shared is not None and len(shared.value):
        _flatten_group(view, shared.value[0])
    if per_frame is None:
        items = source.get(_PER_FRAME)
        per_frame = items.value[frame] if items is not None and frame < len(items.value) else None
    if per_frame is not None:
        _flatten_group(view, per_frame)
    _enhanced_pet_terms(view)
    return view


def first_frame_attributes(ds: Dataset) -> Dataset:
    """What the first frame of ``ds`` says, for a header-only reader such as the index.

    Parameters
    ----------
    ds
        Any dataset.

    Returns
    -------
    Dataset
        ``ds`` itself when it is not an enhanced object, else the view of its
        first frame (:func:`frame_view`); its ``pixel_array`` is not for use.
    """
    return frame_view(ds, 0) if is_multi_frame(ds) else ds


def expand_frames(datasets: Sequence[Dataset], *, series_label: str) -> list[Dataset]:
    """Every frame of ``datasets`` as a single-frame dataset.

    Parameters
    ----------
    datasets
        The instances of one series, read with pixel data: single-frame
        slices, multi-frame enhanced objects, or both.
    series_label
        How messages name the series.

    Returns
    -------
    list[Dataset]
        Single-frame datasets unchanged, and one :class:`FrameView` per frame
        of each multi-frame object, in input order.

    Raises
    ------
    ConversionFailedError
        When a multi-frame object's NumberOfFrames is missing or disagrees with
        its PerFrameFunctionalGroupsSequence.
    """
    out: list[Dataset] = []
    for n, ds in enumerate(datasets):
        if not is_multi_frame(ds):
            out.append(ds)
            continue
        where = f"{series_label}: instance {n} (SOP class {ds.get('SOPClassUID', '?')})"
        try:
            frames = int(ds.get("NumberOfFrames", 0) or 0)
        except (TypeError, ValueError):
            frames = 0
        per_frame = ds.get(_PER_FRAME)
        items = list(per_frame.value) if per_frame is not None else []
        if frames < 1:
            raise ConversionFailedError(f"{where} is a multi-frame object without a usable NumberOfFrames "
                                        f"({ds.get('NumberOfFrames')!r})")
        if len(items) != frames:
            raise ConversionFailedError(
                f"{where}: NumberOfFrames is {frames} but PerFrameFunctionalGroupsSequence has "
                f"{len(items)} item(s); every frame needs its own position"
            )
        out.extend(frame_view(ds, k, per_frame=items[k]) for k in range(frames))
    return out
