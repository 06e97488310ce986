"""The ``release.toml`` configuration, validated once into frozen dataclasses.

After :func:`load_config` no code reads raw TOML dicts: every key has been
checked for type and allowed values, and every relative path has been resolved
against the folder of the config file.  A wrong key or value raises
:class:`ConfigError` whose message names the key, the bad value and what is
allowed; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

#: ``[release] labels`` naming the ENHANCE.PET label set shipped with the package.
BUILTIN_LABELS = "builtin:enhance-pet"
#: ``[[site]] label_table`` naming MOOSE's source label table shipped with the package (the default).
BUILTIN_MOOSE_TABLE = "builtin:moose"
#: ``[[site]] label_table`` for a site whose maps already hold release values.
BUILTIN_RELEASE_TABLE = "builtin:release"
#: ``[release] output_dir`` when it is not given (relative to the config file).
DEFAULT_OUTPUT_DIR = "dist"
#: ``[release] state_dir`` when it is not given (relative to the config file).
DEFAULT_STATE_DIR = ".petct"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SITE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
KNOWN_LICENSES = (
    "CC-BY-4.0",
    "CC-BY-NC-4.0",
    "CC-BY-SA-4.0",
    "CC-BY-NC-SA-4.0",
    "CC-BY-NC-ND-4.0",
    "CC0-1.0",
)


class ConfigError(ValueError):
    """The configuration file is wrong; the message names key, value and what is allowed."""


class Runner(StrEnum):
    """Where the flows run their tasks (``[execution] runner``)."""

    THREADS = "threads"
    PROCESSES = "processes"
    DASK = "dask"


class MissingHeadPolicy(StrEnum):
    """What to do with a case of a defaced site whose head cannot be found (``deface_missing_head``)."""

    HOLD = "hold"
    RELEASE = "release"


class DatePolicy(StrEnum):
    """How dates reach the published spreadsheets (``[release] dates``, DESIGN.md section 5c)."""

    SHIFT = "shift"  # every date of a patient moved by one secret whole number of days
    YEAR = "year"  # the year only; times of day stay
    AS_DELIVERED = "as-delivered"  # as the sites sent them


class Packaging(StrEnum):
    """How the release is shipped (``[release] packaging``, DESIGN.md section 5b)."""

    SINGLE = "single"  # one zip, <name>-<version>.zip
    PARTS = "parts"  # one zip per release folder, split by case range above max_part_size


#: ``[release] max_part_size`` when it is not given (Zenodo's default cap per record).
DEFAULT_MAX_PART_SIZE = "50GB"
#: Unit -> bytes for ``max_part_size``: decimal (SI) units, as hosting services state their
#: caps (Zenodo's 50 GB is 50 x 10^9 bytes), and the binary units for whoever means 1024.
SIZE_UNITS: dict[str, int] = {
    "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]+)\s*$")
_SIZE_ALLOWED = ("a size such as '50GB' or '500MB' (KB, MB, GB, TB are powers of 1000; "
                 "KiB, MiB, GiB, TiB powers of 1024), at least 1 byte")


def parse_size(text: str) -> int:
    """Bytes of a size written as a number and a unit (``"50GB"``, ``"1.5 GiB"``, ``"500MB"``).

    Parameters
    ----------
    text
        The size; the unit is one of :data:`SIZE_UNITS` in any letter case
        (``GB`` = 10^9 bytes, ``GiB`` = 2^30 bytes).

    Returns
    -------
    int
        The size in bytes (rounded down), at least 1.

    Raises
    ------
    ValueError
        When the text is not a number and a known unit, or is under 1 byte.
    """
    match = _SIZE_RE.match(text)
    if not match or match.group(2).upper() not in SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size such as '50GB' or '500MB'")
    number, unit = match.groups()
    size = int(float(number) * SIZE_UNITS[unit.upper()])
    if size < 1:
        raise ValueError(f"{text!r} is less than 1 byte")
    return size


#: Allowed range of ``[release] age_cap`` (years), and its default.
AGE_CAP_RANGE = (18, 120)
DEFAULT_AGE_CAP = 90


class LossyPolicy(StrEnum):
    """What to do with a lossy-compressed selected CT or PET series (``[[site]] lossy``)."""

    REJECT = "reject"
    ACCEPT = "accept"


class IdentityFlagPolicy(StrEnum):
    """Whether a site's studies must carry PatientIdentityRemoved = YES (``[[site]] identity_removed_flag``)."""

    REQUIRED = "required"
    OPTIONAL = "optional"


