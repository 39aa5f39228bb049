"""Loading with clear errors, and writing that keeps the source encoding and is atomic."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import zlib

import nibabel as nib
import numpy as np
import pytest

from bids_app_helpers import HEADS, needs_shared_data, nifti_bytes
from deepdefacer import apply, files, nifti
from deepdefacer.conform import background_intensity
from deepdefacer.pipeline import apply_face_mask
from deepdefacer.errors import InputError

pytestmark = needs_shared_data

T1W = HEADS / "ixi002_t1_6mm.nii.gz"      # int16, LAS
COLIN_2MM = HEADS / "colin27_t1w_2mm.nii"  # uint8, uncompressed


def _reason(path) -> str:
    with pytest.raises(InputError) as caught:
        nifti.load_image(path)
    assert caught.value.path == str(path)
    assert str(caught.value).startswith(f"{path}: ")
    return caught.value.reason


# ---------------------------------------------------------------------------------------------
# load_image: one clear reason per kind of bad file


def test_loads_a_real_head_once():
    volume = nifti.load_volume(T1W)
    assert volume.img.shape == volume.raw.shape == volume.data.shape == (170, 36, 188)
    # The stored values and the intensities are read here, once: the model and the writer use them.
    np.testing.assert_array_equal(volume.raw, np.asanyarray(nib.load(T1W).dataobj.get_unscaled()))
    assert volume.data.dtype == np.float32
    np.testing.assert_array_equal(volume.data, nib.load(T1W).get_fdata().astype(np.float32))
    assert volume.stored_header.binaryblock == nib.Nifti1Header.from_fileobj(
        gzip.open(T1W)).binaryblock


def test_missing_file(tmp_path):
    assert _reason(tmp_path / "sub-01_T1w.nii.gz") == "file does not exist"


def test_broken_symlink_like_git_annex(tmp_path):
    link = tmp_path / "sub-01_T1w.nii.gz"
    link.symlink_to("../.git/annex/objects/XX/YY/SHA256E-s1--0.nii.gz")
    assert "broken symbolic link" in _reason(link)
    assert "datalad get" in _reason(link)


def test_empty_file(tmp_path):
    path = tmp_path / "sub-01_T1w.nii.gz"
    path.touch()
    assert _reason(path) == "empty file (0 bytes)"


def test_not_nifti(tmp_path):
    path = tmp_path / "sub-01_T1w.nii.gz"
    path.write_text("this is a text file, not an image\n")
    assert _reason(path) == "not a NIfTI file (no NIfTI-1/NIfTI-2 header: wrong magic)"
    plain = tmp_path / "sub-01_T1w.nii"
    plain.write_bytes(b"\x00" * 400)
    assert _reason(plain) == "not a NIfTI file (no NIfTI-1/NIfTI-2 header: wrong magic)"


def test_truncated_uncompressed(tmp_path):
    path = tmp_path / "sub-01_T1w.nii"
    path.write_bytes(COLIN_2MM.read_bytes()[:200_000])
    reason = _reason(path)
    assert reason.startswith("truncated: the header promises 902629 bytes")
    assert "holds 199648" in reason


def test_truncated_gzip(tmp_path):
    path = tmp_path / "sub-01_T1w.nii.gz"
    cut = T1W.read_bytes()[:300_000]  # the gzip stream breaks off mid-way
    path.write_bytes(cut)
    decompressible = len(zlib.decompressobj(wbits=31).decompress(cut)) - 352
    assert _reason(path) == ("truncated: the header promises 2301120 bytes of voxel data "
                             f"(170x36x188 int16), the file holds {decompressible}")
    header_only = tmp_path / "sub-02_T1w.nii.gz"
    header_only.write_bytes(gzip.compress(gzip.decompress(T1W.read_bytes())[:352 + 1000]))
    assert _reason(header_only) == ("truncated: the header promises 2301120 bytes of voxel data "
                                    "(170x36x188 int16), the file holds 1000")


def test_two_dimensional(tmp_path):
    img = nib.load(T1W)
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, 90:91], img.affine), path)
    assert _reason(path).startswith("2D image of shape (170, 36, 1)")


def test_four_dimensional(tmp_path):
    img = nib.load(T1W)
    data = np.asanyarray(img.dataobj)
    path = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([data, data], axis=-1), img.affine), path)
    assert _reason(path).startswith("4D image of shape (170, 36, 188, 2)")


def test_single_volume_4d_is_accepted_as_3d(tmp_path):
    img = nib.load(T1W)
    path = tmp_path / "one_volume.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[..., None], img.affine), path)
    loaded = nifti.load_image(path)
    assert loaded.shape == (170, 36, 188)
    np.testing.assert_array_equal(loaded.get_fdata(), img.get_fdata())


def test_nan_voxels(tmp_path):
    img = nib.load(T1W)
    data = img.get_fdata().astype(np.float32)
    data[10:12, 5, 100] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), path)
    assert _reason(path) == "image contains 2 NaN or infinite voxels"


def test_all_zero_image(tmp_path):
    path = tmp_path / "zeros.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.int16), np.eye(4)), path)
    assert _reason(path) == "image is empty (every voxel is 0)"


# ---------------------------------------------------------------------------------------------
# apply.write_defaced: the output is the input with the masked voxels changed, nothing else


def _scaled_big_endian_source(tmp_path):
    """A real head stored the awkward way: big-endian int16 with slope, intercept and extension.

    Written with nibabel's low-level header API, because saving an image from an array resets
    the scaling (the very reason apply.write_defaced writes the stored values itself).
    """
    img = nib.load(T1W)
    raw = np.asanyarray(img.dataobj.get_unscaled()).astype(np.int16)
    header = nib.Nifti1Header(endianness=">")
    header["magic"] = b"n+1"  # single file
    header.set_data_shape(raw.shape)
    header.set_data_dtype(np.int16)
    header.set_zooms(img.header.get_zooms())
    header.set_qform(img.affine, code=1)
    header.set_sform(img.affine, code=4)
    header.set_slope_inter(0.5, -10.0)
    header.extensions.append(nib.nifti1.Nifti1Extension(6, b"scanner comment\x00" * 4))
    header["vox_offset"] = 352 + header.extensions.get_sizeondisk()
    path = tmp_path / "source.nii"
    with open(path, "wb") as stream:
        header.write_to(stream)
        nib.volumeutils.array_to_file(raw, stream, header.get_data_dtype(), offset=None,
                                      order="F")
    return path


@pytest.mark.parametrize("output_name", ["out.nii.gz", "out.nii"])
def test_defaced_copy_keeps_raw_values_header_and_scaling(tmp_path, output_name):
    source_path = _scaled_big_endian_source(tmp_path)
    source = nib.load(source_path)
    assert (source.dataobj.slope, source.dataobj.inter) == (0.5, -10.0)
    assert source.header.endianness == ">" and len(source.header.extensions) == 1
    mask = np.zeros(source.shape, np.uint8)
    mask[:, :12, :60] = 1  # a block of "face"
    defaced = apply_face_mask(nifti.load_volume(source_path), mask)

    output_path = tmp_path / output_name
    apply.write_defaced(defaced.volume, defaced.raw, output_path)

    source_bytes, output_bytes = nifti_bytes(source_path), nifti_bytes(output_path)
    offset = int(source.dataobj.offset)
    # Header and extension bytes identical: dtype, byte order, slope, intercept, qform, sform.
    assert output_bytes[:offset] == source_bytes[:offset]
    output = nib.load(output_path)
    assert output.get_data_dtype() == np.dtype(">i2")
    assert (output.dataobj.slope, output.dataobj.inter) == (0.5, -10.0)
    assert int(output.header["qform_code"]) == 1 and int(output.header["sform_code"]) == 4
    raw_in = np.asanyarray(source.dataobj.get_unscaled())
    raw_out = np.asanyarray(output.dataobj.get_unscaled())
    outside = mask == 0
    np.testing.assert_array_equal(raw_out[outside], raw_in[outside])
    # The removed voxels read back as the air's intensity (-10.0 = raw 0 with this scaling).
    air = background_intensity(defaced.volume.data)
    assert air == -10.0
    np.testing.assert_array_equal(output.get_fdata()[mask > 0], air)
    np.testing.assert_array_equal(output.get_fdata(), defaced.image.get_fdata())
    assert len(output_bytes) == len(source_bytes)


def test_exception_while_writing_leaves_no_file(tmp_path, monkeypatch):
    final = tmp_path / "sub-01_desc-defaced_T1w.nii.gz"
    mask = np.zeros(nib.load(T1W).shape, np.uint8)

    def fail(*args, **kwargs):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(apply, "array_to_file", fail)
    with pytest.raises(OSError, match="injected"):
        defaced = apply_face_mask(nifti.load_volume(T1W), mask)
        apply.write_defaced(defaced.volume, defaced.raw, final)
    assert list(tmp_path.iterdir()) == []


def test_previous_output_survives_a_failed_rewrite(tmp_path, monkeypatch):
    final = tmp_path / "sub-01_T1w.json"
    files.write_json({"version": 1}, final)

    def fail(*args, **kwargs):
        raise OSError("killed (injected)")

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(OSError):
        files.write_json({"version": 2}, final)
    assert json.loads(final.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["sub-01_T1w.json"]


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path):
    final = tmp_path / "sub-01_desc-defaced_T1w.nii.gz"
    stale = files.temporary_path(final)
    stale.write_bytes(b"half an image")
    other = files.temporary_path(tmp_path / "sub-02_desc-defaced_T1w.nii.gz")
    other.write_bytes(b"another scan's")
    assert stale.name.startswith(".") and stale.name.endswith(".nii.gz")
    files.remove_stale_temporaries(final)
    assert not stale.exists() and other.exists()


def test_written_gzip_has_no_name_or_time_that_leaks(tmp_path):
    final = tmp_path / "sub-01_desc-defaced_T1w.nii.gz"
    volume = nifti.load_volume(T1W)
    apply.write_defaced(volume, volume.raw, final)
    head = final.read_bytes()[:10]
    assert head[:2] == b"\x1f\x8b"
    assert head[4:8] == b"\x00\x00\x00\x00", "gzip mtime must be zero"
    assert not head[3] & 0x08, "gzip header must not store the (temporary) file name"
    assert gzip.decompress(final.read_bytes())  # complete


def _create(args):
    path, writer = args
    return files.create_json_exclusive({"writer": writer, "padding": "x" * 100_000}, path)


def test_dataset_description_created_once_by_racing_processes(tmp_path):
    path = tmp_path / "dataset_description.json"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        created = pool.map(_create, [(path, writer) for writer in range(16)])
    assert sum(created) == 1
    content = json.loads(path.read_text())
    assert content["writer"] == created.index(True)
    assert [p.name for p in tmp_path.iterdir()] == ["dataset_description.json"]


def test_hidden_temporaries_only(tmp_path):
    temporary = files.temporary_path(tmp_path / "sub-01_mod-T1w_defacemask.nii.gz")
    assert temporary.parent == tmp_path
    assert temporary.name.startswith(".sub-01_mod-T1w_defacemask.deepdefacer-tmp-")
    assert os.path.basename(temporary).endswith(".nii.gz")


@pytest.mark.real_cpus
def test_threads_follow_the_cpus_this_process_may_use(monkeypatch):
    """A SLURM task or container gets a few CPUs of a large node: threads are sized from them."""
    from deepdefacer import parallel

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: {3, 5, 7}, raising=False)
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 64)
    assert parallel.usable_cpus() == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    assert parallel.usable_cpus() == 2
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    assert parallel.usable_cpus() == 3


def test_the_face_check_reads_an_unscaled_scan_from_memory(tmp_path):
    """Volume.in_memory(): the same voxels as the file, without reading it again; a scaled scan
    (its intensities are computed from the stored values) is read from its file as before."""
    volume = nifti.load_volume(HEADS / "chris_t1w.nii.gz")
    in_memory = volume.in_memory()
    assert isinstance(in_memory.dataobj, np.ndarray) and in_memory.dataobj is volume.raw
    assert np.array_equal(np.asanyarray(in_memory.dataobj), np.asanyarray(volume.img.dataobj))
    assert np.array_equal(in_memory.affine, volume.img.affine)
    scaled = nib.Nifti1Image(np.arange(20 ** 3, dtype=np.int16).reshape(20, 20, 20) + 1, np.eye(4))
    scaled.header.set_slope_inter(0.5, -10.0)
    nib.save(scaled, tmp_path / "scaled.nii")
    volume = nifti.load_volume(tmp_path / "scaled.nii")
    assert volume.in_memory() is volume.img
