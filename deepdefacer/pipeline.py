"""deface(img) -> (defaced_img, mask_img): the whole method on one screen.

conform -> predict -> back to the input grid -> clean up -> guard the brain -> apply.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from deepdefacer.conform import (background_intensity, conform, head_box_ras, native_box,
                                 plausible_affine, to_native, voxel_sizes)
from deepdefacer.errors import InputError
from deepdefacer.io import orientation_problem

log = logging.getLogger("deepdefacer")


def deface(img, defacer=None):
    """Remove the face from a nibabel image.

    Returns the defaced image (the input's header, dtype, scaling and affine; voxels
    outside the mask bit-identical) and the mask (uint8, 1 = removed) on the input grid.
    """
    defaced, mask, _ = deface_with_details(img, defacer)
    return defaced, mask


def deface_with_details(img, defacer=None):
    """``deface()``, plus what the provenance records about this image.

    The details are ``{"AtlasGuard": {"Used", "Reason", "FaceOverlapML", "Start"}}`` with the atlas
    guard on (whether its registration was trusted for this scan), else ``{}``; for a scan whose
    header's voxel sizes are implausible also ``"HeaderVoxelSizes"`` (``header_voxel_sizes``).
    """
    if defacer is None:
        from deepdefacer.model import default_defacer

        defacer = default_defacer()
    raw, data = image_data(img)
    name = img.get_filename() or "<image>"
    box = head_box_ras(data, img.affine)
    affine, scale = plausible_affine(data, img.affine, box)
    details = {}
    affines = [affine]
    if scale != 1.0:
        log.warning("%s: the head's size is implausible with the header's voxel sizes; "
                    "assuming they are %.2fx what the header says", name, scale)
        if getattr(defacer, "atlas_guard", False):
            fitted, details["HeaderVoxelSizes"] = header_voxel_sizes(data, img.affine, affine,
                                                                     defacer.plan, name)
            if fitted is not None:
                # The fit's shape at two sizes: the head-size rule's and the fit's own.
                affines = [scaled_about_centre(fitted, data.shape, voxel_sizes(affine)), fitted]
                details["HeaderVoxelSizes"]["HeadSizeRule"] = np.round(voxel_sizes(affines[0]), 3).tolist()
    # Each size has its own guard registration: two independent atlas brains, either of which
    # keeps a voxel (one fit reused at both sizes lost a brain voxel of a 64^3 block: stop 18).
    predictions = [predict(data, a, defacer, name=name, box=box if scale == 1.0 else None)
                   for a in affines]
    if scale == 1.0:
        predictions[0] = crown_from_atlas(predictions[0], data, affine, box, defacer, name, details)
    masks = [face_mask(p, defacer.face_threshold, defacer.brain_threshold, defacer.brain_margin_mm,
                       defacer.face_dilate_mm, defacer.growth_margin_mm, defacer.edge_mm)
             for p in predictions]
    mask = masks[0] if len(masks) == 1 else union_of_masks(masks, predictions, defacer)
    # The provenance reports a guard that was not used, if any (flagged in QC), else the last.
    atlas = next((p.atlas for p in predictions if p.atlas is not None and not p.atlas.used),
                 predictions[-1].atlas)
    if atlas is not None:
        overlap = atlas.face_overlap_ml
        details["AtlasGuard"] = {"Used": atlas.used, "Reason": atlas.reason,
                                 "FaceOverlapML": None if overlap is None else round(overlap, 1),
                                 "Start": atlas.start}
    return apply_mask(img, raw, mask, background_intensity(data)), mask_image(img, mask), details


# A head whose box reaches within this of the top of the field of view may be cut there, and its
# crown is then placed from the atlas fit when that puts it at least CROWN_MIN_MM higher.
CROWN_EDGE_MM = 4.0
CROWN_MIN_MM = 8.0


def crown_from_atlas(prediction, data, affine, box, defacer, name: str, details: dict):
    """The prediction again with the cube hung from the atlas's crown, for a scan cut at the top.

    ``conform`` hangs the cube from the top of the head; where the field of view cuts the crown
    that is the cut, the face sits higher in the cube than any training head's, and eyes were
    kept (robustness benchmark, ``crop_top``). The guard's affine fit places the whole average
    head, so its crown is where this head's would be (within ~2 mm on uncut validation scans,
    2-7 mm above on cut ones: docs/model.md, stop 18). The atlas brain is carried onto the new
    cube through the same fit; only the network runs again.
    """
    from deepdefacer.conform import world_extent

    atlas = prediction.atlas
    if atlas is None or not atlas.used or atlas.world is None:
        return prediction
    box_top = float(box[1][2])
    if box_top < float(world_extent(affine, data.shape)[1][2]) - CROWN_EDGE_MM:
        return prediction  # the head does not reach the top of the field of view
    from deepdefacer.atlas import head_top_mm

    top = head_top_mm(atlas.world)
    if top - box_top < CROWN_MIN_MM:
        return prediction
    log.warning("%s: the field of view cuts the top of the head; the atlas fit puts the crown "
                "%.0f mm higher", name, top - box_top)
    details["CrownFromAtlasMM"] = round(top - box_top, 1)
    raised = (np.asarray(box[0], float), np.array(box[1], dtype=float))
    raised[1][2] = top
    raised_prediction = predict(data, affine, defacer, name=name, box=raised, atlas_world=atlas.world)
    if raised_prediction.atlas is not None:
        raised_prediction.atlas.start = atlas.start  # the fit's own start, for the provenance
    return raised_prediction


def header_voxel_sizes(data, header_affine, assumed_affine, plan, name: str):
    """The atlas's fit of an implausible header's voxel sizes, and what provenance records of it.

    Returns ``(affine or None, record)``. The head-size rule (``conform.plausible_affine``) is
    a population guess of the size that keeps the header's shape; the fit measures this head's
    shape and size (docs/model.md, stop 18). ``deface`` takes the fit's shape at two sizes, the
    rule's and the fit's: the size is the less certain part (the atlas is an average adult head),
    and a 64^3 block lost its mouth at the one size and brain at the other. It removes what either
    calls face and keeps what either guards.
    """
    from deepdefacer.atlas import fitted_voxel_sizes

    fitted, zooms, reason = fitted_voxel_sizes(data, assumed_affine, plan)
    record = {"Stored": np.round(voxel_sizes(header_affine), 3).tolist(),
              "HeadSizeRule": np.round(voxel_sizes(assumed_affine), 3).tolist(),
              "AtlasFit": None if zooms is None else np.round(zooms, 3).tolist(),
              "AtlasFitUsed": fitted is not None}
    if fitted is None:
        record["Reason"] = reason
        log.warning("%s: the atlas fit of the voxel sizes is not used (%s)", name, reason)
    else:
        log.warning("%s: the atlas fit gives voxel sizes of %s mm; the face is removed under both "
                    "size estimates", name, " x ".join(f"{z:.2f}" for z in zooms))
    return fitted, record


def scaled_about_centre(affine: np.ndarray, shape, like_zooms) -> np.ndarray:
    """``affine`` with its voxel sizes scaled alike so that a voxel has the volume of one of
    ``like_zooms``; the axes' directions and the volume's centre are kept."""
    factor = float(np.cbrt(np.prod(like_zooms) / np.prod(voxel_sizes(affine))))
    centre = (np.array(shape[:3], float) - 1) / 2
    out = np.array(affine, dtype=float)
    out[:3, :3] *= factor
    out[:3, 3] = affine[:3, :3] @ centre + affine[:3, 3] - out[:3, :3] @ centre
    return out


def union_of_masks(masks, predictions, defacer) -> np.ndarray:
    """What any mask removes, less what any prediction's brain guard keeps.

    For a scan whose true size is uncertain (an implausible header), each size estimate
    gives its own prediction and mask. A voxel is removed when any mask removes it, and kept
    when any prediction calls it brain or puts it within the brain margin of its brain.
    """
    mask = np.logical_or.reduce(masks)
    if not mask.any():
        return mask
    where = np.argwhere(mask)
    box = (where.min(axis=0), where.max(axis=0) + 1)
    margin = min(defacer.brain_margin_mm, defacer.brain_margin_mm if defacer.growth_margin_mm is None
                 else defacer.growth_margin_mm)
    for prediction in predictions:
        mask &= guard_allows(prediction, defacer.brain_threshold, margin, defacer.edge_mm, box)
    return largest_region_in_box(mask, box)


@dataclass
class Prediction:
    """The model's face and brain probabilities on the canonical cube, and both grids."""

    face: np.ndarray
    brain: np.ndarray
    cube_affine: np.ndarray
    voxel_mm: float
    native_affine: np.ndarray
    native_shape: tuple
    atlas: object = None  # deepdefacer.atlas.AtlasResult when the atlas guard ran


