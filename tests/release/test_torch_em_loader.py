"""An existing third-party loader of the ENHANCE.PET layout reads our release unchanged.

torch-em's ``enhance_pet`` dataset module is installed from PyPI at test time
(``--no-deps``, into a private folder) and loaded from its own file.  Its
imports of heavy packages the tested functions never touch (torch, torch-em's
package initialisers and its download helpers, which pull in torch) are given
minimal stand-ins; tqdm is installed for real.  Its network listing of the S3
bucket is replaced by a listing of the extracted release, and its download
helper only checks that the file it would fetch is already there.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from curation.model import CATEGORIES
from release.assemble import assemble_release
from release.parts import assemble_parts

from .conftest import ReleaseInputs, make_inputs

_MODULE = "torch_em/data/datasets/medical/enhance_pet.py"
_OFFLINE_HINTS = ("Could not find a version", "NewConnectionError", "Temporary failure in name resolution",
                  "Network is unreachable", "ConnectionError", "No matching distribution", "ReadTimeout")


@pytest.fixture(scope="session")
def torch_em_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("torch-em-wheel")
    run = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
         "--target", str(target), "torch-em", "tqdm"],
        capture_output=True, text=True, timeout=600,
    )
    if run.returncode != 0:
        if any(hint in run.stderr for hint in _OFFLINE_HINTS):
            pytest.skip(f"PyPI is unreachable, torch-em cannot be installed: {run.stderr.strip()[-300:]}")
        pytest.fail(f"pip install torch-em failed:\n{run.stderr}")
    assert (target / _MODULE).is_file(), f"the torch-em wheel has no {_MODULE}"
    return target


def _package(name: str, path: Path | None = None) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [str(path)] if path is not None else []  # a package whose __init__ is not run
    return module


def _load_enhance_pet(target: Path, monkeypatch: pytest.MonkeyPatch, fetched: list[str]) -> types.ModuleType:
    monkeypatch.syspath_prepend(str(target))  # the real tqdm
    torch = _package("torch")
    torch_utils = _package("torch.utils")
    torch_data = types.ModuleType("torch.utils.data")

    class Dataset:  # the loader's dataset class is not under test
        pass

    class DataLoader:
        pass

    torch_data.Dataset, torch_data.DataLoader = Dataset, DataLoader
    torch.utils, torch_utils.data = torch_utils, torch_data
    util = types.ModuleType("torch_em.data.datasets.util")

    def download_source(path: str, url: str, download: bool, checksum: str | None = None, verify: bool = True) -> None:
        # the real helper returns at once when the file exists; there is no network here
        fetched.append(path)
        if not Path(path).exists():
            raise AssertionError(f"the loader wants {path} (from {url}), which the release lacks")

    util.download_source = download_source
    root = target / "torch_em"
    datasets = _package("torch_em.data.datasets", root / "data" / "datasets")
    datasets.util = util
    for name, module in {
        "torch": torch,
        "torch.utils": torch_utils,
        "torch.utils.data": torch_data,
        "torch_em": _package("torch_em", root),
        "torch_em.data": _package("torch_em.data", root / "data"),
        "torch_em.data.datasets": datasets,
        "torch_em.data.datasets.util": util,
        "torch_em.data.datasets.medical": _package("torch_em.data.datasets.medical", root / "data/datasets/medical"),
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("torch_em.data.datasets.medical.enhance_pet", target / _MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_enhance_pet_loader_reads_our_release(
    inputs: ReleaseInputs, torch_em_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = assemble_release(inputs.config, inputs.entries, inputs.labels, pipeline_version="0.1.0")
    out = tmp_path / "extracted"
    with zipfile.ZipFile(result.zip_path) as zf:
        zf.extractall(out)
    _loader_reads(out / inputs.config.release.name, inputs, torch_em_dir, monkeypatch)


def test_enhance_pet_loader_reads_the_tree_unzipped_from_parts(
    tmp_path: Path, torch_em_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = make_inputs(tmp_path, packaging="parts", max_part_size="4KB")
    result = assemble_parts(inputs.config, inputs.entries, inputs.labels, pipeline_version="0.1.0")
    assert len(result.parts) > len(CATEGORIES) + 2  # the CT is split, and metadata.zip
    out = tmp_path / "extracted"
    for part in result.parts:  # every part into one folder
        with zipfile.ZipFile(part.path) as zf:
            zf.extractall(out)
    _loader_reads(out / inputs.config.release.name, inputs, torch_em_dir, monkeypatch)


def _loader_reads(release: Path, inputs: ReleaseInputs, torch_em_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fetched: list[str] = []
    enhance_pet = _load_enhance_pet(torch_em_dir, monkeypatch, fetched)
    ct_dir = release / "imaging-data" / "images" / "CT"
    monkeypatch.setattr(
        enhance_pet, "_list_case_ids", lambda n_workers=None: sorted(p.name[: -len(".nii.gz")] for p in ct_dir.iterdir())
    )
    assert sorted(enhance_pet.CATEGORIES) == sorted(CATEGORIES)

    raw_paths, label_paths = enhance_pet.get_enhance_pet_paths(str(release), download=True)

    assert [Path(p).name for p in raw_paths] == ["0001.nii.gz", "0002.nii.gz", "0003.nii.gz"]
    assert all(Path(p).parent == ct_dir for p in raw_paths)
    wanted = {str(ct_dir / f"{c}.nii.gz") for c in ("0001", "0002", "0003")}
    wanted |= {str(release / "imaging-data" / "ground-truth" / cat / f"{c}.nii.gz") for cat in CATEGORIES for c in ("0001", "0002", "0003")}
    assert set(fetched) == wanted

    # the loader's merged ids, computed from our labels.json names and its own class table
    for entry, label_path in zip(inputs.entries, label_paths, strict=True):
        merged = np.asarray(nib.load(label_path).dataobj)
        expected = np.zeros(merged.shape, dtype=np.int64)
        for category in sorted(CATEGORIES):  # later categories overwrite earlier ones, as in the loader
            ours = np.asarray(nib.load(entry.prepared.labels[category].path).dataobj)
            lookup = np.zeros(256, dtype=np.int64)
            for value, name in inputs.labels.categories[category].items():
                lookup[value] = enhance_pet.CLASS_IDS[name]
            expected = np.where(ours > 0, lookup[ours], expected)
        assert merged.shape == nib.load(raw_paths[entry.number - 1]).shape
        assert np.array_equal(merged, expected)
        # every one of the seven maps contributed ids from its own block of the loader's table
        offset = 0
        for category in sorted(CATEGORIES):
            size = len(enhance_pet.CLASS_NAMES_BY_CATEGORY[category])
            assert np.any((merged > offset) & (merged <= offset + size)), category
            offset += size
    assert enhance_pet.CLASS_IDS["brain"] == 1 + 3 + 13 + 10 + 3
