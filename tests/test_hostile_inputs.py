"""Hostile, damaged or odd inputs: a clear reason each, found before any voxel data is read.

Every file is built from a real head (its header and voxels) with one thing wrong.
"""

from __future__ import annotations

import gzip
import os
import pwd
import shutil
import subprocess
import sys
import zlib
from io import BytesIO

import nibabel as nib
import numpy as np
import pytest

from bids_app_helpers import HEADS, REPO, needs_shared_data, nifti_bytes
from deepdefacer import nifti
from deepdefacer.cli import deface_one
from deepdefacer.errors import InputError

pytestmark = needs_shared_data

T1W = HEADS / "ixi002_t1_6mm.nii.gz"  # 170x36x188 int16, 6 mm slices
SIX_MM_HEADS = ["ixi002_t1_6mm.nii.gz", "ixi002_t2_6mm.nii.gz", "ixi002_pd_6mm.nii.gz"]


def _reason(path) -> str:
    with pytest.raises(InputError) as caught:
        nifti.load_image(path)
    assert caught.value.path == str(path)
    return caught.value.reason


def _real_header_and_bytes():
    raw = nifti_bytes(T1W)
    return nib.Nifti1Header.from_fileobj(BytesIO(raw)), raw


def _header_only(header, raw) -> bytes:
    """The header and the 4 extension-flag bytes before the voxel data, no voxels at all."""
    return header.binaryblock + raw[348:352]


def _huge_header_file(tmp_path):
    header, raw = _real_header_and_bytes()
    header.set_data_shape((2000, 2000, 2000))
    path = tmp_path / "sub-01_T1w.nii.gz"
    path.write_bytes(gzip.compress(_header_only(header, raw)))
    return path


# ---------------------------------------------------------------------------------------------
# Headers that promise more than the file holds, or more than any head scan


def test_tiny_file_claiming_16_gb_is_reported_truncated(tmp_path):
    path = _huge_header_file(tmp_path)
    assert path.stat().st_size < 400
    assert _reason(path) == ("truncated: the header promises 16000000000 bytes of voxel data "
                             "(2000x2000x2000 int16), the file holds 0")


MEASURE_LOAD = """
import sys
from deepdefacer import nifti
from deepdefacer.errors import InputError
try:
    nifti.load_image(sys.argv[1])
except InputError as exc:
    print(exc.reason)
"""


