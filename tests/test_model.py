"""The shipped model: found in the installed package, matches its card; training smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from shared_data import SHARED_DATA, needs_shared_data

import deepdefacer
from deepdefacer.files import sha256_file as sha256_of
from deepdefacer.pipeline import Defacer
from deepdefacer.predictor import load_predictor, shipped_model_path

REPO = Path(__file__).resolve().parents[1]
SHARED = SHARED_DATA


def test_model_is_loaded_from_the_installed_package():
    path = shipped_model_path()
    package_dir = Path(deepdefacer.__file__).resolve().parent
    # Installed (site-packages/deepdefacer/models) or editable (models/ mapped into the package).
    assert path.parent.name == "models"
    assert path.is_file() and path.stat().st_size < 20 * 2**20
    import deepdefacer.models as shipped

    assert Path(shipped.__file__).resolve().parent == path.resolve().parent
    assert package_dir.exists()


@pytest.mark.slow
def test_model_card_describes_the_shipped_weights():
    path = shipped_model_path()
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["sha256"] == sha256_of(path)
    for key in ("command", "commit", "date", "training_data", "grid", "metrics"):
        assert key in card, key
    assert card["training_data"] and all(len(item["sha256"]) == 64 for item in card["training_data"])
    defacer = load_predictor("cpu")
    assert defacer.plan.size == card["grid"]["size"]
    assert defacer.thresholds.face == card["thresholds"]["face"]  # the card's, no defaults
    assert defacer.thresholds.edge_mm == card["thresholds"]["edge_mm"]
    assert defacer.model_sha256 == card["sha256"]
    assert defacer.model_name == path.name


@pytest.mark.slow
def test_a_model_without_a_card_stating_its_grid_is_refused(tmp_path):
    """The voxel size is not in the .keras file; a guessed one predicts at the wrong scale."""
    import shutil

    model = tmp_path / "candidate.keras"
    shutil.copy(shipped_model_path(), model)
    with pytest.raises(ValueError, match=r"candidate\.keras: no model card candidate\.json"):
        load_predictor("cpu", model)
    card = json.loads(shipped_model_path().with_suffix(".json").read_text())
    del card["grid"]["voxel_mm"]
    model.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"candidate\.json: not a model card with grid\.voxel_mm"):
        load_predictor("cpu", model)
    card["grid"]["voxel_mm"] = 5.3333
    del card["thresholds"]["face"]
    model.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"candidate\.json: not a model card .*thresholds\.face"):
        load_predictor("cpu", model)  # thresholds belong to the weights: none are made up
    card["thresholds"]["face"] = 0.4
    model.with_suffix(".json").write_text(json.dumps(card))
    assert load_predictor("cpu", model).plan.voxel_mm == 5.3333


@pytest.mark.slow
@needs_shared_data
def test_model_predicts_a_face_in_front_and_a_brain_above_it():
    """On the canonical grid (RAS, top of the head at the top) the face is anterior-inferior."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    from deepdefacer.conform import conform

    defacer = load_predictor("cpu")
    img = nib.load(SHARED / "heads" / "colin27_t1w_1mm.nii.gz")
    cube = conform(img.get_fdata(dtype=np.float32), img.affine, defacer.plan)
    face, brain = defacer.predict(cube.array)
    face_centre = np.array(np.nonzero(face > 0.5)).mean(axis=1)
    brain_centre = np.array(np.nonzero(brain > 0.5)).mean(axis=1)
    assert face_centre[1] > brain_centre[1] + 5   # in front (A)
    assert face_centre[2] < brain_centre[2]       # below (S)
    assert 600 < (brain > 0.5).sum() * defacer.plan.voxel_mm ** 3 / 1000 < 2500  # ml