@dataclass(frozen=True)
class ReleaseSettings:
    """The ``[release]`` table: what the release is called and where things go.

    Attributes
    ----------
    name
        Release name (names the folder inside the zip and the zip).
    version
        Release version such as ``"1.0.0"``.
    output_dir
        Absolute folder the zip is written to (default :data:`DEFAULT_OUTPUT_DIR`).
    state_dir
        Absolute folder of the pipeline's state, never released (default
        :data:`DEFAULT_STATE_DIR`; layout in :mod:`curation.state`).
    labels
        :data:`BUILTIN_LABELS` or the absolute path of a ``labels.json``.
    dates
        How dates reach the published spreadsheets (:class:`DatePolicy`;
        applied by :mod:`anonymization.dates`).
    age_cap
        Ages at or above are published as this value (years, :data:`AGE_CAP_RANGE`).
    packaging
        One zip (:attr:`Packaging.SINGLE`, the default) or one zip per release
        folder (:attr:`Packaging.PARTS`, :mod:`release.parts`).
    max_part_size
        With parts: a folder whose part would be larger than this many bytes is
        split by case range (from ``"50GB"``, decimal units; see :func:`parse_size`).
    """

    name: str
    version: str
    output_dir: Path
    state_dir: Path
    labels: str  # BUILTIN_LABELS or an absolute path to a labels.json
    dates: DatePolicy = DatePolicy.SHIFT
    age_cap: int = DEFAULT_AGE_CAP
    packaging: Packaging = Packaging.SINGLE
    max_part_size: int = 50 * 10**9

    @property
    def zip_name(self) -> str:
        """File name of the release zip: ``<name>-<version>.zip``."""
        return f"{self.name}-{self.version}.zip"

    @property
    def zip_path(self) -> Path:
        """Where the release zip is written: :attr:`zip_name` in :attr:`output_dir`."""
        return self.output_dir / self.zip_name

    @property
    def parts_name(self) -> str:
        """Folder name of a release in parts: ``<name>-<version>`` (in :attr:`output_dir`)."""
        return f"{self.name}-{self.version}"

    @property
    def release_path(self) -> Path:
        """What is published: :attr:`zip_path`, or with parts the folder ``<output_dir>/<name>-<version>``."""
        if self.packaging is Packaging.PARTS:
            return self.output_dir / self.parts_name
        return self.zip_path


@dataclass(frozen=True)
class DefacingSettings:
    """The ``[defacing]`` table: the cylinder that removes the face of defaced sites.

    The field defaults are the defaults of the configuration file.

    Attributes
    ----------
    height_voxels
        Height of the cylinder above the most inferior brain voxel, in PET
        slice spacings (1 to 200).
    margin_mm
        How far the cylinder reaches beyond the skull, in mm (0 to 100).
    clear_labels
        Whether label maps are set to 0 inside the cylinder too.
    """

    height_voxels: int = 16
    margin_mm: float = 5.0
    clear_labels: bool = True


@dataclass(frozen=True)
class ExecutionSettings:
    """The ``[execution]`` table: how the flows run their tasks.

    The field defaults are the defaults of the configuration file.

    Attributes
    ----------
    runner
        Threads, processes or a Dask cluster.
    workers
        How many tasks run at once (1 to 1024).
    dask_address
        Address of an existing Dask scheduler (``tcp://host:8786``), only
        with ``runner = "dask"``; ``""`` starts a local cluster.
    """

    runner: Runner = Runner.THREADS
    workers: int = 2
    dask_address: str = ""


@dataclass(frozen=True)
class ScheduleSettings:
    """The ``[schedule]`` table: when the served build flow runs.

    The field defaults are the defaults of the configuration file.

    Attributes
    ----------
    build_cron
        A 5-field cron expression.
    """

    build_cron: str = "0 2 * * 1"