def predict(data: np.ndarray, affine: np.ndarray, defacer, name: str = "<image>",
            box=None, atlas_world=None) -> Prediction:
    """Conform the scan and run the model (the only step that needs TensorFlow).

    ``box``: the head's RAS box on ``affine`` (``head_box_ras``) when the caller has it.

    With the defacer's ``atlas_guard`` the brain is also the atlas brain registered to the
    scan, where that registration can be trusted (``deepdefacer.atlas``); ``atlas_world``:
    a fit of this scan made already (``AtlasResult.world``), reused instead of registering.
    """
    conformed = conform(data, affine, defacer.plan, box)
    face_cube, brain_cube = defacer.predict(conformed.array)
    prediction = Prediction(face_cube, brain_cube, conformed.affine_ras, defacer.plan.voxel_mm,
                            affine, tuple(data.shape))
    if getattr(defacer, "atlas_guard", False):
        from deepdefacer.atlas import guard_prediction

        prediction, result = guard_prediction(prediction, data, affine, defacer.plan, name,
                                              world=atlas_world)
        prediction.atlas = result
    return prediction


def face_mask(pred: Prediction, face_threshold: float, brain_threshold: float,
              brain_margin_mm: float, face_dilate_mm: float = 0.0,
              growth_margin_mm: float | None = None, edge_mm: float = 0.0) -> np.ndarray:
    """The mask of removed voxels on the native grid (bool).

    Face = the largest connected region of face probability >= ``face_threshold``, kept
    only farther than ``brain_margin_mm`` from the predicted brain; plus that region grown
    by ``face_dilate_mm``, kept only farther than ``growth_margin_mm`` (default: the brain
    margin) from the brain, so growth fills in the model's uncertain edges in front of and
    below the face but not towards the brain. Every field is mapped to the native grid
    trilinearly (smooth edges at the input's own resolution), only inside the face's box.
    ``edge_mm`` > 0 handles edges: every cube field is held at its edge value for
    ``edge_mm`` beyond the cube, and where the scan's field of view cuts through the face
    the mask is carried out to the cut over its last ``edge_mm`` (``continue_to_edges``),
    under the same brain margin as growth.
    """
    if growth_margin_mm is None:
        growth_margin_mm = brain_margin_mm
    face_cube = largest_region(pred.face, face_threshold)
    region = face_cube >= face_threshold
    grown = None
    if face_dilate_mm > 0 and region.any():
        # Positive within face_dilate_mm of the face region: a distance field, so the
        # grown edge is smooth on fine native grids too.
        grown = (face_dilate_mm - ndimage.distance_transform_edt(~region, sampling=pred.voxel_mm)
                 ).astype(np.float32)
        region = grown >= -pred.voxel_mm
    brain_mm = brain_distance(pred.brain, brain_threshold, pred.voxel_mm)
    (face_cube, region, brain_mm, brain, grown), cube_affine = held_beyond_cube(
        (face_cube, region, brain_mm, pred.brain, grown), pred, edge_mm)
    box = native_box(region | (face_cube >= face_threshold / 2), cube_affine,
                     pred.native_affine, pred.native_shape)

    def native(cube):
        return to_native(cube, cube_affine, pred.native_affine, pred.native_shape, box)

    # Distance (mm) to the predicted brain; 0 outside the box and the cube (never removed).
    brain_mm = native(brain_mm)
    # The interpolated brain probability also keeps what it calls brain on this grid (a cube
    # voxel is 5 mm: the distance alone can miss a thin fold).
    not_brain = native(brain) < brain_threshold
    mask = (native(face_cube) >= face_threshold) & (brain_mm > brain_margin_mm)
    if grown is not None:
        mask |= (native(grown) > 0) & (brain_mm > growth_margin_mm)
    mask &= not_brain
    if edge_mm > 0:
        mask = continue_to_edges(mask, (brain_mm > growth_margin_mm) & not_brain,
                                 voxel_sizes(pred.native_affine), edge_mm)
    return largest_region_in_box(mask, box)