@pytest.mark.slow
@needs_shared_data
def test_mirror_average_makes_the_prediction_left_right_symmetric():
    """With the card's mirror average, a head and its mirror image get mirrored outputs.

    The network alone is not exactly symmetric (checked here, so the test can fail):
    averaging with the mirrored pass is what makes it so, and it is the mean of both.
    """
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    from deepdefacer.conform import conform

    defacer = load_predictor("cpu")
    assert defacer.mirror_average is defacer.card.get("inference", {}).get("mirror_average", False)
    img = nib.load(SHARED / "heads" / "t1w_head_ext2.nii.gz")
    cube = conform(img.get_fdata(dtype=np.float32), img.affine, defacer.plan).array
    mirror = np.ascontiguousarray(cube[::-1])

    defacer.mirror_average = False
    face, brain = defacer.predict(cube)
    face_m, brain_m = defacer.predict(mirror)
    assert np.abs(face - face_m[::-1]).max() > 0.05   # one pass: not symmetric
    defacer.mirror_average = True
    face_avg, brain_avg = defacer.predict(cube)
    face_avg_m, brain_avg_m = defacer.predict(mirror)
    np.testing.assert_allclose(face_avg, face_avg_m[::-1], atol=1e-5)
    np.testing.assert_allclose(brain_avg, brain_avg_m[::-1], atol=1e-5)
    np.testing.assert_allclose(face_avg, (face + face_m[::-1]) / 2, atol=1e-5)
    assert Defacer(defacer).decision["LeftRightMirrorAverage"] is True


