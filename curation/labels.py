"""The release label set and the source (MOOSE) label table.

Two tables meet when a segmentation is read:

* the **release labels** (``labels.json``): per release category, the values
  and names a released label map may hold. The default is the ENHANCE.PET set
  shipped as package data (``builtin:enhance-pet``, 130 regions); a site may
  point ``[release] labels`` at its own ``labels.json`` of the same form.
* the **source label table**: what the values of a delivered map mean, per
  MOOSE model (``curation/data/moose_label_codes.csv`` by default).

Source values are mapped to release values *by name* (see
:mod:`curation.segmentations`), so the two tables may number regions
differently and the release may leave some source regions out.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.resources
import io
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.config import (
    BUILTIN_LABELS,
    BUILTIN_MOOSE_TABLE,
    BUILTIN_RELEASE_TABLE,
    ConfigError,
    SiteConfig,
)
from curation.model import CATEGORIES, CATEGORY_ALIASES

logger = logging.getLogger(__name__)

_BUILTIN_FILE = "enhance_pet_labels.json"
_MOOSE_FILE = "moose_label_codes.csv"
_VALUE_RE = re.compile(r"^[1-9][0-9]{0,2}$")
#: Optional column of a source label table: a label's display colour as ``[r, g, b]`` (0..255).
COLOUR_COLUMN = "recommendedDisplayRGBValue"
_RGB_RE = re.compile(r"^\[\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*\]$")

#: The ``model`` column of the MOOSE label table names a model without this
#: prefix (``organs`` for ``clin_ct_organs``, a key of
#: :data:`curation.model.CATEGORY_ALIASES`).  Models without a release
#: category (``body``, ``digestive``, ``face``, ``fat_old``) are not read.
MOOSE_MODEL_PREFIX = "clin_ct_"


class LabelTableError(ConfigError):
    """A label table (release labels.json or source csv) is malformed; names file and entry."""


@dataclass(frozen=True)
class ReleaseLabels:
    """The label set of a release: category -> {value: name}, categories in release order.

    Attributes
    ----------
    categories
        ``{"Organs": {1: "adrenal_gland_left", ...}, ...}``; the seven
        categories of :data:`curation.model.CATEGORIES`, values 1..255 in
        increasing order, names unique within a category.
    source
        Where the set came from (``builtin:enhance-pet`` or a file path).
    """

    categories: dict[str, dict[int, str]]
    source: str

    def values_by_name(self, category: str) -> dict[str, int]:
        """Name -> release value for one category.

        Parameters
        ----------
        category
            One of :data:`curation.model.CATEGORIES`.

        Returns
        -------
        dict[str, int]
            Region name -> release value.
        """
        return {name: value for value, name in self.categories[category].items()}

    @property
    def region_count(self) -> int:
        """How many regions the release carries over all categories."""
        return sum(len(v) for v in self.categories.values())


@dataclass(frozen=True)
class SourceLabelTable:
    """What the values of delivered label maps mean, per release category.

    Attributes
    ----------
    categories
        Release category -> {source value: source label name}.
    source
        The csv file the table was read from.
    digest
        sha256 of the table's content (part of every prepared case's fingerprint).
    colours
        Release category -> {source label name: (r, g, b)} from the table's
        optional ``recommendedDisplayRGBValue`` column (MOOSE's table has one
        for every label); empty for a table without it.
    """

    categories: dict[str, dict[int, str]]
    source: str
    digest: str
    colours: dict[str, dict[str, tuple[int, int, int]]] = field(default_factory=dict)

    def names(self, category: str) -> dict[int, str]:
        """Source value -> label name for one category.

        Parameters
        ----------
        category
            One of :data:`curation.model.CATEGORIES`.

        Returns
        -------
        dict[int, str]
            Source value -> source label name.
        """
        return self.categories[category]

    def colour_of(self, category: str, name: str) -> tuple[int, int, int] | None:
        """The recommended display colour of label ``name`` of ``category``, or None when the table has none."""
        return self.colours.get(category, {}).get(name)


# ---------------------------------------------------------------------------
# release labels


def _read_builtin(name: str) -> bytes:
    return importlib.resources.files("curation").joinpath("data", name).read_bytes()


def release_labels_from_dict(raw: Any, where: str) -> ReleaseLabels:
    """Validate a parsed ``labels.json`` document.

    Parameters
    ----------
    raw
        The parsed JSON: ``{"<Category>": {"<value>": "<name>", ...}, ...}``.
    where
        The file (or ``builtin:...``) named in error messages.

    Returns
    -------
    ReleaseLabels
        Categories in release order, values in increasing order.

    Raises
    ------
    LabelTableError
        When the categories are not exactly the seven release categories, a
        value is not an integer from 1 to 255, or a name is empty or repeated
        within its category.
    """
    if not isinstance(raw, Mapping):
        raise LabelTableError(f"{where}: expected a JSON object of categories, got {type(raw).__name__}")
    got = set(raw)
    if got != set(CATEGORIES):
        missing = sorted(set(CATEGORIES) - got)
        extra = sorted(got - set(CATEGORIES))
        raise LabelTableError(
            f"{where}: the categories must be exactly {', '.join(CATEGORIES)}; "
            f"missing {missing}, unexpected {extra}"
        )
    categories: dict[str, dict[int, str]] = {}
    for category in CATEGORIES:
        entries = raw[category]
        if not isinstance(entries, Mapping) or not entries:
            raise LabelTableError(
                f"{where}: category {category!r} must be a non-empty object of value -> name, got {entries!r}"
            )
        table: dict[int, str] = {}
        seen: dict[str, str] = {}
        for key, name in entries.items():
            if not isinstance(key, str) or not _VALUE_RE.match(key) or int(key) > 255:
                raise LabelTableError(
                    f"{where}: {category} value {key!r} is not allowed; expected an integer from 1 to 255"
                )
            if not isinstance(name, str) or not name.strip() or name != name.strip():
                raise LabelTableError(
                    f"{where}: {category} value {key}: name {name!r} must be a non-empty string "
                    "without surrounding spaces"
                )
            if name in seen:
                raise LabelTableError(
                    f"{where}: {category} name {name!r} is used twice (values {seen[name]} and {key}); "
                    "names must be unique within a category"
                )
            seen[name] = key
            table[int(key)] = name
        categories[category] = dict(sorted(table.items()))
    return ReleaseLabels(categories=categories, source=where)


def load_release_labels(spec: str) -> ReleaseLabels:
    """Load the release label set named by ``[release] labels``.

    Parameters
    ----------
    spec
        ``"builtin:enhance-pet"`` for the packaged ENHANCE.PET set, otherwise
        the path of a ``labels.json`` of the same form.

    Returns
    -------
    ReleaseLabels
        The validated label set (see :func:`release_labels_from_dict`).

    Raises
    ------
    LabelTableError
        When the file cannot be read, is not JSON or fails validation; the
        message names the file and the bad entry.
    """
    if spec == BUILTIN_LABELS:
        data = _read_builtin(_BUILTIN_FILE)
        where = spec
    else:
        try:
            data = Path(spec).read_bytes()
        except OSError as exc:
            raise LabelTableError(f"{spec}: cannot read the labels file ({exc.strerror})") from None
        where = spec
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelTableError(f"{where}: not valid UTF-8 JSON ({exc})") from None
    return release_labels_from_dict(raw, where)


def labels_json_bytes(labels: ReleaseLabels) -> bytes:
    """The release's ``labels.json``: categories in release order, values sorted numerically.

    The bytes depend only on the label set (fixed indentation, ASCII, final
    newline), so two builds write identical files.

    Parameters
    ----------
    labels
        The release label set.

    Returns
    -------
    bytes
        The file's content.
    """
    doc = {
        category: {str(value): labels.categories[category][value] for value in sorted(labels.categories[category])}
        for category in CATEGORIES
    }
    return (json.dumps(doc, indent=2, ensure_ascii=True) + "\n").encode("ascii")


# ---------------------------------------------------------------------------
# source label table


def _category_of_model(model: str) -> str | None:
    """Release category of a ``model`` column value (MOOSE short name, clin_ct_ name or category)."""
    if model in CATEGORIES:
        return model
    return CATEGORY_ALIASES.get(model) or CATEGORY_ALIASES.get(MOOSE_MODEL_PREFIX + model)


def source_table_from_csv(data: bytes, where: str) -> SourceLabelTable:
    """Parse a source label table (csv with columns ``model``, ``label_name``, ``label_id``).

    Rows of models without a release category are skipped.  An optional
    ``recommendedDisplayRGBValue`` column (``"[r, g, b]"``, as in MOOSE's
    table) gives each label's display colour; an empty cell means none.

    Parameters
    ----------
    data
        The csv file's bytes (UTF-8, a byte-order mark allowed).
    where
        The file named in error messages and recorded as the table's source.

    Returns
    -------
    SourceLabelTable
        Per release category, source value -> label name; ``digest`` is the
        sha256 of ``data``.

    Raises
    ------
    LabelTableError
        When a column is missing, a ``label_id`` is not an integer from 1 to
        255, a value or name is repeated within a model, a colour is not
        ``[r, g, b]`` with components from 0 to 255, or a release category
        has no rows.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelTableError(f"{where}: not UTF-8 text ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    needed = {"model", "label_name", "label_id"}
    if reader.fieldnames is None or not needed <= set(reader.fieldnames):
        raise LabelTableError(f"{where}: expected columns {sorted(needed)}, got {reader.fieldnames}")
    categories: dict[str, dict[int, str]] = {c: {} for c in CATEGORIES}
    colours: dict[str, dict[str, tuple[int, int, int]]] = {c: {} for c in CATEGORIES}
    skipped: set[str] = set()
    for line, row in enumerate(reader, start=2):
        model = (row["model"] or "").strip()
        category = _category_of_model(model)
        if category is None:
            skipped.add(model)
            continue
        raw_id = (row["label_id"] or "").strip()
        name = (row["label_name"] or "").strip()
        if not _VALUE_RE.match(raw_id) or int(raw_id) > 255:
            raise LabelTableError(
                f"{where}: line {line}: label_id {raw_id!r} of model {model!r} is not an integer from 1 to 255"
            )
        if not name:
            raise LabelTableError(f"{where}: line {line}: model {model!r} value {raw_id} has an empty label_name")
        table = categories[category]
        value = int(raw_id)
        if value in table:
            raise LabelTableError(
                f"{where}: line {line}: model {model!r} value {value} is given twice "
                f"({table[value]!r} and {name!r})"
            )
        if name in table.values():
            raise LabelTableError(f"{where}: line {line}: model {model!r} label_name {name!r} is given twice")
        table[value] = name
        colour = _colour(row.get(COLOUR_COLUMN), where, line)
        if colour is not None:
            colours[category][name] = colour
    empty = [c for c in CATEGORIES if not categories[c]]
    if empty:
        raise LabelTableError(f"{where}: no rows for the categories {empty}")
    if skipped:
        logger.debug("%s: models without a release category not read: %s", where, sorted(skipped))
    return SourceLabelTable(
        categories={c: dict(sorted(t.items())) for c, t in categories.items()},
        source=where,
        digest=hashlib.sha256(data).hexdigest(),
        colours={c: t for c, t in colours.items() if t},
    )


def _colour(cell: str | None, where: str, line: int) -> tuple[int, int, int] | None:
    """A ``recommendedDisplayRGBValue`` cell as (r, g, b); None for an empty cell or no column."""
    text = (cell or "").strip()
    if not text:
        return None
    match = _RGB_RE.match(text)
    if match is None or any(int(v) > 255 for v in match.groups()):
        raise LabelTableError(
            f"{where}: line {line}: {COLOUR_COLUMN} {text!r} is not [r, g, b] with components from 0 to 255"
        )
    r, g, b = (int(v) for v in match.groups())
    return (r, g, b)


def load_source_table(path: str | Path | None = None) -> SourceLabelTable:
    """Load the source label table (default: MOOSE's, shipped as package data).

    Parameters
    ----------
    path
        A csv of the same form as ``curation/data/moose_label_codes.csv``;
        None for the packaged MOOSE table.

    Returns
    -------
    SourceLabelTable
        The validated table (see :func:`source_table_from_csv`).

    Raises
    ------
    LabelTableError
        When the file cannot be read or fails validation.
    """
    if path is None:
        return source_table_from_csv(_read_builtin(_MOOSE_FILE), f"builtin:{_MOOSE_FILE}")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise LabelTableError(f"{path}: cannot read the source label table ({exc.strerror})") from None
    return source_table_from_csv(data, str(path))


def release_source_table(release: ReleaseLabels, colours: SourceLabelTable | None = None) -> SourceLabelTable:
    """The source table of a site whose maps hold release values already (``builtin:release``).

    Parameters
    ----------
    release
        The release label set: each category's values and names are the table's.
    colours
        A table whose display colours (by label name) the result keeps, so
        QC images look the same whichever table a site uses; None for MOOSE's.

    Returns
    -------
    SourceLabelTable
        Source value == release value; ``digest`` is the sha256 of the
        release's ``labels.json`` under the name ``builtin:release``.
    """
    colours = colours or load_source_table()
    return SourceLabelTable(
        categories={c: dict(release.categories[c]) for c in CATEGORIES},
        source=BUILTIN_RELEASE_TABLE,
        digest=hashlib.sha256(BUILTIN_RELEASE_TABLE.encode("ascii") + b"\n" + labels_json_bytes(release)).hexdigest(),
        colours={c: t for c in CATEGORIES
                 if (t := {n: rgb for n, rgb in colours.colours.get(c, {}).items()
                           if n in release.categories[c].values()})},
    )


def load_site_tables(sites: Iterable[SiteConfig], release: ReleaseLabels) -> dict[str, SourceLabelTable]:
    """Load each site's ``label_table`` once: site id -> source label table.

    Parameters
    ----------
    sites
        The ``[[site]]`` tables.
    release
        The release label set (the table of ``builtin:release`` sites).

    Returns
    -------
    dict[str, SourceLabelTable]
        Site id -> its table; sites naming the same table share one object.

    Raises
    ------
    LabelTableError
        When a csv table cannot be read or fails validation.
    """
    loaded: dict[str, SourceLabelTable] = {}
    tables: dict[str, SourceLabelTable] = {}
    for site in sites:
        spec = site.label_table
        if spec not in loaded:
            if spec == BUILTIN_MOOSE_TABLE:
                loaded[spec] = load_source_table()
            elif spec == BUILTIN_RELEASE_TABLE:
                loaded[spec] = release_source_table(release)
            else:
                loaded[spec] = load_source_table(spec)
        tables[site.id] = loaded[spec]
    return tables