def held_beyond_cube(fields, pred: Prediction, edge_mm: float):
    """``fields`` (cube arrays, or None) each held at its edge value for ``edge_mm`` beyond the
    cube, and the padded cube's affine.

    The cube's outermost voxel centres lie half a voxel inside its faces, and a head filling
    a 256 mm field of view reaches past them (NiChart Subj1_T1 kept the front 4 mm of its nose).
    """
    if edge_mm <= 0:
        return tuple(fields), pred.cube_affine
    pad = int(np.ceil(edge_mm / pred.voxel_mm))
    cube_affine = np.array(pred.cube_affine, dtype=float)
    cube_affine[:3, 3] -= cube_affine[:3, :3] @ np.full(3, pad)
    return tuple(None if a is None else np.pad(a, pad, mode="edge") for a in fields), cube_affine


def guard_allows(pred: Prediction, brain_threshold: float, margin_mm: float, edge_mm: float,
                 box) -> np.ndarray:
    """Where the brain guard of ``pred`` lets a voxel of the native grid go (False outside ``box``)."""
    brain_mm = brain_distance(pred.brain, brain_threshold, pred.voxel_mm)
    (brain_mm, brain), cube_affine = held_beyond_cube((brain_mm, pred.brain), pred, edge_mm)

    def native(cube):
        return to_native(cube, cube_affine, pred.native_affine, pred.native_shape, box)

    return (native(brain_mm) > margin_mm) & (native(brain) < brain_threshold)


