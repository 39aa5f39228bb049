"""Refacing: the voxels a face mask removes take an average face instead of the air's value.

Defaced holes hurt what comes after (registration, skull stripping, segmentation tools built on
heads with faces); Schwarz et al. 2021 (NeuroImage 231:117845) found that refacing changes brain
measures least. The face put in is pydeface's average head (MIT; nobody's face), shipped at ~1 mm
(``deepdefacer.train.make_reface_template``), placed by the atlas guard's own registration of the
scan (``deepdefacer.atlas``: it lies in the atlas's world).

Nothing of the participant's face goes into the new one. Every value written inside the mask is
made from the template and from voxels outside the mask only:

* **contrast**: the template's intensity is mapped to the scan's so that, in a shell of
  ``SHELL_MM`` around the mask and outside it, the template's intensities take the scan's
  distribution there (quantile matching), so a T2w gets its own face intensities and any scale
  is matched;
* **edge**: over the mask's first ``BLEND_MM`` the face fades in from a smooth fill of the scan
  around the mask (a normalised Gaussian of the voxels outside it), so no seam is left.

Outside the mask every stored value is the input's, bit for bit (``apply``).
"""

from __future__ import annotations

from importlib import resources

import numpy as np
from scipy import ndimage

from deepdefacer.errors import ModelLoadError
from deepdefacer.apply import stored_values

TEMPLATE_NAME = "reface_pydeface_1mm.npz"
SHELL_MM = 12.0  # where the contrast table is learned: this far outside the mask
BLEND_MM = 4.0  # the new face fades in over this depth inside the mask
FILL_SIGMA_MM = 3.0  # smoothing of the scan's surroundings that the face fades in from
BINS = 64  # quantiles matched between the template and the scan around the mask

_TEMPLATE: dict = {}


def load_template() -> dict:
    """The shipped face (uint8 on its grid, as float32) and its affine, read once."""
    if not _TEMPLATE:
        with resources.as_file(resources.files("deepdefacer.models") / TEMPLATE_NAME) as path:
            with np.load(path) as z:
                _TEMPLATE.update(head=z["head"].astype(np.float32), affine=z["affine"].astype(float))
    return _TEMPLATE


def refaced_raw(volume, raw: np.ndarray, mask: np.ndarray, scanner_to_atlas: np.ndarray) -> np.ndarray:
    """The stored values with the masked voxels refaced (``raw``: the defaced stored values,
    which already hold the input outside the mask)."""
    mask = np.asarray(mask, bool).reshape(raw.shape)
    if not mask.any():
        return raw
    intensities = refaced_intensities(volume.data, volume.affine, mask, scanner_to_atlas)
    out = raw.copy(order="K")
    out[mask] = stored_values(volume.img, raw.dtype, intensities)
    return out


def refaced_intensities(data: np.ndarray, affine: np.ndarray, mask: np.ndarray,
                        scanner_to_atlas: np.ndarray) -> np.ndarray:
    """The new face's intensities, one for each voxel of ``mask`` (in ``data[mask]`` order).

    ``data`` inside the mask is never read: the values depend on the template, the fit and the
    voxels outside the mask only."""
    voxel_mm = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    pad = np.ceil(max(SHELL_MM, 3 * FILL_SIGMA_MM) / voxel_mm).astype(int) + 1
    where = np.argwhere(mask)
    low = np.maximum(where.min(axis=0) - pad, 0)
    high = np.minimum(where.max(axis=0) + 1 + pad, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    inside = mask[box]
    outside = ~inside
    around = np.where(outside, data[box], 0.0).astype(np.float32)  # the mask's voxels zeroed

    face = template_on_grid(affine, low, inside.shape, scanner_to_atlas)
    distance_out = ndimage.distance_transform_edt(outside, sampling=voxel_mm)
    shell = outside & (distance_out <= SHELL_MM)
    mapped = contrast_table(face[shell], around[shell])(face[inside])

    sigma = FILL_SIGMA_MM / voxel_mm
    weight = ndimage.gaussian_filter(outside.astype(np.float32), sigma)
    fill = ndimage.gaussian_filter(around, sigma) / np.maximum(weight, 1e-6)
    fill = np.where(weight > 1e-3, fill, np.float32(np.median(around[shell]) if shell.any() else 0.0))
    depth = ndimage.distance_transform_edt(inside, sampling=voxel_mm)[inside]
    blend = np.clip(depth / BLEND_MM, 0.0, 1.0).astype(np.float32)
    values = blend * mapped + (1 - blend) * fill[inside]
    # In the order of data[mask]: the box's masked voxels are those voxels, in the same C order.
    return values.astype(np.float32)


def template_on_grid(affine: np.ndarray, low, shape, scanner_to_atlas: np.ndarray) -> np.ndarray:
    """The template's intensity on a block of the scan's grid (voxel ``low`` onwards), trilinear;
    0 (air) where the template's crop does not reach."""
    template = load_template()
    voxel_to_template = (np.linalg.inv(template["affine"]) @ np.asarray(scanner_to_atlas, float)
                         @ np.asarray(affine, float))
    offset = voxel_to_template[:3, :3] @ np.asarray(low, float) + voxel_to_template[:3, 3]
    return ndimage.affine_transform(template["head"], voxel_to_template[:3, :3], offset,
                                    output_shape=tuple(int(n) for n in shape), order=1,
                                    mode="constant", cval=0.0)


def contrast_table(template_values: np.ndarray, scan_values: np.ndarray):
    """A function from template intensity to scan intensity that gives the template, around the
    mask, the scan's distribution of intensities there: each template quantile maps to the same
    quantile of the scan (``BINS`` + 1 of them, linearly interpolated; monotone).

    Quantiles, not a voxel-by-voxel fit: the fit places the face to a few millimetres, and skin
    and fat are that thin, so a table of "what the scan holds where the template is bright"
    regresses to grey; the quantiles of the same region do not depend on the fine alignment."""
    if template_values.size < BINS or scan_values.size < BINS:
        level = float(np.median(scan_values)) if scan_values.size else 0.0
        return lambda values: np.full(values.shape, level, np.float32)
    levels = np.linspace(0, 1, BINS + 1)
    template_q = np.quantile(template_values, levels)
    scan_q = np.quantile(scan_values, levels)
    # np.interp needs increasing x: tied template quantiles (the air's many zeros) keep the first.
    keep = np.concatenate([[True], np.diff(template_q) > 0])
    template_q, scan_q = template_q[keep], scan_q[keep]
    return lambda values: np.interp(values, template_q, scan_q).astype(np.float32)


def require_template() -> None:
    """Read the face now, so that a run that cannot reface stops before any scan."""
    try:
        load_template()
    except OSError as exc:
        raise ModelLoadError(f"--mode reface cannot read its average face: {exc}") from exc