@dataclass(frozen=True)
class SiteConfig:
    """One ``[[site]]`` table: a delivering site, its folders and its rules.

    Attributes
    ----------
    id
        Public site label (lower-case letters, digits, ``_``, ``-``), unique.
    dicom_dir
        Absolute folder of the site's anonymised DICOM drop.
    segmentations_dir
        Absolute folder of the site's label maps (``<StudyInstanceUID>/<category>.nii.gz``).
    lesions_dir
        Absolute folder of the site's lesion masks, or None when it has none.
    license
        The licence of the site's cases, one of :data:`KNOWN_LICENSES`.
    deface
        Whether the site's cases are defaced.
    indication
        Clinical indication of every case of the site (``""``: none); a
        clinical sheet overrides it per study.
    clinical_sheet
        Absolute path of a ``.csv``/``.xlsx`` with an indication per
        StudyInstanceUID (:mod:`curation.clinical`), or None.
    pseudonym_pattern
        Regular expression PatientName / PatientID must match in full
        (``""``: none; see :mod:`anonymization.gate`).
    deface_missing_head
        What to do with a case of a defaced site whose head is not found.
    lossy
        What to do with a study whose selected CT or PET series was
        lossy-compressed (:mod:`curation.compression`): reject it
        (``lossy-compression``, the default) or accept it, the details sheets
        recording the compression either way.
    label_table
        What the values of the site's label maps mean, whatever the file
        names: ``builtin:moose`` (MOOSE's table, the default),
        ``builtin:release`` (the maps hold release values already) or the
        absolute path of a csv of the same columns as
        ``curation/data/moose_label_codes.csv``.
    identity_removed_flag
        ``required`` (the default): a study without PatientIdentityRemoved =
        YES is rejected by the gate; ``optional``: the flag may be absent or
        NO, every other gate rule unchanged.
    """

    id: str
    dicom_dir: Path
    segmentations_dir: Path
    lesions_dir: Path | None
    license: str
    deface: bool
    indication: str
    clinical_sheet: Path | None
    pseudonym_pattern: str
    deface_missing_head: MissingHeadPolicy
    lossy: LossyPolicy = LossyPolicy.REJECT
    label_table: str = BUILTIN_MOOSE_TABLE
    identity_removed_flag: IdentityFlagPolicy = IdentityFlagPolicy.REQUIRED


@dataclass(frozen=True)
class Config:
    """A validated ``release.toml``.

    Attributes
    ----------
    path
        The absolute path of the configuration file.
    release
        The ``[release]`` table.
    defacing
        The ``[defacing]`` table.
    execution
        The ``[execution]`` table.
    schedule
        The ``[schedule]`` table.
    sites
        The ``[[site]]`` tables, in file order.
    """

    path: Path
    release: ReleaseSettings
    defacing: DefacingSettings
    execution: ExecutionSettings
    schedule: ScheduleSettings
    sites: tuple[SiteConfig, ...]

    def configured_paths(self) -> list[str]:
        """Every folder and file this configuration names, its own folder included.

        Sentences shown outside ``state_dir`` (artifacts, the report) blank a
        path under any of these whole (:func:`anonymization.redact.public_sentence`).
        """
        folders = [self.release.state_dir, self.release.output_dir, self.path.parent]
        for site in self.sites:
            folders += [site.dicom_dir, site.segmentations_dir, site.lesions_dir, site.clinical_sheet]
        return [str(f) for f in folders if f is not None]

    def site(self, site_id: str) -> SiteConfig:
        """Return the site called ``site_id``.

        Parameters
        ----------
        site_id
            A ``[[site]] id``.

        Returns
        -------
        SiteConfig
            The site's configuration.

        Raises
        ------
        ConfigError
            When no site has that id (the message names the known ids).
        """
        for site in self.sites:
            if site.id == site_id:
                return site
        known = ", ".join(s.id for s in self.sites)
        raise ConfigError(f"{self.path}: no [[site]] with id {site_id!r}; the sites are: {known}")


# ---------------------------------------------------------------------------
# validation helpers