def test_tiny_file_claiming_16_gb_costs_little_memory(tmp_path):
    path = _huge_header_file(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", MEASURE_LOAD, str(path)], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    output = child.stdout.read()
    # wait4 gives this child's own peak, not the largest of every child the test run reaped.
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0
    assert output.startswith("truncated: the header promises 16000000000 bytes")
    peak_gib = usage.ru_maxrss / 2**20  # kibibytes on Linux
    assert peak_gib < 2.0, f"loading a 157-byte file peaked at {peak_gib:.1f} GiB"


def test_plausible_header_over_max_voxels_is_refused(tmp_path):
    header, raw = _real_header_and_bytes()
    header.set_data_shape((1024, 1024, 512))  # 0.25 mm over 256x256x128 mm
    header.set_zooms((0.25, 0.25, 0.25))
    path = tmp_path / "sub-01_T1w.nii"
    with open(path, "wb") as stream:
        stream.write(_header_only(header, raw))
        stream.truncate(352 + 1024 * 1024 * 512 * 2)  # sparse: complete, yet takes no disk
    assert 1024 * 1024 * 512 > nifti.MAX_VOXELS
    assert _reason(path) == (f"image of shape (1024, 1024, 512) has 536870912 voxels, more than "
                             f"Deepdefacer's maximum of {nifti.MAX_VOXELS}")


def test_complete_gzip_over_max_voxels_is_read_only_to_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(nifti, "MAX_VOXELS", 170 * 36 * 100)
    assert _reason(T1W).endswith(f"has {170 * 36 * 188} voxels, more than Deepdefacer's "
                                 f"maximum of {170 * 36 * 100}")


def test_the_largest_real_scans_fit(tmp_path):
    header, raw = _real_header_and_bytes()
    header.set_data_shape((512, 512, 400))  # a 0.4 mm whole head
    path = tmp_path / "sub-01_T1w.nii"
    with open(path, "wb") as stream:
        stream.write(_header_only(header, raw))
        stream.truncate(352 + 512 * 512 * 400 * 2)
    nifti._check_stored_size(path, nib.load(path))  # raises InputError if refused


def test_damaged_gzip_stream(tmp_path):
    # A full flush puts the voxel data's first deflate block on a byte boundary, so one byte can
    # give it an invalid block type while the header still decompresses.
    raw = nifti_bytes(T1W)
    compressor = zlib.compressobj(wbits=31)
    head = compressor.compress(raw[:352]) + compressor.flush(zlib.Z_FULL_FLUSH)
    rest = compressor.compress(raw[352:]) + compressor.flush()
    path = tmp_path / "sub-01_T1w.nii.gz"
    path.write_bytes(head + b"\xff" + rest[1:])
    # The decompressor's own words (zlib: "invalid block type"; ISA-L: "Invalid deflate block").
    reason = _reason(path)
    assert reason.startswith("damaged gzip stream (") and "block" in reason.lower(), reason


# ---------------------------------------------------------------------------------------------
# Files that are not what their name says


def test_wrong_magic(tmp_path):
    raw = bytearray(nifti_bytes(T1W))
    raw[344:348] = b"xyz\x00"
    path = tmp_path / "sub-01_T1w.nii.gz"
    path.write_bytes(gzip.compress(bytes(raw)))
    assert _reason(path) == "not a NIfTI file (no NIfTI-1/NIfTI-2 header: wrong magic)"


def test_compression_that_does_not_match_the_name(tmp_path):
    uncompressed = tmp_path / "sub-01_T1w.nii.gz"
    uncompressed.write_bytes(nifti_bytes(T1W))
    assert _reason(uncompressed).startswith("not gzip-compressed, although the name ends in "
                                            ".nii.gz")
    compressed = tmp_path / "sub-02_T1w.nii"
    shutil.copyfile(T1W, compressed)
    assert _reason(compressed).startswith("gzip-compressed, although the name ends in .nii ")


DROP_TO_NOBODY = """
import os, sys
from deepdefacer import nifti
from deepdefacer.errors import InputError
folder, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.chdir(folder)  # while still root: the folders above are root's alone
nifti.load_image("readable.nii.gz")  # finish nibabel's lazy imports from root's Python
try:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
except PermissionError:
    print("cannot drop privileges")
    sys.exit(0)
nifti.load_image("readable.nii.gz")
try:
    nifti.load_image("unreadable.nii.gz")
except InputError as exc:
    print(exc.reason)
"""


def test_unreadable_file_says_permission_denied(tmp_path):
    folder = tmp_path / "anat"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    shutil.copyfile(T1W, folder / "readable.nii.gz")
    (folder / "readable.nii.gz").chmod(0o644)
    unreadable = folder / "unreadable.nii.gz"
    shutil.copyfile(T1W, unreadable)
    unreadable.chmod(0o000)
    if os.geteuid() != 0:
        assert _reason(unreadable) == "permission denied (this user cannot read the file)"
        return
    # Root reads any file whatever its mode, so the check runs as an ordinary user.
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("running as root and there is no 'nobody' user to read the file as")
    completed = subprocess.run(
        [sys.executable, "-c", DROP_TO_NOBODY, str(folder), str(nobody.pw_uid),
         str(nobody.pw_gid)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    if completed.stdout.strip() == "cannot drop privileges":
        pytest.skip("running as root without the right to switch to 'nobody'")
    assert completed.stdout.strip() == "permission denied (this user cannot read the file)"


# ---------------------------------------------------------------------------------------------
# Voxel types and shapes that are not a head scan


def test_rgb_image(tmp_path):
    img = nib.load(T1W)
    grey = np.asanyarray(img.dataobj)
    rgb = np.zeros(grey.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    for channel in "RGB":
        rgb[channel] = np.clip(grey // 8, 0, 255)
    path = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(rgb, img.affine), path)
    assert nib.load(path).get_data_dtype().names == ("R", "G", "B")
    assert _reason(path) == "RGB colour image: a head scan has one value a voxel"


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_image(tmp_path, dtype):
    img = nib.load(T1W)
    phase = np.exp(1j * np.linspace(0, np.pi, img.shape[2]))
    path = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image((img.get_fdata() * phase).astype(dtype), img.affine), path)
    assert _reason(path) == (f"complex-valued image ({np.dtype(dtype)}): deface the magnitude "
                             "image")


@pytest.mark.parametrize("bad_dimension", [-36, 0])
def test_negative_or_zero_dimension(tmp_path, bad_dimension):
    header, raw = _real_header_and_bytes()
    header["dim"][2] = bad_dimension
    path = tmp_path / "sub-01_T1w.nii.gz"
    path.write_bytes(gzip.compress(header.binaryblock + raw[348:]))
    assert _reason(path) == (f"invalid shape (170, {bad_dimension}, 188) in the header: "
                             f"a dimension of {bad_dimension} (each must be at least 1)")


def test_noise_cube_is_too_small(tmp_path):
    path = tmp_path / "sub-01_T1w.nii.gz"
    noise = np.random.default_rng(0).normal(100, 20, (5, 5, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(noise, np.diag([40.0, 40.0, 40.0, 1.0])), path)  # claims 200 mm
    assert _reason(path) == ("image of shape (5, 5, 5) is too small to be a head scan (fewer "
                             f"than {nifti.MIN_VOXELS_PER_AXIS} voxels along an axis)")


def test_real_head_cut_below_the_minimum_is_too_small(tmp_path):
    img = nib.load(T1W)
    thin = np.asanyarray(img.dataobj)[:, 10:10 + nifti.MIN_VOXELS_PER_AXIS - 1, :]
    path = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(thin, img.affine), path)
    assert "is too small to be a head scan" in _reason(path)


@pytest.mark.parametrize("name", SIX_MM_HEADS)
def test_real_six_mm_heads_are_not_too_small(name):
    img = nifti.load_image(HEADS / name)
    assert min(img.shape) in (28, 36)


# ---------------------------------------------------------------------------------------------
# deepdeface refuses output names it cannot honour, before the model is loaded


@pytest.fixture
def no_model(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the output names should have been refused before defacing")

    monkeypatch.setattr(deface_one, "deface_files", fail)


@pytest.mark.parametrize("option", ["-o", "--mask-out"])
def test_deepdeface_refuses_a_missing_output_folder(tmp_path, capsys, no_model, option):
    missing = tmp_path / "no-such-folder"
    assert deface_one.main([str(T1W), option, str(missing / "x.nii.gz")]) == 2
    assert f"the folder {missing} does not exist" in capsys.readouterr().err
    assert not missing.exists()


@pytest.mark.parametrize("option", ["-o", "--mask-out"])
def test_deepdeface_refuses_an_output_that_is_not_nifti(tmp_path, capsys, no_model, option):
    assert deface_one.main([str(T1W), option, str(tmp_path / "x.txt")]) == 2
    assert "x.txt: an output must end in .nii or .nii.gz" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_deepdeface_accepts_nifti_outputs_in_existing_folders(tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr(deface_one, "deface_files", lambda *args: called.append(args) or 0)
    output, mask = tmp_path / "x.nii", tmp_path / "mask.nii.gz"
    assert deface_one.main([str(T1W), "-o", str(output), "--mask-out", str(mask)]) == 0
    assert called[0][:3] == (T1W, output, mask)
