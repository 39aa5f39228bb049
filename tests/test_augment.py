"""The augmentation capsule: seeded, reproducible, and its ranges are what the command says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from shared_data import SHARED_DATA, needs_shared_data

from deepdefacer.conform import GridPlan
from deepdefacer.train.augment import AugmentOptions, random_world_transform, sample

REPO = Path(__file__).resolve().parents[1]
SHARED = SHARED_DATA
PLAN = GridPlan(size=48, voxel_mm=5.3333)


def pitch_yaw_roll(matrix: np.ndarray) -> np.ndarray:
    """Angles (degrees) of a pure rotation Rz @ Ry @ Rx, as ``rotation_matrix`` builds it."""
    pitch = np.arctan2(matrix[2, 1], matrix[2, 2])
    about_y = -np.arcsin(np.clip(matrix[2, 0], -1, 1))
    about_z = np.arctan2(matrix[1, 0], matrix[0, 0])
    return np.degrees([pitch, about_y, about_z])


def draw_angles(options: AugmentOptions, count: int = 400) -> np.ndarray:
    rng = np.random.default_rng(7)
    return np.array([pitch_yaw_roll(random_world_transform(
        rng, options.max_degrees, scale_range=(1.0, 1.0), flip_lr=False,
        max_pitch_degrees=options.max_pitch_degrees)[:3, :3]) for _ in range(count)])


def test_pitch_range_is_separate_from_the_other_axes():
    default = np.abs(draw_angles(AugmentOptions()))
    assert default.max() <= 20.0 + 1e-6
    assert default[:, 0].max() > 18.0  # the range is used, not only its middle
    wide = np.abs(draw_angles(AugmentOptions(max_pitch_degrees=30.0)))
    assert 27.0 < wide[:, 0].max() <= 30.0 + 1e-6  # chin down/up up to 30 degrees
    assert wide[:, 1:].max() <= 20.0 + 1e-6  # the other axes keep their range


def test_default_options_draw_the_same_poses_as_before_they_existed():
    # Shipped models were trained before the options existed: a seed must give the same pose.
    from deepdefacer.train.augment import rotation_matrix

    for seed in range(5):
        old = np.random.default_rng(seed)  # the formula as it was up to model v10
        matrix = rotation_matrix(np.deg2rad(old.uniform(-20.0, 20.0, 3))) @ np.cbrt(
            np.diag(old.uniform(0.85, 1.15, 3) * old.uniform(0.85, 1.15)))
        if old.random() < 0.5:
            matrix = np.diag([-1.0, 1.0, 1.0]) @ matrix
        shift = old.uniform(-15, 15, 3)
        new = random_world_transform(np.random.default_rng(seed))
        np.testing.assert_allclose(new[:3, :3], matrix, atol=1e-12)
        np.testing.assert_allclose(new[:3, 3], shift, atol=1e-12)


@pytest.fixture(scope="module")
def head():
    if not (SHARED.is_dir() and (REPO / "labels").is_dir()):
        pytest.skip("training data or labels not available")
    from deepdefacer.train.data import split
    from deepdefacer.train.train import load_heads

    head, = load_heads(split()["train"][:1], REPO / "labels")
    return head


@needs_shared_data
def test_sample_is_reproducible_from_its_seed(head):
    a = sample(head, PLAN, np.random.default_rng([2027, 0, 1]))
    b = sample(head, PLAN, np.random.default_rng([2027, 0, 1]))
    c = sample(head, PLAN, np.random.default_rng([2027, 0, 2]))
    assert a[0].shape == PLAN.shape and a[1].shape == PLAN.shape + (2,)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # Targets stay probabilities, and the face and brain are both in the cube.
    assert a[1].min() >= 0 and a[1].max() <= 1
    assert (a[1][..., 0] > 0.5).sum() > 50 and (a[1][..., 1] > 0.5).sum() > 1000


@needs_shared_data
def test_wider_options_change_the_cubes_they_are_given_to(head):
    seeds = [[5, 0, k] for k in range(6)]
    plain = [sample(head, PLAN, np.random.default_rng(s)) for s in seeds]
    wide = [sample(head, PLAN, np.random.default_rng(s), options=AugmentOptions(max_pitch_degrees=30.0,
                                                                                 gamma_log=0.6))
            for s in seeds]
    # Every draw's pose changes (the pitch is drawn from a wider range), so the targets move.
    for p, w in zip(plain, wide):
        assert not np.allclose(p[1], w[1])
