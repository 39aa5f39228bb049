"""The 2.x command line (`deepdefacer --input_file ...`, deepdefacer.cli.legacy) and the wheel.

BIDSonym's calls run against an installed wheel, not the editable source: the wheel is built from
a copy of the sources, installed with `pip --target` into a temporary folder, and its `deepdefacer`
runs with that folder first on PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from deepdefacer.cli import legacy
from deepdefacer.cli.run import main

REPO = Path(__file__).resolve().parents[1]
HEAD = REPO / "examples" / "ds-demo" / "sub-02" / "anat" / "sub-02_run-2_T1w.nii"
# What the wheel is built from (pyproject.toml's package list and package data).
SOURCES = ("pyproject.toml", "version", "README.md", "LICENSE", "deepdefacer", "models")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel of the working tree, built from a clean copy (no stale build/ folder) without
    build isolation, so no package index is needed."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--disable-pip-version-check", "-w", str(work / "dist"),
         str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = (work / "dist").glob("deepdefacer-*.whl")
    return built


@pytest.fixture(scope="session")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed with `pip install --no-deps --target` (its dependencies are this
    environment's)."""
    target = tmp_path_factory.mktemp("installed")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(wheel)],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def run_installed(installed: Path, arguments, cwd: Path) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=str(installed), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, str(installed / "bin" / "deepdefacer"), *arguments],
                          cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)


def check_defaced(source: Path, defaced_path: Path, mask_path: Path) -> None:
    """Outside the mask the stored values are the input's, bit for bit; inside, the background."""
    from deepdefacer.conform import background_intensity

    original, defaced, mask = nib.load(source), nib.load(defaced_path), nib.load(mask_path)
    removed = np.asanyarray(mask.dataobj) > 0
    assert removed.any(), "the mask is empty"
    assert defaced.shape == original.shape == removed.shape
    raw_original = np.asanyarray(original.dataobj.get_unscaled())
    raw_defaced = np.asanyarray(defaced.dataobj.get_unscaled())
    assert raw_defaced.dtype == raw_original.dtype
    assert np.array_equal(raw_defaced[~removed], raw_original[~removed])
    original_data = original.get_fdata()
    assert np.all(defaced.get_fdata()[removed] == background_intensity(original_data))


def test_the_wheel_holds_one_model_its_card_the_atlas_and_the_face(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    models = [name for name in names if name.endswith(".keras")]
    assert models == ["deepdefacer/models/deepdefacer_unet_v9.keras"]
    assert "deepdefacer/models/deepdefacer_unet_v9.json" in names
    assert "deepdefacer/models/atlas_pydeface_3mm.npz" in names
    assert [name for name in names if name.startswith("deepdefacer/models/")
            and not name.endswith(".py")] == sorted(
        ["deepdefacer/models/atlas_pydeface_3mm.npz", "deepdefacer/models/deepdefacer_unet_v9.json",
         "deepdefacer/models/ears_pydeface_3mm.npz",
         "deepdefacer/models/deepdefacer_unet_v9.keras", "deepdefacer/models/reface_pydeface_1mm.npz"])
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)


def test_every_package_folder_is_in_the_wheel(wheel):
    """pyproject.toml lists the packages (flat layout): a new subpackage must be added there."""
    names = set(zipfile.ZipFile(wheel).namelist())
    folders = sorted(path.parent.relative_to(REPO).as_posix()
                     for path in (REPO / "deepdefacer").rglob("__init__.py"))
    assert folders and all(f"{folder}/__init__.py" in names for folder in folders), folders
    modules = sorted(path.relative_to(REPO).as_posix() for path in (REPO / "deepdefacer").rglob("*.py"))
    assert [module for module in modules if module not in names] == []