@pytest.mark.slow
@needs_shared_data
def test_smoke_training_runs_and_exports_a_loadable_model(tmp_path):
    if not (SHARED.is_dir() and (REPO / "labels").is_dir()):
        pytest.skip("training data or labels not available")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-m", "deepdefacer.train.train", "--smoke", "--run-dir", str(tmp_path / "run"),
         "--export", "smoke", "--models-dir", str(tmp_path / "models")],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "last.keras").is_file()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["epoch"] == 2
    card = json.loads((tmp_path / "models" / "smoke.json").read_text())
    assert card["sha256"] == sha256_of(tmp_path / "models" / "smoke.keras")
    defacer = load_predictor("cpu", tmp_path / "models" / "smoke.keras")
    face, brain = defacer.predict(np.zeros(defacer.plan.shape, np.float32))
    assert face.shape == defacer.plan.shape and np.all((face >= 0) & (face <= 1))
    # Resume continues from the checkpoint instead of starting again (through `python -m deepdefacer.train`).
    resumed = subprocess.run(
        [sys.executable, "-m", "deepdefacer.train", "--smoke", "--run-dir", str(tmp_path / "run"),
         "--resume", "--epochs", "3"], capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    assert json.loads((tmp_path / "run" / "state.json").read_text())["epoch"] == 3


@needs_shared_data
def test_training_can_target_the_deformable_brain_or_the_union(tmp_path):
    if not (SHARED.is_dir() and (REPO / "labels").is_dir()):
        pytest.skip("training data or labels not available")
    from deepdefacer.train.data import split
    from deepdefacer.train.dataset import load_heads

    head_path = split()["validation"][0]  # IXI012: has affine and SyN brains in labels/
    name = head_path.name.split(".")[0]
    affine_head, = load_heads([head_path], REPO / "labels", "affine")
    syn_head, = load_heads([head_path], REPO / "labels", "syn")
    syn = np.asarray(nib.load(REPO / "labels" / f"{name}_brainsyn.nii.gz").dataobj)
    np.testing.assert_array_equal(syn_head.brain, syn)
    np.testing.assert_array_equal(syn_head.face, affine_head.face)
    assert (syn_head.brain != affine_head.brain).sum() > 1000
    union_head, = load_heads([head_path], REPO / "labels", "union")
    np.testing.assert_array_equal(union_head.brain, np.maximum(affine_head.brain, syn_head.brain))
    assert union_head.brain.sum() > max(affine_head.brain.sum(), syn_head.brain.sum())
    # A head without a SyN brain is left out of a SyN run, not trained on the affine one.
    for mask in ("face", "brain"):
        (tmp_path / f"{name}_{mask}.nii.gz").symlink_to(REPO / "labels" / f"{name}_{mask}.nii.gz")
    assert len(load_heads([head_path], tmp_path, "affine")) == 1
    assert load_heads([head_path], tmp_path, "syn") == []


@needs_shared_data
def test_boundary_penalty_targets_face_on_brain_and_brain_missing_at_the_face():
    if not (SHARED.is_dir() and (REPO / "labels").is_dir()):
        pytest.skip("training data or labels not available")
    from scipy import ndimage

    from deepdefacer.conform import GridPlan
    from deepdefacer.train.augment import sample
    from deepdefacer.train.data import split
    from deepdefacer.train.dataset import load_heads
    from deepdefacer.train.losses import boundary_penalty, dice_bce_loss, make_loss

    head, = load_heads(split()["validation"][:1], REPO / "labels")
    _, targets = sample(head, GridPlan(size=48, voxel_mm=5.3333), np.random.default_rng(0), augment=False)
    binary = (targets > 0.5).astype(np.float32)[None]
    face, brain = binary[0, ..., 0] > 0, binary[0, ..., 1] > 0
    assert face.sum() > 100 and brain.sum() > 1000
    assert float(boundary_penalty(binary, binary)) == pytest.approx(0.0, abs=1e-6)
    # The face grown onto the brain, or the brain eroded where it meets the face, is penalised.
    grown = binary.copy()
    grown[0, ..., 0] = ndimage.binary_dilation(face, iterations=2)
    eroded = binary.copy()
    eroded[0, ..., 1] = brain & ~ndimage.binary_dilation(face, iterations=3)
    assert float(boundary_penalty(binary, grown)) > 0.05
    assert float(boundary_penalty(binary, eroded)) > 0.05
    # The brain eroded away from the face is not.
    far = binary.copy()
    cube = np.ones((3, 3, 3), bool)  # the penalty's reach is a cube of voxels
    far[0, ..., 1] = brain & ndimage.binary_erosion(brain, iterations=1) | (
        brain & ndimage.binary_dilation(face, cube, iterations=3))
    assert (far != binary).sum() > 1000
    assert float(boundary_penalty(binary, far)) == pytest.approx(0.0, abs=1e-6)
    # The creep term alone sees the grown face and not the eroded brain; the terms add up.
    assert float(boundary_penalty(binary, eroded, terms=("creep",))) == pytest.approx(0.0, abs=1e-6)
    creep = float(boundary_penalty(binary, grown, terms=("creep",)))
    assert creep > 0.05
    assert creep + float(boundary_penalty(binary, grown, terms=("short",))) == pytest.approx(
        float(boundary_penalty(binary, grown)), rel=1e-5)
    assert make_loss(0.0) is dice_bce_loss
    combined = float(make_loss(0.5)(binary, grown))
    assert combined == pytest.approx(float(dice_bce_loss(binary, grown))
                                     + 0.5 * float(boundary_penalty(binary, grown)), rel=1e-5)


@needs_shared_data
def test_gpu_experiment_pack_is_a_faithful_4mm_copy_of_the_training_heads(tmp_path):
    """bench/gpu_more_steps.py carries heads block-averaged to ~4 mm: they must still be the same heads."""
    if not (SHARED.is_dir() and (REPO / "labels").is_dir()):
        pytest.skip("training data or labels not available")
    from bench import gpu_more_steps

    from deepdefacer.train.augment import sample
    from deepdefacer.train.data import split
    from deepdefacer.train.dataset import load_heads

    paths = split()["train"][:1] + [p for p in split()["train"] if p.name.startswith("spm_avg152T2")]
    (tmp_path / "heads.txt").write_text("\n".join(str(p) for p in paths) + "\n")
    gpu_more_steps.pack(tmp_path / "heads.npz", tmp_path / "heads.txt", REPO / "labels")
    packed = gpu_more_steps.load_pack(tmp_path / "heads.npz")
    original = load_heads(paths, REPO / "labels")
    assert [h.name for h in packed] == [h.name for h in original]
    for small, full in zip(packed, original):
        assert np.allclose(np.abs(np.diag(small.affine)[:3]), 2 * np.abs(np.diag(full.affine)[:3]))
        x_small, y_small = sample(small, gpu_more_steps.PLAN, np.random.default_rng(0), augment=False)
        x_full, y_full = sample(full, gpu_more_steps.PLAN, np.random.default_rng(0), augment=False)
        assert np.corrcoef(x_small.ravel(), x_full.ravel())[0, 1] > 0.9
        # The brain keeps its volume; the face loses a little where it meets the field of view's
        # edge (block averaging trims odd edge slices; spm_avg152T2's face is cut by its box).
        assert y_small[..., 1].sum() == pytest.approx(y_full[..., 1].sum(), rel=0.01)
        assert 0.75 * y_full[..., 0].sum() < y_small[..., 0].sum() <= 1.01 * y_full[..., 0].sum()
