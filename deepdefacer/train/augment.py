"""The augmentation capsule: one labelled head -> endless varied training cubes.

With one main site and a few contrasts, the model has to learn "any contrast, any
resolution, any field of view" from augmentation (in the spirit of SynthStrip's
synthesis): random intensity remapping of the whole histogram (so T1w can look like
T2w, PDw or FLAIR), gamma, bias fields, noise, 8-bit quantisation, anisotropic
resolution, field-of-view crops, and random rotation/scale/flip/elastic geometry.

Geometry is applied by perturbing the scan's affine and then calling the very same
``conform`` that inference uses, so training sees exactly what users' scans become.
Every draw comes from a ``numpy.random.Generator``: seeded and reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from deepdefacer.conform import (GridPlan, block_reduce, cube_affine, head_box_ras,
                                 normalise, resample)


@dataclass
class Head:
    """A training head: image, face and brain labels on its own grid, and its affine."""

    name: str
    image: np.ndarray
    face: np.ndarray
    brain: np.ndarray
    affine: np.ndarray


def rotation_matrix(angles_rad) -> np.ndarray:
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class AugmentOptions:
    """The ranges of the augmentations that a training command can widen.

    ``max_pitch_degrees``: rotation about the left-right axis (chin down / up), where
    real heads vary most (elderly people lying with the chin on the chest);
    ``max_degrees``: about the other two axes; ``gamma_log``: gamma drawn as
    exp(uniform(-gamma_log, gamma_log)).
    """

    max_degrees: float = 20.0
    max_pitch_degrees: float = 20.0
    gamma_log: float = 0.4


def random_world_transform(rng: np.random.Generator, max_degrees: float = 20.0,
                           scale_range=(0.85, 1.15), flip_lr: bool = True,
                           max_pitch_degrees: float | None = None) -> np.ndarray:
    """A random head pose in the scanner: rotation, size, left-right flip, shift."""
    pitch = max_degrees if max_pitch_degrees is None else max_pitch_degrees
    limits = np.array([pitch, max_degrees, max_degrees])
    angles = np.deg2rad(rng.uniform(-limits, limits))
    scale = np.diag(rng.uniform(*scale_range, 3) * rng.uniform(*scale_range))
    matrix = rotation_matrix(angles) @ np.cbrt(scale)
    if flip_lr and rng.random() < 0.5:
        matrix = np.diag([-1.0, 1.0, 1.0]) @ matrix
    world = np.eye(4)
    world[:3, :3] = matrix
    world[:3, 3] = rng.uniform(-15, 15, 3)
    return world


def remap_contrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random smooth intensity lookup: mimics other contrasts (T2w, PDw, FLAIR).

    Background stays dark (MRI air is dark in every contrast); tissue intensities are
    remapped through a random piecewise-linear curve, often non-monotone, so the
    network cannot rely on T1 tissue ordering.
    """
    low, high = np.percentile(image, [1, 99.5])
    x = np.clip((image - low) / max(high - low, 1e-6), 0, 1.2)
    knots = np.linspace(0, 1.2, 7)
    values = np.concatenate([[0.0], rng.uniform(0.05, 1.0, 6)])
    values[1] = min(values[1], rng.uniform(0.05, 0.4))  # keep air and dark noise dark
    return np.interp(x, knots, values).astype(np.float32)


