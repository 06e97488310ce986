"""Cost of defacing one case against the cost of converting it.

Writes one ``make_phantom(size="bench")`` study (CT 512x512x320, PET
200x200x205, Siemens style, no decoys), reads both series once, then, several
times:

* conversion: :func:`curation.convert.convert_series` of the CT and of the PET
  (the datasets already in memory: reading the files is not counted, which
  makes the ratio larger, not smaller);
* defacing with landmarks: :func:`anonymization.deface.plan_cylinder` with
  brain and skull masks on the converted CT grid, then
  :func:`anonymization.deface.apply_cylinder` on CT and PET (the volumes
  already loaded, as the case-preparation step has them);
* defacing with the CT-only fallback: the same with no masks.

The bench phantom carries no label maps (they would cost gigabytes), so the
landmark masks are those the fallback finds, computed once beforehand.

Prints each repetition and the median ratios defacing / conversion.

    .venv/bin/python benchmarks/deface_cost.py [--repeats 3] [--keep DIR]

``--keep DIR`` keeps the study's DICOM there and reuses it on the next run.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from anonymization.deface import apply_cylinder, ct_fallback_landmarks, plan_cylinder
from curation.convert import convert_series
from curation.dicomindex import index_site
from curation.model import Modality
from curation.phantom import make_phantom, write_study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--keep", type=Path, default=None, help="work folder to keep (default: a temp folder)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    work = args.keep or Path(tempfile.mkdtemp(prefix="petct-deface-bench-"))
    try:
        dicom_dir = work / "dicom"
        started = time.perf_counter()
        if not dicom_dir.is_dir():
            write_study(
                make_phantom(size="bench", seed=0),
                dicom_dir,
                vendor="siemens",
                seed=0,
                patient_id="BENCH-0001",
                patient_name="BENCH-0001",
                decoys=False,
            )
        (study,) = index_site("bench", dicom_dir).studies
        files = {series.Modality: series.files for series in study.series}
        ct_ds = [pydicom.dcmread(p) for p in files["CT"]]
        pt_ds = [pydicom.dcmread(p) for p in files["PT"]]
        print(
            f"study: {len(ct_ds)} CT and {len(pt_ds)} PET slices "
            f"(written and read in {time.perf_counter() - started:.0f} s)"
        )

        # wall time, and CPU time of this process (steadier on a shared machine)
        convert, deface_seg, deface_ct = [], [], []
        convert_cpu, deface_seg_cpu, deface_ct_cpu = [], [], []
        cylinder = None
        brain = skull = None
        for rep in range(args.repeats):
            out = work / f"rep-{rep}"
            out.mkdir()
            t0, c0 = time.perf_counter(), time.process_time()
            ct_file = convert_series(ct_ds, out / "CT.nii.gz", modality=Modality.CT)
            pt_file = convert_series(pt_ds, out / "PT.nii.gz", modality=Modality.PT)
            convert.append(time.perf_counter() - t0)
            convert_cpu.append(time.process_time() - c0)

            ct_img, pt_img = nib.load(ct_file.path), nib.load(pt_file.path)
            ct_img = nib.Nifti1Image(np.asanyarray(ct_img.dataobj), ct_img.affine, ct_img.header)
            pt_img = nib.Nifti1Image(np.asanyarray(pt_img.dataobj), pt_img.affine, pt_img.header)
            if brain is None:
                brain, skull = ct_fallback_landmarks(ct_img)

            t0, c0 = time.perf_counter(), time.process_time()
            cylinder = plan_cylinder(ct_img, pt_img, brain, skull)
            apply_cylinder(cylinder, ct_img, pt_img)
            deface_seg.append(time.perf_counter() - t0)
            deface_seg_cpu.append(time.process_time() - c0)

            t0, c0 = time.perf_counter(), time.process_time()
            fallback = plan_cylinder(ct_img, pt_img, None, None)
            apply_cylinder(fallback, ct_img, pt_img)
            deface_ct.append(time.perf_counter() - t0)
            deface_ct_cpu.append(time.process_time() - c0)
            print(
                f"rep {rep}: conversion {convert[-1]:.2f} s, defacing {deface_seg[-1]:.2f} s "
                f"(landmarks), {deface_ct[-1]:.2f} s (CT-only fallback)"
            )
            shutil.rmtree(out)

        print(f"cylinder: {cylinder}")
        med = statistics.median
        print(
            f"median conversion (CT + PET, convert_series): {med(convert):.2f} s wall, {med(convert_cpu):.2f} s CPU"
        )
        for what, wall, cpu in (
            ("landmarks", deface_seg, deface_seg_cpu),
            ("CT-only fallback", deface_ct, deface_ct_cpu),
        ):
            print(
                f"defacing / conversion, {what}: {med(wall) / med(convert):.3f} (wall), "
                f"{med(cpu) / med(convert_cpu):.3f} (CPU)"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
