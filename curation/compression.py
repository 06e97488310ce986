"""Was a series lossy-compressed?  Read from its transfer syntax and LossyImageCompression.

A series counts as lossy-compressed when any of its instances

* says so: LossyImageCompression (0028,2110) is ``"01"`` (the image was lossy
  compressed at some point, even if it is stored uncompressed now), or
* is stored in a transfer syntax that codes lossy (:data:`LOSSY_TRANSFER_SYNTAXES`).
  JPEG 2000 (1.2.840.10008.1.2.4.91), HTJ2K (…4.203) and JPEG-LS near-lossless
  (…4.81) may also carry a reversible coding, but nothing in the header
  promises it (the lossless-only syntaxes exist for that), so they count as
  lossy: the conservative reading for a research release.

:func:`lossy_compression` gives the finding for the site's ``lossy`` option
(:class:`curation.config.LossyPolicy`) and the three columns of the details
sheets (:data:`LOSSY_FIELDS`): ``LossyImageCompression`` (``"00"``/``"01"``),
``LossyImageCompressionRatio`` and ``LossyImageCompressionMethod``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

#: Transfer syntaxes whose coding is (or may be) lossy: UID -> (name, LossyImageCompressionMethod term).
LOSSY_TRANSFER_SYNTAXES: dict[str, tuple[str, str]] = {
    "1.2.840.10008.1.2.4.50": ("JPEG Baseline (Process 1)", "ISO_10918_1"),
    "1.2.840.10008.1.2.4.51": ("JPEG Extended (Process 2 and 4)", "ISO_10918_1"),
    **{
        f"1.2.840.10008.1.2.4.{n}": (f"retired lossy JPEG process (1.2.840.10008.1.2.4.{n})", "ISO_10918_1")
        for n in (52, 53, 54, 55, 56, 59, 60, 61, 62, 63, 64)
    },
    "1.2.840.10008.1.2.4.81": ("JPEG-LS Lossy (Near-Lossless) Image Compression", "ISO_14495_1"),
    "1.2.840.10008.1.2.4.91": ("JPEG 2000 Image Compression", "ISO_15444_1"),
    "1.2.840.10008.1.2.4.93": ("JPEG 2000 Part 2 Multi-component Image Compression", "ISO_15444_1"),
    "1.2.840.10008.1.2.4.203": ("High-Throughput JPEG 2000 Image Compression", "ISO_15444_15"),
    "1.2.840.10008.1.2.4.111": ("JPEG XL JPEG Recompression", "ISO_18181_1"),
    "1.2.840.10008.1.2.4.112": ("JPEG XL", "ISO_18181_1"),
    **{f"1.2.840.10008.1.2.4.{n}": ("MPEG-2 video", "ISO_13818_2") for n in (100, 101)},
    **{f"1.2.840.10008.1.2.4.{n}": ("MPEG-4 AVC/H.264 video", "ISO_14496_10") for n in (102, 103, 104, 105, 106)},
    **{f"1.2.840.10008.1.2.4.{n}": ("HEVC/H.265 video", "ISO_23008_2") for n in (107, 108)},
}

#: The details-sheet columns of :func:`lossy_compression` (name, kind), in column order.
LOSSY_FIELDS: tuple[tuple[str, str], ...] = (
    ("LossyImageCompression", "str"),
    ("LossyImageCompressionRatio", "float"),
    ("LossyImageCompressionMethod", "str"),
)


@dataclass(frozen=True)
class LossyCompression:
    """What a series' headers say about lossy compression.

    Attributes
    ----------
    lossy
        Whether any instance was lossy-compressed (see the module docstring).
    ratio
        Mean over the lossy instances that state a LossyImageCompressionRatio
        of the largest ratio each states (several values: successive
        compressions); None when none states one.
    methods
        LossyImageCompressionMethod terms in order of appearance, or the
        transfer syntax's term where an instance states none.
    evidence
        A sentence naming the first lossy instance and why, for messages
        (``""`` when not lossy).
    """

    lossy: bool
    ratio: float | None
    methods: tuple[str, ...]
    evidence: str

    def fields(self) -> dict[str, Any]:
        """The :data:`LOSSY_FIELDS` values of a details-sheet row."""
        return {
            "LossyImageCompression": "01" if self.lossy else "00",
            "LossyImageCompressionRatio": self.ratio,
            "LossyImageCompressionMethod": "\\".join(self.methods) or None,
        }


def _values(ds: Dataset, keyword: str) -> list[str]:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    if isinstance(value, str | float | int):
        return [str(value).strip()]
    return [str(v).strip() for v in value]  # type: ignore[union-attr]


def _largest_ratio(ds: Dataset) -> float | None:
    ratios = []
    for text in _values(ds, "LossyImageCompressionRatio"):
        try:
            ratios.append(float(text))
        except ValueError:
            continue  # an unreadable ratio is left out, never guessed
    return max(ratios) if ratios else None


def lossy_compression(datasets: Sequence[Dataset]) -> LossyCompression:
    """Whether the instances of one series were lossy-compressed, and how.

    Parameters
    ----------
    datasets
        The series' instances (or frame views of them), with ``file_meta``.

    Returns
    -------
    LossyCompression
    """
    ratios: list[float] = []
    methods: list[str] = []
    evidence = ""
    for index, ds in enumerate(datasets):
        meta = getattr(ds, "file_meta", None)
        syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        flagged = str(ds.get("LossyImageCompression", "") or "").strip() == "01"
        coded = LOSSY_TRANSFER_SYNTAXES.get(syntax)
        if not (flagged or coded):
            continue
        stated = _values(ds, "LossyImageCompressionMethod")
        for method in stated or ([coded[1]] if coded else []):
            if method not in methods:
                methods.append(method)
        ratio = _largest_ratio(ds)
        if ratio is not None:
            ratios.append(ratio)
        if not evidence:
            where = f"instance {index} (InstanceNumber {ds.get('InstanceNumber')})"
            evidence = (
                f"{where} has LossyImageCompression '01'" if flagged
                else f"{where} is stored as {coded[0]} ({syntax}), a lossy coding"  # type: ignore[index]
            )
    return LossyCompression(
        lossy=bool(evidence),
        ratio=round(statistics.fmean(ratios), 3) if ratios else None,
        methods=tuple(methods),
        evidence=evidence,
    )
