"""The atlas guard's own registration (deepdefacer.registration): a Mattes mutual
information affine fit in numpy."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from deepdefacer import registration as reg
from deepdefacer.atlas import SMOOTH_MM, load_atlas, register_brain
from deepdefacer.conform import GridPlan, conform
from deepdefacer.resample import block_reduce
from deepdefacer.nifti import read_volume

REPO = Path(__file__).resolve().parents[1]
DEMO_T1W = REPO / "examples" / "ds-demo" / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz"
PLAN = GridPlan(size=48, voxel_mm=5.3333)


def _brain_points():
    atlas = load_atlas()
    ijk = np.argwhere(atlas["brain"] >= 0.5)
    return ijk @ atlas["affine"][:3, :3].T + atlas["affine"][:3, 3]


def _displacement_mm(world_a, world_b):
    """How far the atlas brain's points land apart in the scan under two fits (scan -> atlas)."""
    points = np.c_[_brain_points(), np.ones(len(_brain_points()))]
    a = points @ np.linalg.inv(world_a).T
    b = points @ np.linalg.inv(world_b).T
    return np.linalg.norm(a[:, :3] - b[:, :3], axis=1)


def test_the_metrics_gradient_is_its_derivative():
    """The analytic gradient (trilinear interpolant, B-spline window) against central differences,
    on a real scan against the shipped atlas near the guard's start. The points are those that
    land well inside the atlas's grid: a point crossing its edge changes the count of points in
    the histogram, which the gradient leaves out (as ITK's does)."""
    img = nib.load(DEMO_T1W)
    data = read_volume(img).data
    reduced, affine = block_reduce(data, img.affine, 4.5)
    atlas = load_atlas()
    moving = reg.MovingImage(ndimage.gaussian_filter(atlas["head"], SMOOTH_MM / 3.0), atlas["affine"])
    values, points = reg.level_points(reduced, affine, 6.0, SMOOTH_MM, 8000, np.random.default_rng(0))
    centre = points.mean(axis=0)
    shift = conform(atlas["head"], atlas["affine"], PLAN).affine_ras[:3, 3] - conform(data, img.affine, PLAN).affine_ras[:3, 3]
    M, t = moving.to_voxels[:3, :3], moving.to_voxels[:3, 3]
    A = Rotation.from_euler("xyz", [4, -3, 2], degrees=True).as_matrix() * 1.02
    b = centre + shift + np.array([2.0, -3.0, 1.0])
    voxels = (points - centre) @ (M @ A).T + M @ b + t
    inner = np.all((voxels > reg.PAD + 3) & (voxels < moving.shape - 1 - reg.PAD - 3), axis=1)
    assert inner.mean() > 0.5
    metric = reg.MattesMI(values[inner], points[inner] - centre, moving)

    def value(A, b):
        return metric.value_and_gradient(M @ A, M @ b + t)[0]

    v, dG, dh = metric.value_and_gradient(M @ A, M @ b + t)
    assert -1.5 < v < -0.1  # mutual information of a head with a head, in nats
    dA, db = M.T @ dG, M.T @ dh
    for i in range(3):
        e = np.eye(3)[i]
        numeric = (value(A, b + 0.05 * e) - value(A, b - 0.05 * e)) / 0.1
        assert db[i] == pytest.approx(numeric, rel=0.05, abs=1e-6)
        for j in range(3):
            step = np.zeros((3, 3))
            step[i, j] = 5e-4
            numeric = (value(A + step, b) - value(A - step, b)) / 1e-3
            assert dA[i, j] == pytest.approx(numeric, rel=0.05, abs=1e-5)


def _atlas_as_scan(world: np.ndarray, invert: bool):
    """The shipped average head resampled onto a 2 mm scan grid through ``world`` (scan -> atlas),
    with T1w contrast or inverted (a T2w-like remapping of the head's intensities)."""
    atlas = load_atlas()
    shape = (96, 120, 120)
    grid = np.diag([2.0, 2.0, 2.0, 1.0])
    centre_atlas = _brain_points().mean(axis=0)
    grid[:3, 3] = np.linalg.inv(world)[:3, :3] @ centre_atlas + np.linalg.inv(world)[:3, 3] - np.array(shape) + [0, 0, 20]
    to_atlas = np.linalg.inv(atlas["affine"]) @ world @ grid
    head = ndimage.affine_transform(atlas["head"], to_atlas[:3, :3], to_atlas[:3, 3], output_shape=shape, order=1)
    if invert:
        inside = head > 0.15 * head.max()
        head = np.where(inside, 1.2 * head.max() - head, 0.0)
    return head.astype(np.float32), grid


@pytest.mark.parametrize("invert", [False, True], ids=["T1w", "inverted"])
@pytest.mark.slow
def test_a_known_transform_is_recovered(invert):
    """A head made from the atlas through a known affine (pitch 12 deg, yaw -8 deg, 0.93-1.08x,
    shifted): the guard's registration finds it to within a millimetre or two, in either contrast."""
    world = np.eye(4)
    world[:3, :3] = Rotation.from_euler("xyz", [12, 0, -8], degrees=True).as_matrix() @ np.diag([1.08, 0.95, 0.93])
    world[:3, 3] = [4.0, -7.0, 5.0]
    data, affine = _atlas_as_scan(world, invert)
    fit: dict = {}
    cube = conform(data, affine, PLAN).affine_ras
    brain = register_brain(data, affine, cube, PLAN, fit=fit)
    moved = _displacement_mm(fit["world"], world)
    assert np.median(moved) < 1.0 and moved.max() < 2.5, (np.median(moved), moved.max(), fit["start"])
    assert brain.max() > 0.9 and (brain >= 0.5).sum() * PLAN.voxel_mm ** 3 / 1000 > 1000  # a whole brain, in ml


def test_points_off_the_atlas_are_left_out_of_the_histogram():
    """Points mapped outside the atlas's grid do not count: moving every point far off gives no
    information (zero mutual information) rather than a match of 'outside' with the scan's air."""
    atlas = load_atlas()
    moving = reg.MovingImage(atlas["head"], atlas["affine"])
    rng = np.random.default_rng(0)
    points = rng.uniform(-60, 60, size=(5000, 3))
    values = rng.uniform(0, 100, size=5000)
    metric = reg.MattesMI(values, points, moving)
    far = moving.to_voxels[:3, 3] + 1e4
    value, dG, dh = metric.value_and_gradient(moving.to_voxels[:3, :3], far)
    assert value == 0.0 and not dG.any() and not dh.any()
