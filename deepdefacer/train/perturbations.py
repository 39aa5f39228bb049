"""The perturbations of training heads, as functions of arrays, affines and a generator.

``deepdefacer.train.augment`` wraps each in a transform with its probability and parameters;
the defaults here are the ranges the shipped models were trained with.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def rotation_matrix(angles_rad) -> np.ndarray:
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_world_transform(rng: np.random.Generator, max_degrees: float = 20.0,
                           scale_range=(0.85, 1.15), flip_lr: bool = True,
                           max_pitch_degrees: float | None = None, flip_probability: float = 0.5,
                           max_shift_mm: float = 15.0) -> np.ndarray:
    """A random head pose in the scanner: rotation, size, left-right flip, shift (RAS, 4x4)."""
    pitch = max_degrees if max_pitch_degrees is None else max_pitch_degrees
    limits = np.array([pitch, max_degrees, max_degrees])
    angles = np.deg2rad(rng.uniform(-limits, limits))
    scale = np.diag(rng.uniform(*scale_range, 3) * rng.uniform(*scale_range))
    matrix = rotation_matrix(angles) @ np.cbrt(scale)
    if flip_lr and rng.random() < flip_probability:
        matrix = np.diag([-1.0, 1.0, 1.0]) @ matrix
    world = np.eye(4)
    world[:3, :3] = matrix
    world[:3, 3] = rng.uniform(-max_shift_mm, max_shift_mm, 3)
    return world


def remap_contrast(image: np.ndarray, rng: np.random.Generator, knots: int = 7,
                   level_range=(0.05, 1.0), dark_range=(0.05, 0.4)) -> np.ndarray:
    """Random smooth intensity lookup: mimics other contrasts (T2w, PDw, FLAIR).

    Background stays dark (MRI air is dark in every contrast); tissue intensities are
    remapped through a random piecewise-linear curve, often non-monotone, so the
    network cannot rely on T1 tissue ordering.
    """
    low, high = np.percentile(image, [1, 99.5])
    x = np.clip((image - low) / max(high - low, 1e-6), 0, 1.2)
    positions = np.linspace(0, 1.2, knots)
    values = np.concatenate([[0.0], rng.uniform(*level_range, knots - 1)])
    values[1] = min(values[1], rng.uniform(*dark_range))  # keep air and dark noise dark
    return np.interp(x, positions, values).astype(np.float32)


def crop_field_of_view(image: np.ndarray, affine: np.ndarray, face: np.ndarray,
                       rng: np.random.Generator, below_face_mm: float = 40.0,
                       crown_mm=(10.0, 60.0), back_mm=(20.0, 80.0), neck_mm=(0.0, 50.0)) -> np.ndarray:
    """Blank a random slab, as scans cut at the nose, the chin, the neck or the crown."""
    image = image.copy()
    ijk = np.indices(image.shape[:3], sparse=True)
    world_z = sum(affine[2, axis] * ijk[axis] for axis in range(3)) + affine[2, 3]
    world_y = sum(affine[1, axis] * ijk[axis] for axis in range(3)) + affine[1, 3]
    face_z = world_z[np.broadcast_to(face > 0, image.shape)] if face.any() else np.array([0.0])
    choice = rng.integers(4)
    if choice == 0:  # cut below somewhere between the nose and below the chin
        level = rng.uniform(np.percentile(face_z, 20), np.percentile(face_z, 90) + below_face_mm)
        image[np.broadcast_to(world_z < level, image.shape)] = 0
    elif choice == 1:  # cut the crown
        top = float(world_z.max())
        image[np.broadcast_to(world_z > top - rng.uniform(*crown_mm), image.shape)] = 0
    elif choice == 2:  # cut the back of the head (a tight block around the face)
        level = float(world_y.min()) + rng.uniform(*back_mm)
        image[np.broadcast_to(world_y < level, image.shape)] = 0
    else:  # neck only trimmed
        bottom = float(world_z.min())
        image[np.broadcast_to(world_z < bottom + rng.uniform(*neck_mm), image.shape)] = 0
    return image


def bias_field(shape, rng: np.random.Generator, strength: float, control_points: int = 4) -> np.ndarray:
    coarse = rng.normal(0, strength, (control_points,) * 3)
    field = ndimage.zoom(coarse, [n / control_points for n in shape], order=1, mode="nearest")
    return np.exp(field[: shape[0], : shape[1], : shape[2]]).astype(np.float32)


def elastic_fields(shape, rng: np.random.Generator, max_mm: float, voxel_mm: float,
                   control_points: int = 6):
    coarse = rng.normal(0, max_mm / voxel_mm / 2, (3,) + (control_points,) * 3)
    fields_ = [ndimage.zoom(c, [n / control_points for n in shape], order=1, mode="nearest")
               for c in coarse]
    grid = np.indices(shape, dtype=np.float32)
    return [grid[axis] + fields_[axis][: shape[0], : shape[1], : shape[2]] for axis in range(3)]


def anisotropic(cube: np.ndarray, rng: np.random.Generator, voxel_mm: float,
                thickness_range=(1.0, 3.0)) -> np.ndarray:
    """Thick slices along one axis (2D acquisitions): blur, decimate, re-interpolate.

    ``thickness_range``: the slice thickness, in the cube's voxels."""
    axis = int(rng.integers(3))
    thickness_mm = rng.uniform(thickness_range[0] * voxel_mm, thickness_range[1] * voxel_mm)
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
