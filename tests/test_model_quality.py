"""The shipped model on scans it never saw: every real head, 48 axis orders, rotations."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import pytest

from deepdefacer.train.data import validation_heads
from deepdefacer.train.evaluate import (LANDMARK_NAMES, evaluate_head, orientation_consistency,
                                        passes, rotation_consistency)
from deepdefacer.train.labels import label_name

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
LABELS = REPO / "labels"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not found at {SHARED}")


@pytest.fixture(scope="module")
def defacer():
    from deepdefacer.model import load_defacer

    return load_defacer("cpu")


@pytest.mark.parametrize("path", validation_heads() if SHARED.is_dir() else [], ids=label_name)
def test_every_real_head_loses_its_face_and_keeps_its_brain(defacer, path):
    row = evaluate_head(path, LABELS, defacer)
    detail = {k: row[k] for k in ("face_removed", "brain_removed_voxels", *LANDMARK_NAMES)}
    assert passes(row), detail


def test_same_mask_for_all_48_axis_orders(defacer):
    img = nib.load(SHARED / "heads" / "t1w_head_ext2.nii.gz")
    scores = orientation_consistency(img, defacer)
    assert len(scores) == 48
    worst = min(scores, key=scores.get)
    assert scores[worst] >= 0.98, (worst, scores[worst])


def test_same_mask_under_rotations_up_to_15_degrees(defacer):
    img = nib.load(SHARED / "heads" / "t1w_head_ext2.nii.gz")
    scores = rotation_consistency(img, defacer)
    worst = min(scores, key=scores.get)
    assert scores[worst] >= 0.98, (worst, scores[worst])
