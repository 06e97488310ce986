"""What the QC pictures of one clinical-size case cost, on one core.

Writes one whole-body study at clinical sampling (``make_phantom(size="bench")``
with its label maps: CT 512x512x320, PET 200x200x205, seven category maps),
ingests it and prepares it twice, defaced and not defaced, with the real stage
functions; then times :func:`curation.qc.render_case_qc` on each (pinned to one
CPU), which reads every volume it draws from, checks its sha256 and writes the
PNGs.  The reference is nibabel reading the same volumes (``nib.load`` and
``np.asanyarray(img.dataobj)``), the least any tool drawing them would do.

The budget is 1 s per case on one core.  The verdict and the ratio use CPU
time: the work is single-threaded, so on an idle core CPU time is the wall
time, and on a shared machine it is the figure that does not depend on what
else runs (the wall times are printed too).

Usage::

    .venv/bin/python benchmarks/qc_render.py [--repeat N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BUDGET_S = 1.0


def build_case(root: Path) -> dict[str, tuple[object, object]]:
    """The bench study, ingested, prepared defaced and not: {"defaced": (case, prepared), ...}."""
    from curation.config import DefacingSettings, MissingHeadPolicy, SiteConfig
    from curation.dicomindex import index_site
    from curation.ingest import ingest_study
    from curation.labels import load_release_labels, release_source_table
    from curation.model import ConvertedCase, PreparedCase, from_jsonable, to_jsonable
    from curation.phantom import make_phantom, write_lesion, write_segmentations, write_study
    from curation.prepare import prepare_case
    from curation.state import StatePaths

    record_path = root / "cases.json"
    if record_path.is_file():
        saved = json.loads(record_path.read_text())
        return {k: (from_jsonable(ConvertedCase, c), from_jsonable(PreparedCase, p)) for k, (c, p) in saved.items()}
    phantom = make_phantom(size="bench", with_labels=True)
    study = write_study(phantom, root / "drop", vendor="siemens", seed=1, patient_id="SITE-0001",
                        patient_name="SITE-0001", decoys=False)
    write_segmentations(phantom, root / "seg", study.StudyInstanceUID)
    write_lesion(phantom, root / "lesions", study.StudyInstanceUID)
    labels = load_release_labels("builtin:enhance-pet")
    source = release_source_table(labels)  # the phantom's release-named maps hold release values
    out = {}
    for name, deface in (("defaced", True), ("not defaced", False)):
        site = SiteConfig("site", root / "drop", root / "seg", root / "lesions", "CC-BY-4.0", deface, "benchmark",
                          None, "", MissingHeadPolicy.HOLD)
        state = StatePaths(root / f"state-{'d' if deface else 'n'}")
        (record,) = index_site(site.id, site.dicom_dir).studies
        case = ingest_study(record, site, state)
        assert isinstance(case, ConvertedCase), case
        prepared = prepare_case(case, site, state, defacing=DefacingSettings(), release_labels=labels,
                                source_table=source)
        assert isinstance(prepared, PreparedCase) and prepared.defaced == deface, prepared
        out[name] = (case, prepared)
    record_path.write_text(json.dumps({k: [to_jsonable(c), to_jsonable(p)] for k, (c, p) in out.items()}))
    return out


def time_render(case: object, prepared: object, out_dir: Path) -> tuple[float, float, int]:
    """Wall and CPU seconds of one render_case_qc, and the number of pictures."""
    from curation.labels import load_release_labels, release_source_table
    from curation.qc import render_case_qc

    labels = load_release_labels("builtin:enhance-pet")
    source = release_source_table(labels)  # the phantom's release-named maps hold release values
    wall, cpu = time.perf_counter(), time.process_time()
    qc = render_case_qc(case, prepared, out_dir, source_table=source, release_labels=labels)  # type: ignore[arg-type]
    return time.perf_counter() - wall, time.process_time() - cpu, len(qc.images)


def time_nibabel(case: object, prepared: object) -> float:
    """CPU seconds for nibabel to read every volume the QC pictures are drawn from."""
    import nibabel as nib
    import numpy as np

    paths = [prepared.ct.path, prepared.pt.path, *(i.path for i in prepared.labels.values())]  # type: ignore[attr-defined]
    if prepared.head_before is not None:  # type: ignore[attr-defined]
        paths.append(prepared.head_before.path)  # type: ignore[attr-defined]
    start = time.process_time()
    for path in paths:
        np.asanyarray(nib.load(path).dataobj)
    return time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="renders timed per case (median reported)")
    parser.add_argument("--keep", type=Path, default=None, help="build the case here once and reuse it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    with tempfile.TemporaryDirectory(prefix="petct-qc-bench-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        cases = build_case(root)
        print("one bench case: CT 512x512x320, PET 200x200x205, 7 label maps; one core")
        ratios, verdicts = [], []
        for name, (case, prepared) in cases.items():
            time_render(case, prepared, root / "qc-warm-up")  # first touch of the files and the imports
            runs = [time_render(case, prepared, root / f"qc-{name}-{i}") for i in range(args.repeat)]
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            reference = statistics.median(time_nibabel(case, prepared) for _ in range(args.repeat))
            print(f"  {name:12s} render_case_qc {cpu:5.2f} s CPU ({wall:5.2f} s wall), {runs[0][2]} pictures; "
                  f"nibabel reading its volumes {reference:5.2f} s CPU   (median of {args.repeat})")
            ratios.append(f"{name} {cpu / reference:.2f}")
            verdicts.append(f"{name} {cpu:.2f} s ({'within' if cpu <= BUDGET_S else 'over'})")
        print(f"budget {BUDGET_S:.0f} s CPU per case: " + ", ".join(verdicts))
        print("ratio render_case_qc / nibabel reading the same volumes (CPU): " + ", ".join(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
