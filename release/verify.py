"""``petct-release verify``: check a release zip, on its own or against the state it was built from.

Every member is read once, through the zip's own CRC check; NIfTI members are
decompressed one at a time (one case's volumes at most are in memory).  Each
problem found is one line of :attr:`VerifyReport.problems`; the report is
``ok`` only when there is none.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import nibabel as nib
import numpy as np

from anonymization.deface import cylinder_mask
from anonymization.leakscan import UnscannableError, load_sensitive_values, scan_zip
from curation.config import DatePolicy
from curation.labels import LabelTableError, ReleaseLabels, release_labels_from_dict
from curation.model import CATEGORIES, DefaceCylinder, from_jsonable
from curation.registry import format_case_number
from curation.state import StatePaths
from release.assemble import MANIFEST_FORMAT, SUMS_NAME
from release.checksums import parse_sha256sums
from release.spreadsheets import check_column_names, read_details_xlsx

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_TOP_FILES = ("CT-details.xlsx", "PT-details.xlsx", "README.md", SUMS_NAME, "labels.json")
_IMAGE_RE = re.compile(r"^imaging-data/images/(CT|PT)/([0-9]{4,})\.nii\.gz$")
_LABEL_RE = re.compile(r"^imaging-data/ground-truth/([^/]+)/([0-9]{4,})\.nii\.gz$")
_LAYOUT_DIRS = (
    "",
    "imaging-data/",
    "imaging-data/images/",
    "imaging-data/images/CT/",
    "imaging-data/images/PT/",
    "imaging-data/ground-truth/",
    *(f"imaging-data/ground-truth/{c}/" for c in CATEGORIES),
)
_EXPECTED_DTYPE = {"CT": np.dtype(np.int16), "PT": np.dtype(np.float32), "label": np.dtype(np.uint8)}
_AFFINE_TOL_MM = 1e-3


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify_release`.

    Attributes
    ----------
    problems
        One sentence per problem, naming the member or case and the evidence.
    cases
        How many cases the zip holds.
    checked
        The checks that ran (``leak-scan`` and ``defacing`` only with a state folder).
    members
        How many members the zip holds.
    """

    problems: tuple[str, ...]
    cases: int
    checked: tuple[str, ...]
    members: int = 0

    @property
    def ok(self) -> bool:
        """True when no check found a problem."""
        return not self.problems