class _Table:
    """A TOML table being consumed key by key, so unknown keys can be reported."""

    def __init__(self, raw: Any, where: str, source: Path) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: [{where}] must be a table, got {raw!r}")
        self.raw = dict(raw)
        self.where = where
        self.source = source
        self.seen: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.where}.{key}"

    def _fail(self, key: str, value: Any, allowed: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self._key(key)} = {value!r} is not allowed; expected {allowed}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any, allowed: str) -> Any:
        self.seen.add(key)
        if key not in self.raw:
            if default is _REQUIRED:
                raise ConfigError(f"{self.source}: {self._key(key)} is missing; expected {allowed}")
            return default
        value = self.raw[key]
        # bool is an int in Python: refuse True where a number is meant, and vice versa
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self._fail(key, value, allowed)
        if not isinstance(value, kind):
            raise self._fail(key, value, allowed)
        return value

    def string(self, key: str, default: Any = None, *, allowed: str = "a string") -> Any:
        return self.get(key, str, _REQUIRED if default is None else default, allowed)

    def choice(self, key: str, enum: type[Enum], default: Enum) -> Any:
        allowed = " | ".join(repr(m.value) for m in enum)  # type: ignore[attr-defined]
        value = self.get(key, str, default.value, f"one of {allowed}")
        try:
            return enum(value)
        except ValueError:
            raise self._fail(key, value, f"one of {allowed}") from None

    def path(self, key: str, base: Path, *, required: bool) -> Path | None:
        value = self.get(key, str, _REQUIRED if required else "", "a path (relative to the config file)")
        if value == "":
            if required:
                raise self._fail(key, value, "a non-empty path")
            return None
        p = Path(value).expanduser()
        return (p if p.is_absolute() else base / p).resolve()

    def finish(self) -> None:
        unknown = sorted(set(self.raw) - self.seen)
        if unknown:
            known = ", ".join(sorted(self.seen))
            raise ConfigError(
                f"{self.source}: unknown key {self.where}.{unknown[0]} = {self.raw[unknown[0]]!r}; "
                f"the keys of [{self.where}] are: {known}"
            )


_REQUIRED = object()


def _check_cron(expr: str, source: Path) -> None:
    fields = expr.split()
    if len(fields) != 5 or not all(re.fullmatch(r"[0-9*/,\-A-Za-z]+", f) for f in fields):
        raise ConfigError(
            f"{source}: schedule.build_cron = {expr!r} is not allowed; expected a 5-field cron "
            "expression such as '0 2 * * 1'"
        )


_LABEL_TABLE_ALLOWED = (
    f"{BUILTIN_MOOSE_TABLE!r}, {BUILTIN_RELEASE_TABLE!r} or a path (relative to the config file) to a csv "
    "with the columns of curation/data/moose_label_codes.csv"
)


def _label_table(st: _Table, base: Path) -> str:
    """``[[site]] label_table``: a builtin name, or the absolute path of a csv that parses as a source table."""
    value = st.string("label_table", BUILTIN_MOOSE_TABLE, allowed=_LABEL_TABLE_ALLOWED)
    if value in (BUILTIN_MOOSE_TABLE, BUILTIN_RELEASE_TABLE):
        return value
    if value.startswith("builtin:") or not value.strip():
        raise st._fail("label_table", value, _LABEL_TABLE_ALLOWED)
    p = Path(value).expanduser()
    path = (p if p.is_absolute() else base / p).resolve()
    if not path.is_file():
        raise st._fail("label_table", value, f"{_LABEL_TABLE_ALLOWED}; {path} is not a file")
    from curation.labels import LabelTableError, load_source_table  # labels imports this module

    try:
        load_source_table(path)
    except LabelTableError as exc:
        raise st._fail("label_table", value, f"{_LABEL_TABLE_ALLOWED}; {exc}") from None
    return str(path)


