"""The demo sites: three phantom sites, their ``release.toml`` and a manifest of what each study must become."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from anonymization.dates import install_secret
from curation.atomic import atomic_write_json, atomic_write_text
from curation.config import DEFAULT_STATE_DIR, default_config_toml
from curation.phantom.anatomy import Phantom, make_phantom
from curation.phantom.dicom import Vendor, write_study
from curation.phantom.nifti import write_lesion, write_segmentations

logger = logging.getLogger(__name__)

__all__ = ["DEMO_MARKER", "EXPECTED_REASON", "MANIFEST_NAME", "DemoFolderError", "demo_sites", "write_demo_sites"]

#: Written into a demo folder once its sites exist: a later ``demo`` reuses them.
DEMO_MARKER = ".demo.json"


class DemoFolderError(ValueError):
    """The demo's output folder holds something other than a demo of the same size."""


@dataclass(frozen=True)
class _SitePlan:
    id: str
    vendor: Vendor
    prefix: str
    deface: bool
    license: str
    indication: str
    pattern: str
    moose_names: bool
    axis_order: str
    lesions: bool


_SITES = (
    _SitePlan("leipzig", Vendor.SIEMENS, "LEI", True, "CC-BY-4.0", "lung cancer", r"^LEI-\d{4}$", False,
              "native", True),
    _SitePlan("vienna", Vendor.PHILIPS, "VIE", True, "CC-BY-NC-4.0", "head and neck cancer", r"^VIE-\d{4}$", True,
              "flipped", True),
    _SitePlan("boston", Vendor.GE, "BOS", False, "CC-BY-4.0", "lymphoma", "", False, "permuted", False),
)

#: per site, the extra (non-good) studies of the demo: (defect, plant_phi)
_EXTRA_STUDIES = {
    "leipzig": [("missing-pet-slice", False)],
    "vienna": [("frame-of-reference-mismatch", False), (None, True)],
    "boston": [("nac-only", False), ("gantry-tilt", False)],
}


#: what the pipeline must make of each kind of demo study (a RejectReason value, or "case")
EXPECTED_REASON: dict[str, str] = {
    "missing-pet-slice": "missing-slices",
    "frame-of-reference-mismatch": "frame-of-reference-mismatch",
    "nac-only": "no-ac-pet",
    "gantry-tilt": "gantry-tilt",
    "non-uniform-spacing": "non-uniform-spacing",
    "plant-phi": "phi-detected",
}
#: the file beside ``release.toml`` that says what each demo study must become
MANIFEST_NAME = "phantom_manifest.json"


