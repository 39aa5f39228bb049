"""gzip through ISA-L (deepdefacer.gz): the same values and bytes as zlib, and a zlib fallback."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from deepdefacer import apply, gz, nifti

DEMO = Path(__file__).resolve().parents[1] / "examples" / "ds-demo"
SCANS = sorted(DEMO.glob("sub-*/anat/*.nii.gz"))


def _defaced(path: Path, out: Path):
    volume = nifti.load_volume(path)
    mask = np.zeros(volume.raw.shape, bool)
    mask[: mask.shape[0] // 3] = True
    raw = apply.defaced_raw(volume, mask)
    apply.write_defaced(volume, raw, out)
    apply.write_image(apply.mask_image(mask, volume.img), out.with_name("mask_" + out.name))
    return raw


def test_reading_gives_nibabels_stored_values_and_header():
    assert SCANS, f"no demo scans in {DEMO}"
    for path in SCANS:
        img = nib.load(path)
        volume = nifti.load_volume(path)
        expected = np.asanyarray(img.dataobj.get_unscaled()).reshape(volume.raw.shape)
        assert volume.raw.dtype == expected.dtype, path
        assert np.array_equal(volume.raw, expected), path
        with gzip.open(path) as stream:
            assert volume.stored_header.binaryblock == type(img.header).from_fileobj(stream).binaryblock, path


def test_written_scans_and_masks_are_plain_gzip_and_the_same_bytes_on_a_rerun(tmp_path):
    path = SCANS[0]
    raw = _defaced(path, tmp_path / "a.nii.gz")
    _defaced(path, tmp_path / "b.nii.gz")
    for name in ("a.nii.gz", "mask_a.nii.gz"):
        first, second = (tmp_path / name).read_bytes(), (tmp_path / name.replace("a.", "b.")).read_bytes()
        assert first == second, name  # no time stamp or name in the gzip header
        assert gzip.decompress(first)[:4] == (348).to_bytes(4, "little")  # zlib reads it
    written = nib.load(tmp_path / "a.nii.gz")
    assert np.array_equal(np.asanyarray(written.dataobj.get_unscaled()).reshape(raw.shape), raw)
    assert written.header.binaryblock == nib.load(path).header.binaryblock
    mask = np.asanyarray(nib.load(tmp_path / "mask_a.nii.gz").dataobj)
    assert mask.dtype == np.uint8 and mask[: mask.shape[0] // 3].all() and not mask[mask.shape[0] // 3:].any()


def test_zlib_fallback_reads_and_writes_the_same_values(tmp_path, monkeypatch):
    if gz._gzip_module is gzip:
        pytest.skip("ISA-L (isal) is not installed: zlib is all there is")
    path = SCANS[0]
    fast = _defaced(path, tmp_path / "fast.nii.gz")
    monkeypatch.setattr(gz, "_gzip_module", gzip)
    slow = _defaced(path, tmp_path / "slow.nii.gz")
    assert np.array_equal(fast, slow)
    for name in ("fast.nii.gz", "mask_fast.nii.gz"):
        assert gzip.decompress((tmp_path / name).read_bytes()) == gzip.decompress(
            (tmp_path / name.replace("fast", "slow")).read_bytes()), name