def config_from_dict(raw: Mapping[str, Any], source: Path) -> Config:
    """Validate a parsed TOML document into a :class:`Config`.

    Parameters
    ----------
    raw
        The parsed TOML document.
    source
        The config file; relative paths are resolved against its folder.

    Returns
    -------
    Config
        Every table checked, absent keys at their defaults, paths absolute.

    Raises
    ------
    ConfigError
        For an unknown key, a missing required key, or a value of the wrong
        type or outside the allowed set.
    """
    source = Path(source).resolve()
    base = source.parent
    top = _Table(raw, "top level", source)

    rel = _Table(top.get("release", dict, _REQUIRED, "a [release] table"), "release", source)
    name = rel.string("name")
    if not _NAME_RE.match(name):
        raise rel._fail("name", name, "letters, digits, '.', '_' or '-' (it names a folder and the zip)")
    version = rel.string("version")
    if not _NAME_RE.match(version):
        raise rel._fail("version", version, "letters, digits, '.', '_' or '-' such as '1.0.0'")
    output_dir = rel.path("output_dir", base, required=False) or (base / DEFAULT_OUTPUT_DIR).resolve()
    state_dir = rel.path("state_dir", base, required=False) or (base / DEFAULT_STATE_DIR).resolve()
    labels = rel.string("labels", BUILTIN_LABELS, allowed=f"{BUILTIN_LABELS!r} or a path to a labels.json")
    if labels != BUILTIN_LABELS:
        p = Path(labels).expanduser()
        labels = str((p if p.is_absolute() else base / p).resolve())
        if not Path(labels).is_file():
            raise rel._fail("labels", labels, f"{BUILTIN_LABELS!r} or an existing labels.json file")
    dates = rel.choice("dates", DatePolicy, DatePolicy.SHIFT)
    low, high = AGE_CAP_RANGE
    age_cap = rel.get("age_cap", int, DEFAULT_AGE_CAP, f"a whole number of years from {low} to {high}")
    if not low <= age_cap <= high:
        raise rel._fail("age_cap", age_cap, f"a whole number of years from {low} to {high}")
    packaging = rel.choice("packaging", Packaging, Packaging.SINGLE)
    size_text = rel.get("max_part_size", str, DEFAULT_MAX_PART_SIZE, _SIZE_ALLOWED)
    try:
        max_part_size = parse_size(size_text)
    except ValueError:
        raise rel._fail("max_part_size", size_text, _SIZE_ALLOWED) from None
    rel.finish()
    release = ReleaseSettings(name, version, output_dir, state_dir, labels, dates, age_cap, packaging, max_part_size)

    dt = _Table(top.get("defacing", dict, {}, "a [defacing] table"), "defacing", source)
    default_defacing = DefacingSettings()
    height = dt.get("height_voxels", int, default_defacing.height_voxels, "a whole number of PET voxels from 1 to 200")
    if not 1 <= height <= 200:
        raise dt._fail("height_voxels", height, "a whole number of PET voxels from 1 to 200")
    margin = dt.get("margin_mm", (int, float), default_defacing.margin_mm, "a number of millimetres from 0 to 100")
    if not 0 <= margin <= 100:
        raise dt._fail("margin_mm", margin, "a number of millimetres from 0 to 100")
    clear = dt.get("clear_labels", bool, default_defacing.clear_labels, "true or false")
    dt.finish()
    defacing = DefacingSettings(int(height), float(margin), clear)

    ex = _Table(top.get("execution", dict, {}, "an [execution] table"), "execution", source)
    default_execution = ExecutionSettings()
    runner = ex.choice("runner", Runner, default_execution.runner)
    workers = ex.get("workers", int, default_execution.workers, "a whole number of workers from 1 to 1024")
    if not 1 <= workers <= 1024:
        raise ex._fail("workers", workers, "a whole number of workers from 1 to 1024")
    dask_address = ex.get(
        "dask_address", str, default_execution.dask_address, "'' or an address such as 'tcp://host:8786'"
    )
    if dask_address and not re.match(r"^(tcp|tls|inproc|ucx)://", dask_address):
        raise ex._fail("dask_address", dask_address, "'' or an address such as 'tcp://host:8786'")
    if dask_address and runner is not Runner.DASK:
        raise ex._fail("dask_address", dask_address, "'' unless execution.runner = 'dask'")
    ex.finish()
    execution = ExecutionSettings(runner, workers, dask_address)

    sc = _Table(top.get("schedule", dict, {}, "a [schedule] table"), "schedule", source)
    cron = sc.get("build_cron", str, ScheduleSettings().build_cron, "a 5-field cron expression")
    _check_cron(cron, source)
    sc.finish()
    schedule = ScheduleSettings(cron)

    raw_sites = top.get("site", list, _REQUIRED, "one or more [[site]] tables")
    top.finish()
    if not raw_sites:
        raise ConfigError(f"{source}: site = [] is not allowed; expected one or more [[site]] tables")
    sites: list[SiteConfig] = []
    for i, raw_site in enumerate(raw_sites):
        st = _Table(raw_site, f"site[{i}]", source)
        site_id = st.string("id")
        if not _SITE_ID_RE.match(site_id):
            raise st._fail("id", site_id, "lower-case letters, digits, '_' or '-' (a public label)")
        st.where = f"site.{site_id}"
        dicom_dir = st.path("dicom_dir", base, required=True)
        seg_dir = st.path("segmentations_dir", base, required=True)
        lesions_dir = st.path("lesions_dir", base, required=False)
        license_ = st.string("license", allowed=f"one of {', '.join(KNOWN_LICENSES)}")
        if license_ not in KNOWN_LICENSES:
            raise st._fail("license", license_, f"one of {', '.join(KNOWN_LICENSES)}")
        deface = st.get("deface", bool, _REQUIRED, "true or false")
        indication = st.get("indication", str, "", "a short text such as 'lung cancer'")
        sheet = st.path("clinical_sheet", base, required=False)
        if sheet is not None and sheet.suffix.lower() not in (".csv", ".xlsx"):
            raise st._fail("clinical_sheet", str(sheet), "a .csv or .xlsx file")
        pattern = st.get("pseudonym_pattern", str, "", "'' or a regular expression")
        if pattern:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise st._fail("pseudonym_pattern", pattern, f"a valid regular expression ({exc})") from None
        missing_head = st.choice("deface_missing_head", MissingHeadPolicy, MissingHeadPolicy.HOLD)
        lossy = st.choice("lossy", LossyPolicy, LossyPolicy.REJECT)
        label_table = _label_table(st, base)
        identity_flag = st.choice("identity_removed_flag", IdentityFlagPolicy, IdentityFlagPolicy.REQUIRED)
        st.finish()
        if any(s.id == site_id for s in sites):
            raise ConfigError(f"{source}: site.id = {site_id!r} is used twice; site ids must be unique")
        sites.append(
            SiteConfig(
                id=site_id,
                dicom_dir=dicom_dir,  # type: ignore[arg-type]
                segmentations_dir=seg_dir,  # type: ignore[arg-type]
                lesions_dir=lesions_dir,
                license=license_,
                deface=deface,
                indication=indication,
                clinical_sheet=sheet,
                pseudonym_pattern=pattern,
                deface_missing_head=missing_head,
                lossy=lossy,
                label_table=label_table,
                identity_removed_flag=identity_flag,
            )
        )
    return Config(source, release, defacing, execution, schedule, tuple(sites))


