"""Packaging throughput: writing the release zip versus a plain copy of the same bytes.

Builds the member files of N cases of realistic size (CT 512x512xZ int16, PET
200x200xZ' float32, seven uint8 label maps, all .nii.gz as nibabel writes
them), then, in one run and for several repetitions:

* ``zip``:  :func:`release.zipper.write_zip` over every member (stored NIfTI,
  sorted, fixed metadata, sha256 checked while streaming, temp file + rename);
* ``copy``: ``shutil.copyfile`` of the same member files into a folder;
* ``copy+fsync``: the same, then every copy fsynced (the zip is fsynced before
  its rename, so this is the like-for-like reference);
* ``build``: the whole :func:`release.assemble.assemble_release` (spreadsheets,
  card, SHA256SUMS, zip, ``.sha256`` of the zip, manifest);

and prints the median times and the ratios zip/copy and build/copy.

Usage::

    .venv/bin/python benchmarks/zip_vs_copy.py [--cases 10] [--slices 300] [--reps 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.atomic import sha256_file
from curation.config import config_from_dict
from curation.labels import load_release_labels
from curation.metadata import CT_FIELDS, PT_FIELDS
from curation.model import CATEGORIES, ConvertedCase, ImageFile, PreparedCase
from release.assemble import ReleaseEntry, assemble_release
from release.zipper import ZipMember, write_zip


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> ImageFile:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return ImageFile(str(path), sha256_file(path), tuple(data.shape), str(data.dtype), tuple(map(tuple, affine.tolist())))


def _one_case(folder: Path, slices: int, rng: np.random.Generator, labels) -> tuple[ImageFile, ImageFile, dict[str, ImageFile]]:
    """A body-like CT (noisy soft tissue in an ellipse, air outside), PET and label maps."""
    yy, xx = np.mgrid[0:512, 0:512]
    body = ((xx - 256) / 200.0) ** 2 + ((yy - 256) / 150.0) ** 2 <= 1.0
    ct = np.full((512, 512, slices), -1000, dtype=np.int16)
    ct[body] = 40
    ct += rng.normal(0, 25, ct.shape).astype(np.int16)
    ct_affine = np.diag([0.98, 0.98, 3.0, 1.0])
    pt_slices = max(1, slices * 3 // 4)
    pt = np.zeros((200, 200, pt_slices), dtype=np.float32)
    pyy, pxx = np.mgrid[0:200, 0:200]
    pbody = ((pxx - 100) / 78.0) ** 2 + ((pyy - 100) / 58.0) ** 2 <= 1.0
    pt[pbody] = 3000.0
    pt *= rng.gamma(4.0, 0.25, pt.shape).astype(np.float32)
    pt_affine = np.diag([2.5, 2.5, 4.0, 1.0])
    maps = {}
    for k, category in enumerate(CATEGORIES):
        lab = np.zeros(ct.shape, dtype=np.uint8)
        values = sorted(labels.categories[category])
        band = slice(k * slices // 7, (k + 1) * slices // 7)
        lab[:, :, band][body] = values[0]
        lab[200:300, 200:300, band] = values[-1]
        maps[category] = _save(folder / f"{category}.nii.gz", lab, ct_affine)
    return _save(folder / "CT.nii.gz", ct, ct_affine), _save(folder / "PT.nii.gz", pt, pt_affine), maps


def _entries(root: Path, cases: int, slices: int, labels) -> list[ReleaseEntry]:
    rng = np.random.default_rng(0)
    first = root / "prepared" / "case0"
    ct, pt, maps = _one_case(first, slices, rng, labels)
    entries = []
    for i in range(cases):
        folder = root / "prepared" / f"case{i}"
        if i:  # the other cases are copies of the first (same sizes, no extra synthesis time)
            folder.mkdir(parents=True, exist_ok=True)
            for f in first.iterdir():
                shutil.copyfile(f, folder / f.name)
        def moved(img: ImageFile, folder: Path = folder) -> ImageFile:
            return dataclasses.replace(img, path=str(folder / Path(img.path).name))
        uid = f"1.2.826.0.1.3680043.8.498.1.{i}"
        converted = ConvertedCase(
            "site-a", uid, f"P{i}", "20240101", f"f{i}", uid + ".1", uid + ".2", moved(ct), moved(pt),
            {n: None for n, _ in CT_FIELDS}, {n: None for n, _ in PT_FIELDS}, (), (),
        )
        prepared = PreparedCase(
            "site-a", uid, f"p{i}", moved(ct), moved(pt), {c: moved(m) for c, m in maps.items()},
            None, False, False, {}, 0,
        )
        entries.append(ReleaseEntry(i + 1, prepared, converted, "lung cancer", "CC-BY-4.0"))
    return entries


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--slices", type=int, default=300, help="CT slices per case")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        labels = load_release_labels("builtin:enhance-pet")
        t0 = time.perf_counter()
        entries = _entries(root, args.cases, args.slices, labels)
        members = [
            ZipMember(f"r/{i}/{Path(img.path).name}", path=Path(img.path), sha256=img.sha256)
            for i, e in enumerate(entries)
            for img in (e.prepared.ct, e.prepared.pt, *e.prepared.labels.values())
        ]
        total = sum(m.size() for m in members)
        print(f"{args.cases} cases, {len(members)} NIfTI members, {total / 1e9:.2f} GB "
              f"(synthesised in {time.perf_counter() - t0:.1f} s)")

        def copy() -> None:
            out = root / "copy"
            shutil.rmtree(out, ignore_errors=True)
            for m in members:
                dest = out / m.arcname
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(m.path, dest)

        def copy_fsync() -> None:
            # the zip is fsynced before its rename (atomic_output): the fair copy does the same
            copy()
            for m in members:
                with open(root / "copy" / m.arcname, "rb") as fh:
                    os.fsync(fh.fileno())

        def zip_only() -> None:
            write_zip(root / "bench.zip", members)

        def build() -> None:
            config = config_from_dict(
                {
                    "release": {"name": "bench", "version": "1", "output_dir": "dist", "state_dir": "state"},
                    "site": [{"id": "site-a", "dicom_dir": "d", "segmentations_dir": "s",
                              "license": "CC-BY-4.0", "deface": False}],
                },
                root / "release.toml",
            )
            shutil.rmtree(root / "dist", ignore_errors=True)
            assemble_release(config, entries, labels, pipeline_version="bench")

        times: dict[str, list[float]] = {"copy": [], "copy+fsync": [], "zip": [], "build": []}
        for rep in range(args.reps):
            for name, fn in (("copy", copy), ("copy+fsync", copy_fsync), ("zip", zip_only), ("build", build)):
                times[name].append(_timed(fn))
            print(f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
        med = {k: statistics.median(v) for k, v in times.items()}
        print("median: " + ", ".join(f"{k} {v:.2f} s ({total / v / 1e6:.0f} MB/s)" for k, v in med.items()))
        print(f"ratio zip/copy = {med['zip'] / med['copy']:.2f}")
        print(f"ratio zip/(copy+fsync) = {med['zip'] / med['copy+fsync']:.2f} (both durable on disk)")
        print(f"ratio build/copy = {med['build'] / med['copy']:.2f} (build also hashes the finished zip)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