def crop_field_of_view(image: np.ndarray, affine: np.ndarray, face: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
    """Blank a random slab, as scans cut at the nose, the chin, the neck or the crown."""
    image = image.copy()
    ijk = np.indices(image.shape[:3], sparse=True)
    world_z = sum(affine[2, axis] * ijk[axis] for axis in range(3)) + affine[2, 3]
    world_y = sum(affine[1, axis] * ijk[axis] for axis in range(3)) + affine[1, 3]
    face_z = world_z[np.broadcast_to(face > 0, image.shape)] if face.any() else np.array([0.0])
    choice = rng.integers(4)
    if choice == 0:  # cut below somewhere between the nose and below the chin
        level = rng.uniform(np.percentile(face_z, 20), np.percentile(face_z, 90) + 40)
        image[np.broadcast_to(world_z < level, image.shape)] = 0
    elif choice == 1:  # cut the crown
        top = float(world_z.max())
        image[np.broadcast_to(world_z > top - rng.uniform(10, 60), image.shape)] = 0
    elif choice == 2:  # cut the back of the head (a tight block around the face)
        level = float(world_y.min()) + rng.uniform(20, 80)
        image[np.broadcast_to(world_y < level, image.shape)] = 0
    else:  # neck only trimmed
        bottom = float(world_z.min())
        image[np.broadcast_to(world_z < bottom + rng.uniform(0, 50), image.shape)] = 0
    return image


def bias_field(shape, rng: np.random.Generator, strength: float) -> np.ndarray:
    coarse = rng.normal(0, strength, (4, 4, 4))
    field = ndimage.zoom(coarse, [n / 4 for n in shape], order=1, mode="nearest")
    return np.exp(field[: shape[0], : shape[1], : shape[2]]).astype(np.float32)


def elastic_fields(shape, rng: np.random.Generator, max_mm: float, voxel_mm: float):
    coarse = rng.normal(0, max_mm / voxel_mm / 2, (3, 6, 6, 6))
    fields = [ndimage.zoom(c, [n / 6 for n in shape], order=1, mode="nearest") for c in coarse]
    grid = np.indices(shape, dtype=np.float32)
    return [grid[axis] + fields[axis][: shape[0], : shape[1], : shape[2]] for axis in range(3)]


def anisotropic(cube: np.ndarray, rng: np.random.Generator, voxel_mm: float) -> np.ndarray:
    """Thick slices along one axis (2D acquisitions): blur, decimate, re-interpolate."""
    axis = int(rng.integers(3))
    thickness_mm = rng.uniform(voxel_mm, 3 * voxel_mm)
    factor = thickness_mm / voxel_mm
    sigma = [0.0, 0.0, 0.0]
    sigma[axis] = factor / 2.355
    blurred = ndimage.gaussian_filter(cube, sigma)
    if factor < 1.5:
        return blurred
    zoom = [1.0, 1.0, 1.0]
    zoom[axis] = 1.0 / factor
    small = ndimage.zoom(blurred, zoom, order=1)
    back = [n / s for n, s in zip(cube.shape, small.shape)]
    return ndimage.zoom(small, back, order=1)[: cube.shape[0], : cube.shape[1], : cube.shape[2]]


def sample(head: Head, plan: GridPlan, rng: np.random.Generator, augment: bool = True,
           options: AugmentOptions = AugmentOptions()):
    """One training cube and its (face, brain) targets on the canonical grid."""
    image, affine = head.image, head.affine
    if augment:
        if rng.random() < 0.6:
            image = remap_contrast(image, rng)
        if rng.random() < 0.4:
            image = crop_field_of_view(image, affine, head.face, rng)
        affine = random_world_transform(rng, options.max_degrees,
                                        max_pitch_degrees=options.max_pitch_degrees) @ affine
    box_min, box_max = head_box_ras(image, affine)
    target = cube_affine(box_min, box_max, plan)
    reduced, reduced_affine = block_reduce(image, affine, plan.voxel_mm)
    cube = resample(reduced, reduced_affine, target, plan.shape, order=1, cval=float(reduced.min()))
    face = resample(head.face, affine, target, plan.shape, order=1)
    brain = resample(head.brain, affine, target, plan.shape, order=1)
    if augment:
        if rng.random() < 0.4:
            coords = elastic_fields(plan.shape, rng, max_mm=6.0, voxel_mm=plan.voxel_mm)
            cube, face, brain = (ndimage.map_coordinates(v, coords, order=1) for v in (cube, face, brain))
        cube = normalise(cube)
        if rng.random() < 0.5:
            cube = cube * bias_field(plan.shape, rng, strength=rng.uniform(0.1, 0.4))
        if rng.random() < 0.3:
            cube = anisotropic(cube, rng, plan.voxel_mm)
        if rng.random() < 0.5:
            cube = np.clip(cube, 0, None) ** np.exp(rng.uniform(-options.gamma_log, options.gamma_log))
        if rng.random() < 0.5:
            cube = np.abs(cube + rng.normal(0, rng.uniform(0.005, 0.08), cube.shape))
        if rng.random() < 0.3:  # 8-bit storage
            scale = 255.0 / max(float(cube.max()), 1e-6)
            cube = np.round(cube * scale) / scale
    cube = normalise(cube.astype(np.float32))
    targets = np.stack([face, brain], axis=-1).clip(0, 1).astype(np.float32)
    return cube, targets