def write_demo_sites(out_dir: Path, *, cases_per_site: int = 2, seed: int = 0, size: str = "demo") -> Path:
    """Write three phantom sites and their ``release.toml``; return the config path.

    Sites: ``leipzig`` (Siemens style, defaced, release category file names),
    ``vienna`` (Philips style, defaced, MOOSE file names and values in flipped
    axis order, a clinical sheet overriding one study's indication, one study
    with planted identifiers) and ``boston`` (GE style, not defaced, permuted
    axis order, no lesion folder).  Each has ``cases_per_site`` good studies;
    the first good study of every site carries the decoys; leipzig's last good
    study is scanned feet first.  Rejected studies: a missing PET slice
    (leipzig), a frame-of-reference mismatch (vienna), NAC-only and a gantry
    tilt (boston).

    Layout under ``out_dir``: ``drops/<site>/``, ``seg/<site>/<uid>/``,
    ``lesions/<site>/<uid>.nii.gz``, ``clinical/vienna.csv``,
    ``release.toml`` (relative paths, state_dir ``.petct``, output_dir ``dist``)
    and ``phantom_manifest.json`` (:data:`MANIFEST_NAME`; it is not part of
    any site's delivery): site id -> one entry per study with
    StudyInstanceUID, PatientID, vendor, defect, plant_phi, feet_first, decoys
    and ``expected`` (``"case"`` or the reason code of
    :data:`EXPECTED_REASON` the study must be rejected with).

    Parameters
    ----------
    out_dir
        The folder to write into (created if missing).
    cases_per_site
        The number of good studies per site.
    seed
        Fixes every study (phantom noise and lesion position, UIDs, dates,
        file names).
    size
        The phantom size, one of ``curation.phantom.SIZES``.

    Returns
    -------
    Path
        The path of the ``release.toml`` written.

    Raises
    ------
    ValueError
        If ``cases_per_site`` is less than 1, or for an unknown ``size``.
    """
    if cases_per_site < 1:
        raise ValueError(f"write_demo_sites: cases_per_site {cases_per_site!r} must be at least 1")
    out_dir = Path(out_dir)
    phantoms: dict[tuple[int, bool], Phantom] = {}

    def phantom_for(phantom_seed: int, feet_first: bool) -> Phantom:
        key = (phantom_seed, feet_first)
        if key not in phantoms:
            phantoms[key] = make_phantom(size=size, seed=phantom_seed, feet_first=feet_first)
        return phantoms[key]

    manifest: dict[str, list[dict[str, object]]] = {}
    sheet_rows: list[tuple[str, str]] = []
    site_blocks: list[str] = []
    for s, plan in enumerate(_SITES):
        drop = out_dir / "drops" / plan.id
        studies = [(None, False, n == cases_per_site - 1 and plan.id == "leipzig") for n in range(cases_per_site)]
        studies += [(defect, phi, False) for defect, phi in _EXTRA_STUDIES[plan.id]]
        for n, (defect, phi, feet_first) in enumerate(studies):
            study_seed = seed * 1000 + s * 100 + n
            good = defect is None and not phi
            # studies that never become cases share one phantom, which keeps the demo quick
            phantom = phantom_for(study_seed if good else seed * 1000 + 999, feet_first)
            patient_id = f"{plan.prefix}-{n + 1:04d}" if plan.pattern else f"{plan.prefix}{n + 1:04d}"
            files = write_study(phantom, drop, vendor=plan.vendor, seed=study_seed, patient_id=patient_id,
                                patient_name=patient_id, decoys=(n == 0), defect=defect, plant_phi=phi)
            manifest.setdefault(plan.id, []).append({
                "StudyInstanceUID": files.StudyInstanceUID,
                "PatientID": patient_id,
                "vendor": plan.vendor.value,
                "defect": defect,
                "plant_phi": phi,
                "feet_first": feet_first,
                "decoys": n == 0,
                "expected": "case" if good else EXPECTED_REASON[defect or "plant-phi"],
            })
            uid = files.StudyInstanceUID
            write_segmentations(phantom, out_dir / "seg" / plan.id, uid, axis_order=plan.axis_order,
                                moose_names=plan.moose_names)
            if plan.lesions:
                write_lesion(phantom, out_dir / "lesions" / plan.id, uid, axis_order=plan.axis_order)
            if plan.id == "vienna" and n == 0:
                sheet_rows.append((uid, "melanoma"))
        sheet = ""
        if plan.id == "vienna":
            sheet = "clinical/vienna.csv"
            lines = ["StudyInstanceUID,indication"] + [f"{u},{ind}" for u, ind in sheet_rows]
            atomic_write_text(out_dir / sheet, "\n".join(lines) + "\n")
        site_blocks.append(
            "\n".join([
                "[[site]]",
                f'id = "{plan.id}"',
                f'dicom_dir = "drops/{plan.id}"',
                f'segmentations_dir = "seg/{plan.id}"',
                f'lesions_dir = "{f"lesions/{plan.id}" if plan.lesions else ""}"',
                f'license = "{plan.license}"',
                f"deface = {'true' if plan.deface else 'false'}",
                f'indication = "{plan.indication}"',
                f'clinical_sheet = "{sheet}"',
                f"pseudonym_pattern = '{plan.pattern}'",
                'deface_missing_head = "hold"',
                # release-named files hold release values; MOOSE-named ones MOOSE's
                f'label_table = "{"builtin:moose" if plan.moose_names else "builtin:release"}"',
            ])
        )
    config = (
        "# written by curation.phantom.write_demo_sites (phantom sites)\n"
        + default_config_toml("enhance-pet-demo", "1.0.0") + "\n" + "\n\n".join(site_blocks) + "\n"
    )
    path = out_dir / "release.toml"
    atomic_write_json(out_dir / MANIFEST_NAME, manifest)
    atomic_write_text(path, config)
    # a date-shift secret of the demo's own (phantoms: nothing to hide), so the same seed gives the same
    # release bytes whatever the folder; a real state_dir makes its secret with `secrets` on first use
    install_secret(out_dir / DEFAULT_STATE_DIR, hashlib.sha256(f"petct-release phantom demo {seed}".encode()).digest())
    logger.info("wrote 3 phantom sites under %s", out_dir)
    return path


def demo_sites(out_dir: Path, *, cases_per_site: int) -> Path:
    """The demo's phantom sites in ``out_dir``: written once, reused after (the ``demo`` command).

    ``out_dir/.demo.json`` records the ``cases_per_site`` the sites were made
    with and whether writing them finished, so an interrupted demo writes them
    again and a finished one is reused (a second demo then has nothing to do).

    Parameters
    ----------
    out_dir
        The demo folder (absolute).
    cases_per_site
        Cases per phantom site.

    Returns
    -------
    Path
        The demo's ``release.toml``.

    Raises
    ------
    DemoFolderError
        When ``out_dir`` holds a demo of another size, or is not empty and not a demo folder.
    """
    config_path = out_dir / "release.toml"
    marker = out_dir / DEMO_MARKER
    if marker.is_file():
        made = json.loads(marker.read_text(encoding="utf-8"))
        if made.get("cases_per_site") != cases_per_site:
            raise DemoFolderError(
                f"{out_dir} holds a demo made with --cases {made.get('cases_per_site')}, not "
                f"--cases {cases_per_site}; use the same --cases or another --out"
            )
        if made.get("complete") is True and config_path.is_file():
            logger.info("reusing the phantom sites in %s", out_dir)
            return config_path
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise DemoFolderError(f"{out_dir} exists and is not a demo folder; choose an empty or new --out")
    atomic_write_json(marker, {"cases_per_site": cases_per_site, "complete": False})
    logger.info("writing %d phantom case(s) per site to %s", cases_per_site, out_dir)
    config_path = Path(write_demo_sites(out_dir, cases_per_site=cases_per_site))
    atomic_write_json(marker, {"cases_per_site": cases_per_site, "complete": True})
    return config_path
