"""The dataset card (``README.md`` inside the release).

The card is a pure function of what is released: no build time, host or path
goes into it, so identical inputs give an identical card (and zip).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from curation.config import DatePolicy, DefacingSettings
from curation.labels import ReleaseLabels
from curation.model import CATEGORIES


@dataclass(frozen=True)
class CardCase:
    """What the card needs to know of one released case (no identifiers).

    Attributes
    ----------
    case
        The formatted case number (``"0001"``).
    site
        The site's id.
    license
        The case's licence.
    indication
        Its clinical indication (``""``: not given).
    defaced
        Whether the case was defaced.
    head_missing_released
        True for a case of a defaced site released without defacing because
        its scan does not reach the head.
    """

    case: str
    site: str
    license: str
    indication: str
    defaced: bool
    head_missing_released: bool = False


@dataclass(frozen=True)
class CardSite:
    """A site as the card shows it, in config order.

    Attributes
    ----------
    id
        The site's id.
    license
        The site's licence.
    deface
        Whether the site's cases are defaced.
    identity_flag_optional
        True when the site's ``identity_removed_flag`` is ``optional``: its
        studies were released without PatientIdentityRemoved = YES (every
        other de-identification check applied).
    """

    id: str
    license: str
    deface: bool
    identity_flag_optional: bool = False


@dataclass(frozen=True)
class CardPart:
    """One data part of a release in parts, as the card lists it.

    Attributes
    ----------
    name
        The part's file name (``CT_0001-1000.zip``).
    folder
        The release folder it holds (``CT``, ``PT`` or a category).
    cases
        Its case range, ``"0001-1000"``.
    count
        How many cases it holds (fewer than the range when cases were withdrawn).
    bytes
        Its size.
    sha256
        Its sha256.
    """

    name: str
    folder: str
    cases: str
    count: int
    bytes: int
    sha256: str


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A markdown table's lines: the header, the ``|---|`` rule and one line per row.

    Parameters
    ----------
    header
        Column titles.
    rows
        Cells, each shown with ``str``.

    Returns
    -------
    list of str
        The table's lines, without newlines.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return lines


def _dates_text(dates: DatePolicy, age_cap: int) -> list[str]:
    """What the card says about the dates and ages in the spreadsheets."""
    # imported here: anonymization.dates brings pydicom, which the run's artifacts (markdown_table) do without
    from anonymization.dates import SHIFT_MAX_DAYS, SHIFT_MIN_DAYS

    if dates is DatePolicy.SHIFT:
        text = (
            "Dates are shifted. Every date of a patient's studies was moved by the same whole number of "
            f"days, between {SHIFT_MIN_DAYS:,} and {SHIFT_MAX_DAYS:,} (100 to 110 years into the future), "
            "chosen per patient from a secret that is not published: the dates in the spreadsheets are "
            "not calendar dates. Times of day are as acquired and every interval is exact (injection to "
            "acquisition, CT to PET, between the studies of one patient)."
        )
    elif dates is DatePolicy.YEAR:
        text = (
            "Dates carry the year only: `AcquisitionDate` holds the year and "
            "`RadiopharmaceuticalStartDateTime` the time of day of the injection. Times of day are as "
            "acquired; the day of the injection is not published (for the usual uptake times under 24 "
            "hours it is the day of the acquisition, or the day before when the time of day is later)."
        )
    else:
        text = (
            "Dates are as the sites delivered them: this release did not shift or shorten them, so they "
            "may be the real dates of the scans."
        )
    return [
        text,
        "",
        f"`PatientAge` is in whole years; {age_cap} means {age_cap} or older "
        f"(every age of {age_cap} years or more is published as {age_cap}).",
    ]


def render_card(
    *,
    name: str,
    version: str,
    pipeline_version: str,
    cases: Sequence[CardCase],
    sites: Sequence[CardSite],
    labels: ReleaseLabels,
    defacing: DefacingSettings,
    dates: DatePolicy = DatePolicy.SHIFT,
    age_cap: int = 90,
) -> str:
    """The Markdown text of the dataset card.

    Parameters
    ----------
    name, version
        The release's name (its top folder) and version.
    pipeline_version
        The petct-release version that built it.
    cases
        The released cases in case order.
    sites
        The configured sites in config order (sites without a released case are left out).
    labels
        The release label set (``labels.json``).
    defacing
        The ``[defacing]`` settings the defaced sites were processed with.
    dates, age_cap
        The ``[release] dates`` policy and ``age_cap`` the spreadsheets were written with.

    Returns
    -------
    str
        The card's Markdown, ending with a newline; the same inputs give the same text.
    """
    per_site = Counter(c.site for c in cases)
    defaced_per_site = Counter(c.site for c in cases if c.defaced)
    shown = [s for s in sites if per_site[s.id]]
    per_indication = Counter(c.indication or "(not given)" for c in cases)
    licences = Counter(c.license for c in cases)
    licence_of_site = {s: sorted({c.license for c in cases if c.site == s}) for s in per_site}
    n = len(cases)
    first, last = (cases[0].case, cases[-1].case) if cases else ("-", "-")

    out: list[str] = [f"# {name} {version}", ""]
    out += [
        f"A PET/CT dataset of {n} cases from {len(shown)} site{'s' if len(shown) != 1 else ''}: "
        "for every case a CT (Hounsfield units), a PET (Bq/mL) and seven "
        f"label maps with {labels.region_count} anatomical regions on the CT grid. "
        f"Cases are numbered {first} to {last}; a number missing in between belongs to a case "
        "withdrawn after an earlier release (numbers are never reused).",
        "",
        "## Licences",
        "",
        "Each case carries the licence of the site it comes from. The licences differ "
        "between sites: check the licence of every case you use (the `License` column of "
        "`CT-details.xlsx` and `PT-details.xlsx` gives it per case).",
        "",
    ]
    out += markdown_table(["licence", "cases"], sorted(licences.items()))
    out += ["", "## Sites", ""]
    out += markdown_table(
        ["site", "cases", "licence", "defaced"],
        [
            (s.id, per_site[s.id], ", ".join(licence_of_site[s.id]), "yes" if s.deface else "no")
            for s in shown
        ],
    )
    out += ["", "## Clinical indications", ""]
    out += markdown_table(["indication", "cases"], sorted(per_indication.items(), key=lambda kv: (-kv[1], kv[0])))
    out += [
        "",
        "## Layout",
        "",
        "```",
        f"{name}/",
        "  imaging-data/images/CT/NNNN.nii.gz                CT, HU, int16",
        "  imaging-data/images/PT/NNNN.nii.gz                PET, Bq/mL, float32",
        "  imaging-data/ground-truth/<Category>/NNNN.nii.gz  uint8 label map on the CT grid",
        "  labels.json                                       {category: {value: region name}}",
        "  CT-details.xlsx                                   one row per case: CT acquisition",
        "  PT-details.xlsx                                   one row per case: PET acquisition",
        "  SHA256SUMS                                        sha256 of every other file",
        "  README.md                                         this card",
        "```",
        "",
        "`NNNN` is the case number (four digits, wider past 9999); the same number names a "
        "case's CT, PET, label maps and spreadsheet rows. All volumes are NIfTI-1 in RAS+ "
        "world coordinates (mm).",
        "",
        "## Label categories",
        "",
    ]
    out += markdown_table(
        ["category", "regions", "values"],
        [
            (c, len(labels.categories[c]), f"1-{max(labels.categories[c])}" if labels.categories[c] else "-")
            for c in CATEGORIES
        ],
    )
    out += [
        "",
        "Value 0 is background. Lesion voxels are removed from every category, so the "
        "maps describe healthy tissue. The region names of each value are in `labels.json`.",
        "",
        "## How it was produced",
        "",
        f"- Built by petct-release {pipeline_version} from anonymised DICOM delivered by the "
        "sites: every header was checked against a DICOM PS3.15 de-identification profile "
        "before conversion, and the release was scanned for every identifying value seen.",
        "- CT and PET were converted from DICOM with their scanner geometry; PET voxels are "
        "activity concentration with each slice's own rescale applied.",
    ]
    optional_flag = [s.id for s in shown if s.identity_flag_optional]
    if optional_flag:
        out += [
            f"- PatientIdentityRemoved was not required for: {', '.join(optional_flag)} (the steward "
            "set `identity_removed_flag = \"optional\"`: their de-identifiers do not set the flag); "
            "every other de-identification check applied to these sites as to all others."
        ]
    defaced_sites = [s.id for s in shown if s.deface]
    if defaced_sites:
        out += [
            f"- Defaced sites: {', '.join(defaced_sites)} "
            f"({sum(defaced_per_site.values())} cases defaced). For these cases a cylinder "
            "around the face and the front of the head was removed in physical space: it starts at "
            f"the most inferior brain voxel, extends {defacing.height_voxels} PET slice spacings "
            f"upwards (capped at the top of the skull), and reaches {defacing.margin_mm:g} mm beyond "
            "the head's outline; PET voxels inside are 0, CT voxels -1000 HU"
            + (", label voxels 0." if defacing.clear_labels else "; label maps were left as they are.")
        ]
    else:
        out += ["- No site was defaced."]
    kept = sorted(s.id for s in shown if not s.deface)
    if kept and defaced_sites:
        out += [f"- Not defaced (published defaced upstream or not required): {', '.join(kept)}."]
    head_missing = sum(1 for c in cases if c.head_missing_released)
    if head_missing:
        out += [f"- {head_missing} cases of defaced sites do not reach the head and were released without defacing."]
    out += ["", "## Dates and ages", ""]
    out += _dates_text(dates, age_cap)
    out += [
        "",
        "## How to verify",
        "",
        "```",
        f"cd {name}",
        "sha256sum -c SHA256SUMS",
        "```",
        "",
        "or, with petct-release installed, on the zip as downloaded:",
        "",
        "```",
        f"petct-release verify {name}-{version}.zip",
        "```",
        "",
        "which also checks the layout, every case's geometry, data types and label values, "
        "and the spreadsheets.",
        "",
    ]
    return "\n".join(out)


def parts_section(*, name: str, version: str, max_part_size: int, parts: Sequence[CardPart]) -> str:
    """The card's closing section for a release in parts: the parts, their ranges, sizes and sha256.

    It follows the text of :func:`render_card` unchanged, so the card of a
    release in parts is the single zip's card plus this section.

    Parameters
    ----------
    name, version
        The release's name and version.
    max_part_size
        ``[release] max_part_size`` in bytes.
    parts
        The data parts, in folder and case order (``metadata.zip`` holds this
        card, so it cannot be listed in it).

    Returns
    -------
    str
        Markdown, starting with a blank line and ending with a newline.
    """
    out = [
        "",
        "## Parts",
        "",
        f"This release ships in parts: one zip per folder ({len(parts)} zips; a folder larger than "
        f"{max_part_size:,} bytes is split by case range, named `<Folder>_<first>-<last>.zip`), and "
        "`metadata.zip` with `labels.json`, the two spreadsheets, this card and `SHA256SUMS`, which are "
        "also beside the zips as loose files. Unzip every zip into one folder to get the layout above "
        f"(every member is under `{name}/`). A case range keeps its name when a case in it is withdrawn.",
        "",
    ]
    out += markdown_table(
        ["part", "folder", "cases", "bytes", "sha256"],
        [(f"`{p.name}`", p.folder, f"{p.cases} ({p.count})", f"{p.bytes:,}", f"`{p.sha256}`") for p in parts],
    )
    out += [
        "",
        "`SHA256SUMS` lists every file of the layout and, after a blank line, every part but "
        "`metadata.zip`. Check the download, then the unzipped files:",
        "",
        "```",
        "sha256sum -c --ignore-missing SHA256SUMS        # in the download folder: the parts and loose files",
        'for part in *.zip; do unzip -q -o "$part" -d extracted; done',
        f"cd extracted/{name} && sha256sum -c --ignore-missing SHA256SUMS",
        "```",
        "",
        f"or `petct-release verify {name}-{version}/` on the folder of parts as downloaded.",
        "",
    ]
    return "\n".join(out)