def continue_to_edges(mask: np.ndarray, allowed: np.ndarray, voxel_mm, edge_mm: float) -> np.ndarray:
    """Carry the mask out to each side of the field of view over its last ``edge_mm``.

    A scan cut through the face (at the nose, the mouth or the chin) ends in an
    artificial edge; the network's face probability fades over the last ~10 mm before
    it, so the nose or mouth lying in the outermost slices was kept (the 6 mm IXI002
    PDw/T2w, NiChart Subj1_T1). Each of the outermost slices of a side takes the mask of
    the first slice inside that band, where ``allowed`` (the brain guard) permits.
    """
    out = mask.copy()
    for axis, size in enumerate(mask.shape):
        band = int(np.ceil(edge_mm / float(voxel_mm[axis])))
        if band < 1 or 2 * band >= size:
            continue
        for edge, source in ((slice(0, band), band), (slice(size - band, size), size - band - 1)):
            where = [slice(None)] * 3
            where[axis] = edge
            where = tuple(where)
            inner = np.take(mask, [source], axis=axis)
            out[where] |= inner & allowed[where]
    return out


def image_data(img) -> tuple[np.ndarray, np.ndarray]:
    """The stored values and the scaled float32 3D array (read once), or an InputError."""
    name = img.get_filename() or "<image>"
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(name, f"expected a 3D image, got {len(img.shape)}D with shape {img.shape}")
    if min(shape) < 4:
        raise InputError(name, f"image is too thin to be a head scan (shape {img.shape})")
    problem = orientation_problem(img)
    if problem:
        raise InputError(name, problem)
    if not np.all(np.isfinite(img.affine)) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-9:
        raise InputError(name, "the image affine is not a valid voxel-to-world transform")

    try:
        raw = raw_array(img).reshape(shape)
    except Exception as exc:  # truncated or corrupt files surface here
        raise InputError(name, f"cannot read the image data ({exc})") from exc
    slope, inter = scaling(img)
    data = raw.astype(np.float32)
    if slope != 1.0 or inter != 0.0:
        data = data * np.float32(slope) + np.float32(inter)
    if not np.all(np.isfinite(data)):
        raise InputError(name, "image contains NaN or infinite values")
    if float(data.max()) <= float(data.min()):
        raise InputError(name, "image is empty (all voxels have the same value)")
    return raw, data


