"""--mode reface on real heads (examples/ds-demo's T1w and T2w of sub-01): an average face, placed
by the atlas guard's fit and matched to the scan's contrast, in the voxels the mask removes; the
rest of the scan bit for bit; nothing of the participant's face in the new one."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from bids_app_helpers import DEMO, run_demo_session
from deepdefacer import reface
from deepdefacer.conform import background_intensity
from deepdefacer.nifti import Volume, load_volume
from deepdefacer.pipeline import load_defacer, refaced
from deepdefacer.qc.participant import defacing_flags
from deepdefacer.qc.verify import verify_defacing

pytestmark = pytest.mark.slow

T1W = DEMO / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz"
T2W = DEMO / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T2w.nii.gz"


@pytest.fixture(scope="module")
def refacer():
    return load_defacer("cpu", atlas_guard=True, mode="reface")


@pytest.fixture(scope="module")
def refaced_t1w(refacer):
    return refacer.deface_volume(load_volume(T1W))


def test_outside_the_mask_bit_identical_inside_a_face(refaced_t1w):
    done = refaced_t1w
    volume, mask = done.volume, done.mask
    assert done.details["Mode"] == "reface" and done.refaced_raw is not None
    assert mask.mean() > 0.05
    assert np.array_equal(done.refaced_raw[~mask], volume.raw[~mask])
    assert done.refaced_raw.dtype == volume.raw.dtype
    # The defaced image (what the face check judges) holds the air there and passes; the written
    # one holds a head there: at least half as much of the mask is head as on the original.
    air = background_intensity(volume.data)
    level = air + 0.2 * (np.percentile(volume.data, 99) - air)
    written = np.asarray(done.written_image.dataobj, dtype=np.float32)[mask]
    original = volume.data[mask]
    assert (np.asarray(done.image.dataobj)[mask] == np.asarray(done.image.dataobj)[mask][0]).all()
    assert 0.5 * (original > level).mean() < (written > level).mean()
    assert verify_defacing(volume.img, done.image, mask).verified


def test_nothing_of_the_participants_face_goes_into_the_new_one(refaced_t1w):
    """The refaced voxels do not depend on the original's voxels inside the mask: scrambled there,
    the new face is the same bit for bit; scaled as a whole, it scales with the scan."""
    done = refaced_t1w
    volume, mask, fit = done.volume, done.mask, done.scanner_to_atlas
    noise = np.random.default_rng(3).uniform(volume.data.min(), volume.data.max(), int(mask.sum()))
    scrambled_data = volume.data.copy()
    scrambled_data[mask] = noise.astype(np.float32)
    scrambled = Volume(volume.img, volume.raw, scrambled_data, volume.stored_header)
    first = reface.refaced_intensities(volume.data, volume.affine, mask, fit)
    again = reface.refaced_intensities(scrambled.data, scrambled.affine, mask, fit)
    assert np.array_equal(first, again)
    doubled = reface.refaced_intensities(2 * volume.data, volume.affine, mask, fit)
    assert np.allclose(doubled, 2 * first, rtol=1e-4, atol=1e-3 * float(np.abs(first).max()))
    # ... while the original's own face differs from the new one.
    assert np.corrcoef(first, volume.data[mask])[0, 1] < 0.9


@pytest.mark.parametrize("path", [T1W, T2W], ids=["T1w", "T2w"])
def test_the_new_face_takes_the_scans_contrast(refacer, path):
    """The template is a T1w; mapped through the table learned around the mask, the new face's
    intensities are the scan's own (a T2w gets T2w intensities, on the T2w's scale)."""
    done = refacer.deface_volume(load_volume(path))
    data, mask = done.volume.data, done.mask
    written = np.asarray(done.written_image.dataobj, dtype=np.float32)[mask]
    near = data[~mask & (data > background_intensity(data))]
    low, high = np.percentile(near, [1, 99.5])
    assert low <= np.median(written) <= high
    assert (written >= low - 0.05 * (high - low)).mean() > 0.95
    assert (written <= high + 0.05 * (high - low)).mean() > 0.95


def test_without_a_trusted_fit_the_scan_is_defaced_and_flagged(refaced_t1w):
    fallback = refaced(replace(refaced_t1w, scanner_to_atlas=None, refaced_raw=None))
    assert fallback.refaced_raw is None and fallback.details["Mode"] == "deface"
    assert np.array_equal(fallback.written_raw, refaced_t1w.raw)
    assert any("defaced, not refaced" in flag for flag in defacing_flags(fallback.details))


def test_the_bids_app_refaces_records_the_mode_and_redoes_another_mode(tmp_path):
    out = tmp_path / "out"

    def run(*extra):
        done = run_demo_session(out, *extra)
        assert done.returncode == 0, done.stderr
        return done.stderr

    run("--mode", "reface")
    sidecar = out / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_desc-defaced_T1w.json"
    record = json.loads(sidecar.read_text())["Deepdefacer"]
    assert record["Decision"]["Mode"] == "reface" and record["Mode"] == "reface"
    assert list((out / "sub-01" / "figures").glob("*_desc-qc_render.png"))
    assert "] up to date sub-01" in run("--mode", "reface")
    again = run()  # --mode deface: not up to date
    assert "] up to date" not in again and "] defaced sub-01" in again
    assert json.loads(sidecar.read_text())["Deepdefacer"]["Decision"]["Mode"] == "deface"


def test_reface_needs_the_atlas_guard(tmp_path):
    from deepdefacer.cli.deface_one import main

    assert main([str(T1W), "-o", str(tmp_path / "x.nii.gz"), "--mode", "reface", "--no-atlas-guard"]) == 2
    assert not (tmp_path / "x.nii.gz").exists()
