"""Augmentation: training conforms a head with inference's own conform(); the transforms are
seeded, reproducible, their ranges are what the command says and their recipe is JSON."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from shared_data import SHARED_DATA, needs_shared_data

from deepdefacer.conform import GridPlan, conform
from deepdefacer.resample import resample
from deepdefacer.train.augment import (IDENTITY, AugmentOptions, Compose, Head, RandomAffine,
                                       RandomGamma, RandomNoise, conformed_sample,
                                       default_augmentation, random_world_transform, sample)

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
    from deepdefacer.train.perturbations import rotation_matrix

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
    from deepdefacer.train.dataset import load_heads

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


def colin27_head() -> Head:
    path = SHARED / "heads" / "colin27_t1w_2mm.nii"
    labels = REPO / "labels"
    if not (path.exists() and (labels / "colin27_t1w_2mm_face.nii.gz").exists()):
        pytest.skip("colin27_t1w_2mm or its labels not available")
    img = nib.load(path)
    face, brain = (np.asarray(nib.load(labels / f"colin27_t1w_2mm_{kind}.nii.gz").dataobj, np.float32)
                   for kind in ("face", "brain"))
    return Head("colin27_t1w_2mm", img.get_fdata(dtype=np.float32), face, brain, img.affine)


@needs_shared_data
def test_training_conforms_a_head_with_inference_conform_bit_for_bit():
    head = colin27_head()
    expected = conform(head.image, head.affine, PLAN)
    cubes = conformed_sample(head, PLAN, np.random.default_rng(0), IDENTITY)
    assert cubes.image.dtype == expected.array.dtype
    np.testing.assert_array_equal(cubes.image, expected.array)
    np.testing.assert_array_equal(cubes.affine_ras, expected.affine_ras)
    # The labels are resampled onto that very cube, through the same affine.
    for label, cube in ((head.face, cubes.face), (head.brain, cubes.brain)):
        np.testing.assert_array_equal(cube, resample(label, head.affine, expected.affine_ras,
                                                     PLAN.shape, order=1))
    image, targets = sample(head, PLAN, np.random.default_rng(0), augment=False)
    np.testing.assert_array_equal(image, expected.array)
    np.testing.assert_array_equal(targets[..., 0], np.clip(cubes.face, 0, 1))
    assert (targets[..., 0] > 0.5).sum() > 50 and (targets[..., 1] > 0.5).sum() > 1000


@needs_shared_data
def test_a_pose_is_a_change_of_the_affine_that_conform_is_given():
    head = colin27_head()
    pose = Compose([RandomAffine()])
    cubes = conformed_sample(head, PLAN, np.random.default_rng(3), pose)
    world = random_world_transform(np.random.default_rng(3))
    expected = conform(head.image, world @ head.affine, PLAN)
    np.testing.assert_array_equal(cubes.image, expected.array)
    np.testing.assert_array_equal(cubes.face, resample(head.face, world @ head.affine,
                                                       expected.affine_ras, PLAN.shape, order=1))


def test_the_recipe_is_json_and_names_every_transform_with_its_parameters():
    recipe = default_augmentation().recipe()
    assert json.loads(json.dumps(recipe)) == recipe
    assert [r["transform"] for r in recipe] == [
        "RandomContrast", "RandomFieldOfView", "RandomAffine", "RandomElasticDeformation",
        "RandomBiasField", "RandomAnisotropy", "RandomGamma", "RandomNoise", "RandomQuantisation"]
    assert [r["probability"] for r in recipe] == [0.6, 0.4, 1.0, 0.4, 0.5, 0.3, 0.5, 0.5, 0.3]
    assert {r["stage"] for r in recipe[:3]} == {"scan"} and {r["stage"] for r in recipe[3:]} == {"cube"}
    affine = recipe[2]
    assert affine["max_degrees"] == 20.0 and affine["scale_range"] == [0.85, 1.15]
    wide = default_augmentation(AugmentOptions(max_pitch_degrees=30.0, gamma_log=0.6)).recipe()
    assert wide[2]["max_pitch_degrees"] == 30.0 and wide[6]["log_gamma"] == 0.6
    # The cube stage cannot come before conform.
    with pytest.raises(ValueError):
        Compose([RandomGamma(), RandomAffine()])


@needs_shared_data
def test_a_transform_applies_with_its_probability_and_not_otherwise():
    head = colin27_head()
    never = Compose([RandomNoise(probability=0.0)])
    always = Compose([RandomNoise(probability=1.0)])
    plain = conformed_sample(head, PLAN, np.random.default_rng(1), IDENTITY).image
    # A transform that does not fire leaves the cube as conform made it, renormalised.
    from deepdefacer.conform import normalise

    np.testing.assert_array_equal(conformed_sample(head, PLAN, np.random.default_rng(1), never).image,
                                  normalise(plain))
    noisy = conformed_sample(head, PLAN, np.random.default_rng(1), always).image
    assert not np.array_equal(noisy, normalise(plain))