def largest_region(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Zero the probability outside the largest connected region above threshold."""
    mask = prob >= threshold
    labels, count = ndimage.label(mask)
    if count <= 1:
        return prob if count == 1 else np.zeros_like(prob)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    keep = labels == (1 + int(np.argmax(sizes)))
    # Keep the soft edge around the kept region, so the trilinear map back stays smooth.
    keep = ndimage.binary_dilation(keep, iterations=1)
    return np.where(keep, prob, 0.0).astype(np.float32)


def brain_distance(brain_prob: np.ndarray, threshold: float, voxel_mm: float) -> np.ndarray:
    """Distance (mm) from each cube voxel to the predicted brain (0 inside it).

    A distance field, unlike a binary mask, interpolates smoothly onto fine native
    grids, so a margin holds at the input's own resolution.
    """
    brain = brain_prob >= threshold
    if not brain.any():
        return np.full(brain_prob.shape, 1e3, np.float32)
    return ndimage.distance_transform_edt(~brain, sampling=voxel_mm).astype(np.float32)


def largest_region_in_box(mask: np.ndarray, box) -> np.ndarray:
    lo, hi = box
    if np.any(hi <= lo) or not mask.any():
        return mask
    sub = mask[lo[0]: hi[0], lo[1]: hi[1], lo[2]: hi[2]]
    labels, count = ndimage.label(sub)
    if count > 1:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        sub = labels == (1 + int(np.argmax(sizes[1:])))
        out = np.zeros_like(mask)
        out[lo[0]: hi[0], lo[1]: hi[1], lo[2]: hi[2]] = sub
        return out
    return mask


def scaling(img) -> tuple[float, float]:
    """(slope, intercept) that turn stored values into intensities."""
    slope, inter = (img.dataobj.slope, img.dataobj.inter) if hasattr(img.dataobj, "slope") else (1.0, 0.0)
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return slope, inter


def raw_value(img, dtype, intensity: float = 0.0):
    """The stored (unscaled) value that reads back as ``intensity``, or closest to it."""
    slope, inter = scaling(img)
    value = (intensity - inter) / slope + 0.0  # + 0.0: no negative zero
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return dtype.type(np.clip(np.round(value), info.min, info.max))
    return dtype.type(value)


def raw_array(img) -> np.ndarray:
    """The stored values exactly as in the file (no scaling applied)."""
    proxy = img.dataobj
    if hasattr(proxy, "get_unscaled"):
        return np.asarray(proxy.get_unscaled())
    return np.asarray(proxy)


def apply_mask(img, raw: np.ndarray, mask: np.ndarray, fill_intensity: float = 0.0):
    """Set masked voxels to ``fill_intensity`` (``background_intensity``) in the stored values;
    keep everything else."""
    raw = raw.copy(order="K")  # nibabel's Fortran order kept: no transposing copy, and saved as stored
    raw[mask] = raw_value(img, raw.dtype, fill_intensity)
    raw = raw.reshape(img.shape)
    header = img.header.copy()
    out = img.__class__(raw, img.affine, header)
    # nibabel recomputes scaling for array images; pin the input's so raw values stay raw.
    if hasattr(img.dataobj, "slope"):
        out.header.set_slope_inter(img.dataobj.slope, img.dataobj.inter)
    out.set_qform(*img.get_qform(coded=True))
    out.set_sform(*img.get_sform(coded=True))
    if hasattr(img.dataobj, "slope") and (img.dataobj.slope, img.dataobj.inter) != (1.0, 0.0):
        # An array image reads its array as it is: scl_slope/scl_inter are applied only when
        # a file is read. Serialise once so the returned image reads back the input's
        # intensities in memory (get_fdata, dataobj) as it will from the saved file; the
        # bytes written by nib.save are the same either way.
        out = _through_memory_files(out)
    return out


def _through_memory_files(img):
    """``img`` written to and read back from in-memory files (single-file or .hdr/.img pairs)."""
    file_map = img.make_file_map({kind: io.BytesIO() for kind, _ in img.files_types})
    img.to_file_map(file_map)
    return img.__class__.from_file_map(file_map)


def mask_image(img, mask: np.ndarray):
    out = img.__class__(mask.astype(np.uint8), img.affine)
    out.set_qform(*img.get_qform(coded=True))
    out.set_sform(*img.get_sform(coded=True))
    out.header.set_xyzt_units(*img.header.get_xyzt_units())
    return out


def physical_volume_ml(mask: np.ndarray, affine) -> float:
    return float(mask.sum() * np.prod(voxel_sizes(affine)) / 1000.0)