class _HashingReader(io.RawIOBase):
    """A read-only stream that hashes what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        self.digest.update(data)
        buffer[: len(data)] = data
        return len(data)

    def drain_hashing(self) -> str:
        while chunk := self.raw.read(_CHUNK):
            self.digest.update(chunk)
        return self.digest.hexdigest()


class _Verifier:
    def __init__(self, zip_path: Path, state_dir: Path | None, *, leak_scan: bool = True) -> None:
        self.zip_path = zip_path
        self.state_dir = state_dir
        self.leak_scan = leak_scan
        self.problems: list[str] = []
        self.checked: list[str] = []
        self.digests: dict[str, str] = {}  # path inside <top>/ -> sha256 of the content read
        self.defacing: dict[str, tuple[DefaceCylinder, bool]] = {}  # case -> (cylinder, clear_labels)
        self._manifest: dict[str, Any] | None = None
        self._manifest_read = False

    def problem(self, text: str) -> None:
        self.problems.append(text)

    # -- reading -------------------------------------------------------------

    def read_small(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, rel: str) -> bytes | None:
        try:
            data = zf.read(info)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
            self.problem(f"{info.filename}: cannot be read intact ({exc})")
            return None
        self.digests[rel] = hashlib.sha256(data).hexdigest()
        return data

    def read_nifti(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, rel: str) -> nib.Nifti1Image | None:
        """Read a .nii.gz member in one pass: zip CRC, sha256 and gzip decompression together."""
        try:
            with zf.open(info) as raw:
                reader = _HashingReader(raw)
                try:
                    with gzip.GzipFile(fileobj=io.BufferedReader(reader, _CHUNK), mode="rb") as gz:
                        payload = gz.read()
                except (OSError, EOFError, zlib.error) as exc:
                    # the member itself may still be intact: hash the rest for the SHA256SUMS check
                    reader.drain_hashing()
                    self.digests[rel] = reader.digest.hexdigest()
                    self.problem(f"{info.filename}: not a readable gzip file ({exc})")
                    return None
                self.digests[rel] = reader.drain_hashing()
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
            self.digests.pop(rel, None)
            self.problem(f"{info.filename}: cannot be read intact ({exc})")
            return None
        try:
            return nib.Nifti1Image.from_bytes(payload)
        except Exception as exc:  # nibabel raises several unrelated types for a bad header
            self.problem(f"{info.filename}: not a readable NIfTI-1 image ({type(exc).__name__}: {exc})")
            return None

    # -- the checks ----------------------------------------------------------

    def run(self) -> VerifyReport:
        if not self.zip_path.is_file():
            self.problem(f"{self.zip_path}: no such file")
            return self.report(0, 0)
        try:
            zf = zipfile.ZipFile(self.zip_path)
        except (zipfile.BadZipFile, OSError) as exc:
            self.problem(f"{self.zip_path}: not a readable zip ({exc})")
            return self.report(0, 0)
        with zf:
            infos = zf.infolist()
            cases = self.check_zip(zf, infos)
        if self.state_dir is not None:
            self.check_state(cases)
        return self.report(len(cases), len(infos))

    def report(self, cases: int, members: int) -> VerifyReport:
        return VerifyReport(tuple(self.problems), cases, tuple(self.checked), members)

    def check_zip(self, zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> list[str]:
        self.checked += ["integrity", "layout"]
        tops = sorted({i.filename.split("/", 1)[0] for i in infos})
        if not infos:
            self.problem(f"{self.zip_path}: the zip is empty")
            return []
        top = max(tops, key=lambda t: sum(i.filename.startswith(t + "/") for i in infos))
        if len(tops) > 1:
            self.problem(f"{self.zip_path}: members under more than one top folder: {', '.join(tops)}")
        seen: set[str] = set()
        files: dict[str, zipfile.ZipInfo] = {}
        images: dict[tuple[str, str], zipfile.ZipInfo] = {}  # (case, "CT"|"PT"|category) -> member
        for info in infos:
            name = info.filename
            if name in seen:
                self.problem(f"{name}: appears twice in the zip")
                continue
            seen.add(name)
            if not name.startswith(top + "/"):
                continue  # reported above as another top folder
            rel = name[len(top) + 1 :]
            if info.is_dir():
                if rel not in _LAYOUT_DIRS:
                    self.problem(f"{name}: a folder outside the release layout")
                continue
            if info.flag_bits & 0x1:
                self.problem(f"{name}: encrypted")
                continue
            if rel in _TOP_FILES:
                files[rel] = info
                continue
            match = _IMAGE_RE.match(rel) or _LABEL_RE.match(rel)
            if match is None:
                self.problem(f"{name}: not part of the release layout")
                continue
            kind, case = match.groups()
            if kind not in ("CT", "PT") and kind not in CATEGORIES:
                self.problem(f"{name}: {kind!r} is not a label category (expected one of {', '.join(CATEGORIES)})")
                continue
            if format_case_number(int(case)) != case:
                self.problem(f"{name}: case number {case!r} is not written as the release writes it")
                continue
            images[(case, kind)] = info
        for rel in _TOP_FILES:
            if rel not in files:
                self.problem(f"{top}/{rel}: missing")

        small = {rel: self.read_small(zf, info, rel) for rel, info in sorted(files.items())}
        labels = self.read_labels(top, small.get("labels.json"))
        cases = sorted({case for case, _ in images}, key=int)
        self.check_cases(zf, top, cases, images, labels)
        self.check_spreadsheets(top, cases, small)
        self.check_sums(top, small.get(SUMS_NAME), [i for i in infos if not i.is_dir()])
        return cases

    def read_labels(self, top: str, data: bytes | None) -> ReleaseLabels | None:
        if data is None:
            return None
        try:
            return release_labels_from_dict(json.loads(data.decode("utf-8")), f"{top}/labels.json")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.problem(f"{top}/labels.json: not valid UTF-8 JSON ({exc})")
        except LabelTableError as exc:
            self.problem(str(exc))
        return None

    def check_cases(
        self,
        zf: zipfile.ZipFile,
        top: str,
        cases: list[str],
        images: dict[tuple[str, str], zipfile.ZipInfo],
        labels: ReleaseLabels | None,
    ) -> None:
        self.checked += ["cases", "geometry", "dtypes", "label-values"]
        self.defacing = self.load_defacing()
        for case in cases:
            missing = [k for k in ("CT", "PT", *CATEGORIES) if (case, k) not in images]
            if missing:
                self.problem(f"case {case}: missing {', '.join(missing)}")
            cylinder = self.defacing.get(case)
            ct_grid: tuple[tuple[int, ...], np.ndarray] | None = None
            for kind in ("CT", "PT", *CATEGORIES):
                info = images.get((case, kind))
                if info is None:
                    continue
                rel = info.filename[len(top) + 1 :]
                img = self.read_nifti(zf, info, rel)
                if img is None:
                    continue
                role = kind if kind in ("CT", "PT") else "label"
                self.check_header(info.filename, img, role)
                if kind == "CT":
                    ct_grid = (img.shape, img.affine)
                if role == "label":
                    self.check_label(info.filename, img, kind, ct_grid, labels)
                if cylinder is not None:
                    self.check_defaced(case, info.filename, img, kind, cylinder)
                del img

    def check_header(self, name: str, img: nib.Nifti1Image, role: str) -> None:
        dtype = img.get_data_dtype()
        if dtype != _EXPECTED_DTYPE[role]:
            self.problem(f"{name}: stored as {dtype}, expected {_EXPECTED_DTYPE[role]}")
        if len(img.shape) != 3:
            self.problem(f"{name}: {len(img.shape)}-D image of shape {img.shape}, expected 3-D")
        slope, inter = img.header.get_slope_inter()
        if role != "PT" and not (slope in (None, 1.0) and inter in (None, 0.0)):
            self.problem(f"{name}: has a scaling (scl_slope {slope}, scl_inter {inter}); stored values must be final")
        hdr = img.header
        for field in ("descrip", "aux_file", "intent_name", "db_name"):
            if field in hdr and np.asarray(hdr[field]).tobytes().strip(b"\x00 "):
                self.problem(f"{name}: header field {field} is not empty")
        if hdr.extensions:
            self.problem(f"{name}: carries {len(hdr.extensions)} header extension(s)")

    def check_label(
        self,
        name: str,
        img: nib.Nifti1Image,
        category: str,
        ct_grid: tuple[tuple[int, ...], np.ndarray] | None,
        labels: ReleaseLabels | None,
    ) -> None:
        if ct_grid is not None:
            shape, affine = ct_grid
            if img.shape != shape:
                self.problem(f"{name}: shape {img.shape} is not the CT's {shape}")
            elif not np.allclose(img.affine, affine, rtol=0, atol=_AFFINE_TOL_MM):
                worst = float(np.abs(img.affine - affine).max())
                self.problem(f"{name}: affine differs from the CT's by up to {worst:.4g} mm")
        if labels is None:
            return
        data = np.asanyarray(img.dataobj)
        allowed = set(labels.categories[category]) | {0}
        if data.dtype == np.uint8:
            # a lookup table: one byte-sized pass, no sort and no int64 copy of the volume
            lut = np.zeros(256, dtype=bool)
            lut[sorted(allowed)] = True
            outside = ~lut[data]
            bad = np.unique(data[outside]).tolist() if outside.any() else []
        else:
            bad = [v for v in np.unique(data).tolist() if v not in allowed]
        if bad:
            shown = ", ".join(str(v) for v in bad[:10])
            self.problem(f"{name}: values {shown} are not in labels.json for {category}")

    # -- state ---------------------------------------------------------------

    def load_manifest(self) -> dict[str, Any] | None:
        if self.state_dir is None:
            return None
        if self._manifest_read:
            return self._manifest
        self._manifest_read = True
        path = StatePaths(self.state_dir).release_manifest(self.zip_path.name)
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.problem(f"{path}: no build manifest for {self.zip_path.name} in the state folder")
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.problem(f"{path}: the build manifest cannot be read ({exc})")
            return None
        case_keys = {"case", "defaced", "cylinder", "clear_labels"}
        if (
            not isinstance(manifest, dict)
            or manifest.get("format") != MANIFEST_FORMAT
            or not isinstance(manifest.get("members"), dict)
            or not isinstance(manifest.get("cases"), list)
            or not all(isinstance(c, dict) and case_keys <= set(c) for c in manifest["cases"])
        ):
            self.problem(f"{path}: not a build manifest of format {MANIFEST_FORMAT} (written by assemble_release)")
            return None
        self._manifest = manifest
        return manifest

    def load_defacing(self) -> dict[str, tuple[DefaceCylinder, bool]]:
        manifest = self.load_manifest()
        if manifest is None:
            return {}
        self.checked.append("defacing")
        found = {}
        for entry in manifest["cases"]:
            if entry["defaced"]:
                if entry["cylinder"] is None:
                    self.problem(f"case {entry['case']}: defaced but no cylinder recorded in the manifest")
                    continue
                found[entry["case"]] = (from_jsonable(DefaceCylinder, entry["cylinder"]), bool(entry["clear_labels"]))
        return found

    def check_defaced(
        self, case: str, name: str, img: nib.Nifti1Image, kind: str, cylinder: tuple[DefaceCylinder, bool]
    ) -> None:
        shape, clear_labels = img.shape, cylinder[1]
        if kind in CATEGORIES and not clear_labels:
            return
        if len(shape) != 3:
            return
        mask = cylinder_mask(cylinder[0], shape, img.affine)
        if not mask.any():
            self.problem(f"{name}: the recorded defacing cylinder of case {case} holds no voxel of this grid")
            return
        expected = {"CT": -1000, "PT": 0}.get(kind, 0)
        inside = np.asanyarray(img.dataobj)[mask]
        wrong = int(np.count_nonzero(inside != expected))
        if wrong:
            self.problem(
                f"{name}: {wrong} of {inside.size} voxels inside the recorded defacing cylinder "
                f"are not {expected}"
            )

    def check_state(self, cases: list[str]) -> None:
        manifest = self.load_manifest()
        if manifest is not None:
            built = {e["case"] for e in manifest["cases"]}
            for case in sorted(set(cases) - built, key=int):
                self.problem(f"case {case}: in the zip but not in the build manifest")
            for case in sorted(built - set(cases), key=int):
                self.problem(f"case {case}: in the build manifest but not in the zip")
            for rel, digest in sorted(manifest["members"].items()):
                if rel in self.digests and self.digests[rel] != digest:
                    self.problem(f"{rel}: content differs from what was built (manifest sha256 {digest[:12]}…)")
        assert self.state_dir is not None
        if self.leak_scan:
            self.checked.append("leak-scan")
            self.problems += leak_scan_problems(self.zip_path, self.state_dir)

    # -- spreadsheets and sums -----------------------------------------------

    def check_spreadsheets(self, top: str, cases: list[str], small: dict[str, bytes | None]) -> None:
        self.checked.append("spreadsheets")
        for rel in ("CT-details.xlsx", "PT-details.xlsx"):
            data = small.get(rel)
            if data is None:
                continue
            name = f"{top}/{rel}"
            try:
                header, rows = read_details_xlsx(io.BytesIO(data))
            except Exception as exc:  # openpyxl raises many types for a broken workbook
                self.problem(f"{name}: not a readable workbook ({type(exc).__name__}: {exc})")
                continue
            try:
                check_column_names(header)
            except ValueError as exc:
                self.problem(f"{name}: {exc}")
            if not header or header[0] != "Case":
                self.problem(f"{name}: the first column is {header[:1]!r}, expected 'Case'")
                continue
            listed = [str(r[0]) if r and r[0] is not None else "" for r in rows]
            if len(listed) != len(cases):
                self.problem(f"{name}: {len(listed)} rows for {len(cases)} cases")
            if listed != cases:
                extra = [c for c in listed if c not in cases]
                missing = [c for c in cases if c not in listed]
                if extra or missing:
                    self.problem(
                        f"{name}: rows for cases not in the zip {extra[:10]}, no row for cases {missing[:10]}"
                    )
                elif len(listed) == len(cases):
                    self.problem(f"{name}: rows are not in case order")
                else:
                    self.problem(f"{name}: a case has more than one row")

    def check_sums(self, top: str, data: bytes | None, infos: list[zipfile.ZipInfo]) -> None:
        self.checked.append("checksums")
        if data is None:
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.problem(f"{top}/{SUMS_NAME}: not UTF-8 text")
            return
        listed, problems = parse_sha256sums(text, source=f"{top}/{SUMS_NAME}")
        self.problems += problems
        members = {i.filename[len(top) + 1 :] for i in infos if i.filename.startswith(top + "/")}
        members.discard(SUMS_NAME)
        for rel in sorted(members - set(listed)):
            self.problem(f"{top}/{rel}: not listed in {SUMS_NAME}")
        for rel in sorted(set(listed) - members):
            self.problem(f"{top}/{rel}: listed in {SUMS_NAME} but not in the zip")
        for rel in sorted(members & set(listed)):
            got = self.digests.get(rel)
            if got is not None and got != listed[rel]:
                self.problem(f"{top}/{rel}: sha256 {got} does not match {SUMS_NAME} ({listed[rel]})")


def _dates_are_secret(zip_path: Path, state_dir: Path) -> bool:
    """Whether the release was built with a date policy that hides the original dates.

    From the build manifest's ``dates``; a release without a readable manifest
    is scanned for the dates too (the safe side: ``as-delivered`` is the one
    policy that publishes them on purpose).
    """
    try:
        manifest = json.loads(StatePaths(state_dir).release_manifest(zip_path.name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True
    return not (isinstance(manifest, dict) and manifest.get("dates") == DatePolicy.AS_DELIVERED.value)


def leak_scan_problems(zip_path: Path, state_dir: Path) -> list[str]:
    """The leak scan of a release: every decompressed byte against the state's sensitive values.

    The original dates of every header are among the values unless the
    release publishes dates as delivered (its build manifest says which).

    Parameters
    ----------
    zip_path
        The release zip.
    state_dir
        The state folder it was built from (its recorded sensitive values).

    Returns
    -------
    list[str]
        One line per leak (file, kind, a digest prefix of the value, never the
        value itself), or a line saying why the scan could not run; empty
        when the zip is clean.
    """
    try:
        values = load_sensitive_values(state_dir, include_dates=_dates_are_secret(zip_path, state_dir))
    except ValueError as exc:
        return [f"the sensitive values cannot be read, so the leak scan did not run: {exc}"]
    if not values:
        return [f"{state_dir}: no sensitive values recorded; the leak scan has nothing to look for"]
    try:
        leaks = scan_zip(zip_path, values)
    except UnscannableError as exc:
        return [f"the leak scan could not read the whole zip: {exc}"]
    return [
        f"{leak.file}: an identifying value ({leak.kind}, sha256 {leak.value_digest[:12]}…) at offset {leak.offset}"
        for leak in leaks
    ]


def verify_release(zip_path: Path, *, state_dir: Path | None = None, leak_scan: bool = True) -> VerifyReport:
    """Check a release zip.

    Parameters
    ----------
    zip_path
        The release zip.
    state_dir
        The ``state_dir`` the release was built from: adds the leak scan over
        every decompressed byte (for the sensitive values of every site) and the
        defacing check of the recorded cylinders.
    leak_scan
        With ``state_dir``: run the leak scan here (default).  The flows pass
        ``False`` and run :func:`leak_scan_problems` as a task of its own, so the
        two passes over the zip run on two workers at once.

    Returns
    -------
    VerifyReport
        ``ok`` only when every check passed; otherwise one line per problem.
    """
    verifier = _Verifier(Path(zip_path), Path(state_dir) if state_dir is not None else None, leak_scan=leak_scan)
    report = verifier.run()
    for line in report.problems:
        logger.warning("%s", line)
    return report
