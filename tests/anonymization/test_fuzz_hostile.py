"""Fuzzing: 2,000 mutated DICOM files through the index, the gate and ingest, with bounded memory.

Mutations of a phantom study, of pydicom's own test files and of deid-data's
real identified files (``tests/fuzzing.py``; ``benchmarks/fuzz.py`` runs longer
campaigns).  Every file must end as a skipped file, or as a file of a study
that was converted or rejected with a reason code; no exception may escape
:func:`curation.dicomindex.index_site`, :func:`anonymization.gate.check_datasets`
or :func:`curation.ingest.ingest_study`.  The campaign runs in a subprocess so
its peak RSS is its own: it must stay below :data:`PEAK_RSS_MIB`.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

from curation.errors import RejectReason

REPO = Path(__file__).resolve().parents[2]
FILES = 2000
SEED = 20240917
#: The bound on the campaign's peak resident memory (a deflate bomb inflates to 24 MiB, the cap is 16 MiB and a slice).
PEAK_RSS_MIB = 1024


def test_fuzzed_files_all_end_as_converted_rejected_or_skipped(tmp_path: Path, deid_data_dir: Path) -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "fuzz.py"), "--files", str(FILES), "--seed", str(SEED),
         "--deid-dir", str(deid_data_dir), "--work", str(tmp_path / "work"), "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=600, check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.stdout.strip(), done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["uncaught"] == [], "\n".join(result["uncaught"][:3])
    assert done.returncode == 0, done.stderr[-3000:]

    outcomes = result["outcomes"]
    assert result["files"] == FILES == sum(outcomes.values())
    allowed = {"skipped", "converted"} | {f"rejected:{reason.value}" for reason in RejectReason}
    assert set(outcomes) <= allowed, outcomes  # no "lost" file, no "uncaught" study
    # the campaign reaches every kind of end: skipped files, conversions and many reason codes
    assert outcomes.get("skipped", 0) > 100 and outcomes.get("converted", 0) > 0, outcomes
    reasons = {o for o in outcomes if o.startswith("rejected:")}
    assert {"rejected:invalid-uid", "rejected:unreadable", "rejected:conversion-failed",
            "rejected:phi-detected"} <= reasons, outcomes
    assert set(result["mutations"]) == {"flip", "truncate", "swap-value", "wrong-vr", "delete", "huge-dims",
                                        "deflate-bomb", "deflated", "implicit-vr"}, result["mutations"]
    assert sum(result["gate"].values()) == FILES and result["gate"].get("findings", 0) > 0, result["gate"]

    assert result["peak_rss_mib"] < PEAK_RSS_MIB, result["peak_rss_mib"]
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    print(f"fuzz: {FILES} files, {cpu:.1f} s CPU, {FILES / cpu:.0f} files/s, peak RSS "
          f"{result['peak_rss_mib']:.0f} MiB, outcomes {outcomes}")
