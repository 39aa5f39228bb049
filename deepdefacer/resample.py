"""Resampling between grids through their affines: block averaging before a coarse grid (the
cheapest anti-aliasing), then separable trilinear interpolation when the axes of both grids are
parallel (any of the 48 axis orders), scipy's affine_transform otherwise. Pure functions."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def block_reduce(data: np.ndarray, affine: np.ndarray, target_mm: float):
    """Average whole blocks of voxels so each is at most about ``target_mm`` / 1.5.

    Trilinear sampling of a 1 mm scan onto 4 mm voxels aliases; block averaging
    first is the cheapest anti-aliasing (no full-resolution filtering).
    """
    factors = np.maximum(1, np.floor(target_mm / (1.5 * voxel_sizes(affine)))).astype(int)
    if np.all(factors == 1):
        return data, affine
    if data.flags.f_contiguous and not data.flags.c_contiguous:
        # nibabel's arrays are Fortran-ordered: reduce the transposed view (C-ordered, so the
        # block reshape below needs no copy of the whole scan) and transpose the small result back.
        flipped = np.eye(4)[[2, 1, 0, 3]]
        reduced, reduced_affine = block_reduce(data.T, np.asarray(affine) @ flipped, target_mm)
        return reduced.T, reduced_affine @ flipped
    trimmed = [(n // f) * f for n, f in zip(data.shape, factors)]
    reduced = data[: trimmed[0], : trimmed[1], : trimmed[2]]
    # One axis at a time, the outermost first (it shrinks the array most cheaply): the sum of a
    # block's f slices, each a strided view. 3-4x faster than a mean over the 6D block reshape.
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        shape = reduced.shape[:axis] + (reduced.shape[axis] // f, f) + reduced.shape[axis + 1:]
        blocks = reduced.reshape(shape)
        before = (slice(None),) * (axis + 1)
        total = blocks[before + (0,)].astype(np.float32, copy=True)
        for i in range(1, f):
            total += blocks[before + (i,)]
        reduced = total
    reduced = (reduced / np.float32(np.prod(factors))).astype(np.float32, copy=False)
    scale = np.diag(list(factors) + [1]).astype(float)
    scale[:3, 3] = (factors - 1) / 2.0
    return reduced, np.asarray(affine) @ scale


def _linear_weights(n_out: int, n_in: int, scale: float, offset: float) -> np.ndarray:
    """Matrix (n_out x n_in) of 1D linear-interpolation weights, zero outside the input."""
    coords = scale * np.arange(n_out) + offset
    weights = np.zeros((n_out, n_in), np.float32)
    lower = np.floor(coords).astype(int)
    frac = (coords - lower).astype(np.float32)
    rows = np.arange(n_out)
    for index, weight in ((lower, 1 - frac), (lower + 1, frac)):
        valid = (index >= 0) & (index < n_in)
        weights[rows[valid], index[valid]] += weight[valid]
    # Points beyond the outer voxel centres are outside the image (constant mode).
    outside = (coords < -1e-6) | (coords > n_in - 1 + 1e-6)
    weights[outside] = 0
    return weights


def _axis_permutation(matrix: np.ndarray):
    """Input axis fed by each output axis, if the mapping is a scaled permutation.

    ``matrix[i, j]`` is how input coordinate i moves with output coordinate j.
    """
    nonzero = np.abs(matrix) > 1e-6 * np.abs(matrix).max()
    if not (np.all(nonzero.sum(axis=1) == 1) and np.all(nonzero.sum(axis=0) == 1)):
        return None
    return [int(np.argmax(nonzero[:, j])) for j in range(3)]


def _separable(source: np.ndarray, w0: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """``source`` (C-contiguous) with each axis multiplied by its weight matrix.

    Three matrix products on contiguous arrays (no transposed copies of big arrays): axis 0
    on (m0, m1*m2), axis 2 as a right product, axis 1 batched over axis 0.
    """
    m0, m1, m2 = source.shape
    out = (w0 @ source.reshape(m0, m1 * m2)).reshape(-1, m1, m2)
    return np.ascontiguousarray(np.matmul(w1, out @ w2.T), dtype=np.float32)


def resample(data: np.ndarray, affine_in: np.ndarray, affine_out: np.ndarray, shape_out,
             order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Sample ``data`` (grid ``affine_in``) on the grid ``affine_out`` of ``shape_out``.

    Trilinear. When the two grids differ only by axis order, flips and scaling (any
    non-oblique scan against the RAS cube) it runs as three small matrix products,
    which is 50-100x faster than a general affine transform on 10 M voxel scans.
    """
    shape_out = tuple(int(n) for n in shape_out)
    mapping = np.linalg.inv(affine_in) @ affine_out
    data = np.asarray(data, dtype=np.float32)
    permutation = _axis_permutation(mapping[:3, :3]) if order == 1 else None
    if permutation is not None:
        source = np.transpose(data - cval if cval else data, permutation)
        w0, w1, w2 = (_linear_weights(shape_out[axis], source.shape[axis],
                                      mapping[permutation[axis], axis],
                                      mapping[permutation[axis], 3]) for axis in range(3))
        weights = (w0, w1, w2)
        memory = np.argsort([-abs(stride) for stride in source.strides], kind="stable")
        in_memory = np.transpose(source, memory)
        if in_memory.flags.c_contiguous and source.size > np.prod(shape_out):
            # A big source stored in another axis order (nibabel's Fortran order, a transposed
            # scan): run the products in its memory order and transpose the smaller output instead.
            out = _separable(in_memory, *(weights[axis] for axis in memory))
            out = np.ascontiguousarray(np.transpose(out, np.argsort(memory)), dtype=np.float32)
        else:
            out = _separable(np.ascontiguousarray(source), *weights)
        return out + cval if cval else out
    return ndimage.affine_transform(
        data, mapping[:3, :3], offset=mapping[:3, 3],
        output_shape=shape_out, order=order, mode="constant",
        cval=cval, prefilter=False, output=np.float32,
    )