def load_config(path: str | Path) -> Config:
    """Read and validate ``release.toml``.

    Parameters
    ----------
    path
        The configuration file.

    Returns
    -------
    Config
        The validated configuration (see :func:`config_from_dict`).

    Raises
    ------
    ConfigError
        When the file is missing, is not valid TOML, or fails validation.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file ({exc.strerror})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return config_from_dict(raw, path)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's


def default_config_toml(name: str, version: str) -> str:
    """Render the tables of a ``release.toml`` with every default written out.

    The ``[release]``, ``[defacing]``, ``[execution]`` and ``[schedule]``
    tables, each key at the default :func:`config_from_dict` uses when it is
    absent; a caller appends its ``[[site]]`` tables.

    Parameters
    ----------
    name
        ``[release] name``.
    version
        ``[release] version``.

    Returns
    -------
    str
        TOML text, tables separated by a blank line, ending with a newline.
    """
    tables: dict[str, dict[str, Any]] = {
        "release": {
            "name": name,
            "version": version,
            "output_dir": DEFAULT_OUTPUT_DIR,
            "state_dir": DEFAULT_STATE_DIR,
            "labels": BUILTIN_LABELS,
            "dates": DatePolicy.SHIFT.value,
            "age_cap": DEFAULT_AGE_CAP,
            "packaging": Packaging.SINGLE.value,
            "max_part_size": DEFAULT_MAX_PART_SIZE,
        },
        "defacing": dataclasses.asdict(DefacingSettings()),
        "execution": dataclasses.asdict(ExecutionSettings()),
        "schedule": dataclasses.asdict(ScheduleSettings()),
    }
    blocks = [
        "\n".join([f"[{table}]", *(f"{key} = {_toml_value(value)}" for key, value in keys.items())])
        for table, keys in tables.items()
    ]
    return "\n\n".join(blocks) + "\n"
