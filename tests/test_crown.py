"""A field of view that cuts the top of the head: the crown is placed from the atlas fit."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from shared_data import SHARED_DATA, needs_shared_data

from deepdefacer.atlas import START_SCALES
from deepdefacer.conform import GridPlan, head_box_ras
from deepdefacer.nifti import read_volume
from deepdefacer.pipeline import deface_with_details

REPO = Path(__file__).resolve().parents[1]
SHARED = SHARED_DATA
LABELS = REPO / "labels"
# 1 mm, RAS, the whole head with its face (the repo's example dataset).
SCAN = REPO / "examples" / "ds-demo" / "sub-02" / "anat" / "sub-02_run-1_T1w.nii.gz"
PLAN = GridPlan(48, 5.3333, 12.0)


def _cut_top(img, mm: float):
    """``img`` with the top ``mm`` of the head cut off by the field of view (RAS scans only)."""
    data = read_volume(img).data
    top = float(head_box_ras(data, img.affine)[1][2])
    keep = int(np.floor((top - mm - img.affine[2, 3]) / img.affine[2, 2])) + 1
    cut = nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, :keep], img.affine, img.header)
    cut.set_sform(img.affine, 1)
    cut.set_qform(img.affine, 1)
    return cut, top


def test_the_atlas_crown_follows_the_fit():
    from deepdefacer.atlas import HEAD_FRACTION, head_top_mm, load_atlas

    atlas = load_atlas()
    ijk = np.argwhere(atlas["head"] > HEAD_FRACTION * atlas["head"].max())
    top = float((atlas["affine"][:3, :3] @ ijk.T + atlas["affine"][:3, 3:4])[2].max())
    assert head_top_mm(np.eye(4)) == pytest.approx(top)
    # A scan whose world is the atlas's moved 10 mm down: its crown is 10 mm lower.
    down = np.eye(4)
    down[2, 3] = 10.0  # scan point + 10 mm = atlas point
    assert head_top_mm(down) == pytest.approx(top - 10.0)
    # Scaled 1.1x about the origin: the crown 1.1x as high.
    grow = np.diag([1 / 1.1, 1 / 1.1, 1 / 1.1, 1.0])
    assert head_top_mm(grow) == pytest.approx(1.1 * top)


@pytest.mark.slow
def test_a_fit_reused_on_another_cube_is_the_registrations_own_warp():
    """The raised cube reuses the fit: ``warp_brain`` carries the atlas brain through it as
    ANTs' warp of the registration does."""
    from deepdefacer.atlas import register_brain, warp_brain
    from deepdefacer.conform import conform

    img = nib.load(SCAN)
    data = read_volume(img).data
    cube = conform(data, img.affine, PLAN).affine_ras
    fit: dict = {}
    registered = register_brain(data, img.affine, cube, PLAN, fit=fit)
    assert (registered >= 0.5).sum() > 5000
    np.testing.assert_allclose(warp_brain(fit["world"], cube, PLAN), registered, atol=1e-5)


@pytest.mark.slow
def test_a_crown_cut_by_the_field_of_view_is_placed_from_the_fit(defacer, network):
    img = nib.load(SCAN)
    _, _, whole = deface_with_details(img, defacer)
    assert "CrownFromAtlasMM" not in whole  # a whole head: the box's top is the crown
    cut, _ = _cut_top(img, 25.0)
    defaced, mask, details = deface_with_details(cut, defacer)
    assert 17.0 <= details["CrownFromAtlasMM"] <= 35.0, details  # 25 mm were cut
    assert details["AtlasGuard"]["Used"] and details["AtlasGuard"]["Start"] in (*START_SCALES, "rigid first")
    assert defacer.decision["AtlasCrown"] is True and "AtlasCrown" not in network.decision
    assert np.asarray(mask.dataobj).sum() > 1000
    _, _, alone = deface_with_details(cut, network)  # --no-atlas-guard: no fit, no crown
    assert alone == {}


@needs_shared_data
@pytest.mark.slow
def test_the_crown_cut_validation_head_loses_both_eyes(defacer, monkeypatch):
    """Subj13_T1 with its top 25 mm cut kept an eye before the crown was placed from the fit (docs/robustness.md)."""
    from deepdefacer import atlas_fit
    from deepdefacer.train.evaluate import LANDMARK_NAMES, passes, reference_labels, score

    img = nib.load(next(SHARED.rglob("Subj13_T1.nii*")))
    cut, top = _cut_top(img, 25.0)
    labels = reference_labels(LABELS, "Subj13_T1")
    keep = cut.shape[2]
    labels = {k: np.asarray(labels[k])[:, :, :keep] for k in ("face", "brain", "brain_affine", "landmarks")
              if k in labels}
    data = read_volume(cut).data

    def scored():
        _, mask, details = deface_with_details(cut, defacer)
        row = score(np.asarray(mask.dataobj).astype(bool), data, labels["face"], labels["brain"],
                    labels["landmarks"], labels.get("brain_affine"))
        return row, details

    row, details = scored()
    detail = {k: row[k] for k in ("face_removed", "brain_removed_voxels", *LANDMARK_NAMES)}
    assert passes(row) and details["CrownFromAtlasMM"] > 10, (detail, details)
    monkeypatch.setattr(atlas_fit, "CROWN_MIN_MM", 1e9)  # the cube hung from the cut
    before, _ = scored()
    assert not (before["eye_left"] and before["eye_right"])