@pytest.mark.slow
def test_bidsonyms_call_against_the_installed_wheel(installed, tmp_path):
    where = subprocess.run(
        [sys.executable, "-c", "import deepdefacer; print(deepdefacer.__file__, deepdefacer.__version__)"],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(installed)), capture_output=True,
        text=True, check=True).stdout.split()
    assert Path(where[0]).resolve().is_relative_to(installed.resolve())
    assert where[1] == (REPO / "version").read_text().strip()

    # BIDSonym: the defaced image into a folder it made, the mask next to the input.
    anat = tmp_path / "bids" / "sub-02" / "anat"
    anat.mkdir(parents=True)
    in_file = anat / HEAD.name
    shutil.copy2(HEAD, in_file)
    out_file = tmp_path / "bids" / "derivatives" / "bidsonym" / "sub-02" / "anat" / HEAD.name
    out_file.parent.mkdir(parents=True)
    mask_file = anat / "sub-02_run-2_T1w_space-native_defacemask-deepdefacer.nii.gz"
    result = run_installed(installed, ["--input_file", str(in_file), "--defaced_output_path",
                                       str(out_file), "--mask_output_path", str(mask_file)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2.x command line" in result.stderr
    assert out_file.is_file() and mask_file.is_file()
    check_defaced(HEAD, out_file, mask_file)
    assert in_file.read_bytes() == HEAD.read_bytes()


@pytest.mark.slow
def test_older_bidsonym_defaces_in_place_and_names_the_mask_without_extension(installed, tmp_path):
    image = tmp_path / HEAD.name
    shutil.copy2(HEAD, image)
    mask = tmp_path / "sub-02_T1w_space-native_defacemask-deepdefacer"
    result = run_installed(installed, ["--input_file", str(image), "--defaced_output_path",
                                       str(image), "--mask_output_path", str(mask)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    written_mask = mask.with_name(mask.name + ".nii")  # nibabel's name for it in 2.x
    check_defaced(HEAD, image, written_mask)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([image.name, written_mask.name])


@pytest.mark.parametrize("arguments, message", [
    (["--input_file", "{head}", "--bogus"], "unrecognized arguments: --bogus"),
    (["--defaced_output_path", "{out}/x.nii.gz"], "the following arguments are required: --input_file"),
    (["--input_file"], "expected one argument"),
    (["--input_file", "{head}", "--defaced_output_path", "{out}/missing/x.nii.gz"],
     "does not exist"),
    (["--input_file", "{head}", "--defaced_output_path", "{out}/x.mgz"],
     "must end in .nii or .nii.gz"),
    (["--input_file", "{head}", "--mask_output_path", "{head}"], "would overwrite the input"),
    (["--input_file", "{head}", "--defaced_output_path", "{out}/x.nii.gz",
      "--mask_output_path", "{out}/x.nii.gz"], "the same name"),
])
def test_argument_errors_are_usage_errors(arguments, message, tmp_path, capsys):
    values = {"head": HEAD, "out": tmp_path}
    status = main([argument.format(**values) for argument in arguments])
    captured = capsys.readouterr()
    assert status == 2
    assert message in captured.err
    assert "usage: deepdefacer" in captured.err and "--input_file" in captured.err
    assert list(tmp_path.iterdir()) == []


def test_only_the_2x_options_select_the_2x_form():
    assert legacy.is_legacy_call(["--input_file", "a.nii"])
    assert legacy.is_legacy_call(["--input_file=a.nii"])
    assert legacy.is_legacy_call(["--mask_output_path", "m.nii"])
    assert not legacy.is_legacy_call(["bids", "out", "participant", "--participant-label", "01"])
    assert not legacy.is_legacy_call(["--help"])


def test_2x_default_output_is_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert legacy.default_output(Path("/data/sub-01_T1w.nii.gz")) == tmp_path / "sub-01_T1w_defaced.nii.gz"
    assert legacy.default_output(Path("rel/sub-01_T1w.nii")) == tmp_path / "sub-01_T1w_defaced.nii.gz"
    assert legacy.as_2x_wrote_it(Path("a/mask")) == Path("a/mask.nii")
    assert legacy.as_2x_wrote_it(Path("a/mask.nii.gz")) == Path("a/mask.nii.gz")
