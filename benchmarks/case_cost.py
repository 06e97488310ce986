"""What one clinical-size case costs, stage by stage: the figure to size a cluster with.

Writes one whole-body study at clinical sampling (``make_phantom(size="bench")``
with its label maps: CT 512x512x320, PET 200x200x205, seven category maps on
the CT grid and a lesion mask), then runs the plain stage functions on it one
after the other, on one core, and prints each stage's wall time and the bytes
it reads and writes.  ``index`` and ``ingest`` (gate, QA, conversion) run on a
worker in a flow, ``prepare`` (segmentations, lesion, defacing) too; ``package``
and ``verify`` run once per release, in the flow's own process and as two
tasks (checks and leak scan) respectively.

Usage::

    .venv/bin/python benchmarks/case_cost.py [--repeat N]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curation.config import (  # noqa: E402
    Config,
    DefacingSettings,
    ExecutionSettings,
    MissingHeadPolicy,
    ReleaseSettings,
    ScheduleSettings,
    SiteConfig,
)


def _size_mb(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


def one_case(root: Path, phantom: object) -> dict[str, float]:
    """Stage wall times (s) for one case written under ``root``."""
    from curation.dicomindex import index_site
    from curation.ingest import ingest_study
    from curation.labels import load_release_labels, release_source_table
    from curation.model import ConvertedCase, PreparedCase
    from curation.phantom import write_lesion, write_segmentations, write_study
    from curation.prepare import prepare_case
    from curation.state import StatePaths
    from release.assemble import ReleaseEntry, assemble_release
    from release.verify import leak_scan_problems, verify_release

    study = write_study(phantom, root / "drop", vendor="siemens", seed=1, patient_id="SITE-0001",
                        patient_name="SITE-0001", decoys=False)
    write_segmentations(phantom, root / "seg", study.StudyInstanceUID)
    write_lesion(phantom, root / "lesions", study.StudyInstanceUID)
    site = SiteConfig("site", root / "drop", root / "seg", root / "lesions", "CC-BY-4.0", True, "benchmark",
                      None, "", MissingHeadPolicy.HOLD)
    config = Config(root / "release.toml",
                    ReleaseSettings("bench", "1.0.0", root / "dist", root / "state", "builtin:enhance-pet"),
                    DefacingSettings(), ExecutionSettings(), ScheduleSettings(), (site,))
    state = StatePaths(config.release.state_dir)
    labels = load_release_labels(config.release.labels)
    source = release_source_table(labels)  # the phantom's release-named maps hold release values
    times: dict[str, float] = {}

    start = time.perf_counter()
    (record,) = index_site(site.id, site.dicom_dir).studies
    times["index"] = time.perf_counter() - start

    start = time.perf_counter()
    case = ingest_study(record, site, state)
    times["ingest (gate, QA, convert)"] = time.perf_counter() - start
    assert isinstance(case, ConvertedCase), case

    start = time.perf_counter()
    prepared = prepare_case(case, site, state, defacing=config.defacing, release_labels=labels, source_table=source)
    times["prepare (labels, lesion, deface)"] = time.perf_counter() - start
    assert isinstance(prepared, PreparedCase), prepared

    start = time.perf_counter()
    result = assemble_release(config, [ReleaseEntry(1, prepared, case, "benchmark", site.license)], labels,
                           pipeline_version="benchmark")
    times["package (zip)"] = time.perf_counter() - start

    start = time.perf_counter()
    report = verify_release(Path(result.zip_path), state_dir=state.root, leak_scan=False)
    times["verify: checks"] = time.perf_counter() - start
    start = time.perf_counter()
    leaks = leak_scan_problems(Path(result.zip_path), state.root)
    times["verify: leak scan"] = time.perf_counter() - start
    assert report.ok and not leaks, (report.problems, leaks)

    times["_dicom_mb"] = _size_mb([Path(p) for series in record.series for p in series.files])
    times["_release_mb"] = result.bytes / 1e6
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="cases timed (median reported)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from curation.phantom import make_phantom

    phantom = make_phantom(size="bench", with_labels=True)
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="petct-case-cost-") as tmp:
            runs.append(one_case(Path(tmp), phantom))
    ct, pt = phantom.ct_hu.shape, phantom.pt_bqml.shape
    print(f"one case: CT {ct[0]}x{ct[1]}x{ct[2]}, PET {pt[0]}x{pt[1]}x{pt[2]}, 7 label maps; "
          f"{runs[0]['_dicom_mb']:.0f} MB of DICOM in, {runs[0]['_release_mb']:.0f} MB in the release zip")
    total = 0.0
    for stage in [k for k in runs[0] if not k.startswith("_")]:
        value = statistics.median(r[stage] for r in runs)
        total += value
        print(f"  {stage:34s} {value:7.2f} s")
    print(f"  {'total, one core':34s} {total:7.2f} s   (median of {args.repeat})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
