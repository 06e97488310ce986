"""The run's Prefect artifacts: a summary and the rejections, seen by the whole team (no identifiers).

Artifacts live on the Prefect server, which a whole team reads; every sentence
goes through :func:`anonymization.redact.public_sentence` with every
identifying value ingest recorded, the values this run saw, and the configured
folders.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from anonymization.redact import public_sentence
from curation.config import Config
from curation.state import load_sensitive_values
from flows.decisions import RunSummary, Tally
from release.card import markdown_table

logger = logging.getLogger(__name__)


def publish(
    flow_name: str, config: Config, tally: Tally, summary: RunSummary, *, converted_by: str, report: str | None = None
) -> None:
    """Create the run's summary (markdown) and rejections (table) artifacts.

    Parameters
    ----------
    flow_name
        The flow's name (part of the artifact keys).
    config
        The release configuration.
    tally
        What the run collected.
    summary
        The run's summary.
    converted_by
        The stage whose finished cases count as converted.
    report
        The steward's QC report (``index.html``), linked from the summary; the
        report itself shows faces of sites that are not defaced and never goes
        into an artifact.
    """
    roots = config.configured_paths()
    hidden = set(tally.sensitive)
    try:  # every identifying value ingest recorded (names too), not only the ones this run saw
        hidden |= load_sensitive_values(config.release.state_dir)
    except ValueError as exc:
        logger.warning("artifacts: the recorded sensitive values cannot be read (%s); UIDs and paths are still blanked", exc)
    converted = tally.finished(converted_by).values()
    order = [s.id for s in config.sites]
    sites = sorted(set(tally.studies) | {c.site for c in converted} | {r.site for r in tally.rejected}
                   | set(tally.released), key=order.index)
    lines = [
        f"# {flow_name}: {config.release.name} {config.release.version}",
        "",
        f"Converted {summary.converted}, rejected {sum(summary.rejected.values())}, "
        f"released {summary.released}, failed {summary.failed}"
        + (" (nothing to do: everything was up to date)" if summary.nothing_to_do else "") + ".",
        "",
    ]
    lines += markdown_table(
        ["site", "studies seen", "converted", "rejected", "released"],
        [
            [site, tally.studies.get(site, "-"), sum(1 for c in converted if c.site == site),
             sum(1 for r in tally.rejected if r.site == site), len(tally.released.get(site, []))]
            for site in sites
        ],
    )
    if summary.zip_path:
        lines += ["", f"Release: `{Path(summary.zip_path).name}`"]
    if report:
        # named relative to the config (absolute paths under configured folders never reach an artifact)
        where = Path(report)
        shown = where.relative_to(config.path.parent) if where.is_relative_to(config.path.parent) else (
            Path("<state_dir>") / where.relative_to(config.release.state_dir))
        lines += ["", f"QC report for the steward, on the machine that ran this run (it shows faces of "
                      f"sites that are not defaced, so it is never an artifact): `{shown.as_posix()}` "
                      "beside the config; `petct-release report CONFIG` writes it again."]
    if tally.released:
        lines += ["", "## Released cases", ""]
        lines += [f"- {site}: {', '.join(nums)}" for site, nums in tally.released.items()]
    rows = [
        {"site": r.site, "stage": r.stage, "reason": r.reason.value,
         "sentence": public_sentence(r.message, hidden, roots)}
        for r in sorted(tally.rejected, key=lambda r: (r.site, r.reason.value, r.message))
    ]
    if rows:
        lines += ["", "## Rejected", ""]
        lines += markdown_table(["site", "reason", "why"],
                                [[r["site"], f"`{r['reason']}`", r["sentence"]] for r in rows])
    if tally.failed:
        lines += ["", "## Failed (unexpected errors; see the logs and the audit log)", ""]
        lines += [f"- {site or '(release)'}: {step}: {public_sentence(error, hidden, roots)}"
                  for site, step, error in tally.failed]
    key = re.sub(r"[^a-z0-9-]", "-", f"{config.release.name}-{flow_name}".lower())
    create_markdown_artifact("\n".join(lines) + "\n", key=f"{key}-summary",
                             description=f"{flow_name} run summary (no identifiers)")
    create_table_artifact(rows, key=f"{key}-rejected",
                          description="Rejected studies: reason code and sentence (identifiers blanked)")
