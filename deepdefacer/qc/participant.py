"""QC of one defaced scan, run at participant level (so it parallelises with defacing).

    qc_scan(original_img, defaced_img, mask_img, out_dir, stem) -> dict

writes into `out_dir/figures/`:
    {stem}_desc-qc_render.png   surface renders, before and after, front and side
    {stem}_desc-qc_slices.png   sagittal, coronal, axial slices, removed region in red
    {stem}_desc-qc_verdict.json the verdict, its reasons and the measurements
and returns the verdict dict; `report.run_group` collects the JSON files.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from deepdefacer.files import write_json
from deepdefacer.qc import render
from deepdefacer.qc.facecheck import FaceEvidence, face_evidence
from deepdefacer.qc.maskcheck import check_mask
from deepdefacer.qc.volume import mask_on_grid, ras_volume
from deepdefacer.qc.verify import HEADER_VIEW, same_shape, view_name

VERDICT_SUFFIX = "_desc-qc_verdict.json"
RENDER_SUFFIX = "_desc-qc_render.png"
SLICES_SUFFIX = "_desc-qc_slices.png"
# Panels are drawn about this tall (pixels), whatever the scan's resolution.
PANEL_HEIGHT_PX = 260


def qc_scan(original_img, defaced_img, mask_img, out_dir, stem: str, source: str | None = None,
            extra_flags=(), verification=None, rendered_img=None) -> dict:
    """Render, check and write the QC of one scan. mask_img: 1 = removed.

    Verdict "pass" or "flag"; "flag" lists every reason (face still present,
    brain reached, implausible mask, and ``extra_flags`` from the defacing itself, such as
    an atlas guard that was not used). Never raises on odd geometry: a check
    that cannot run says so in "notes". ``verification`` (``deepdefacer.verify``), when the
    job has checked the scan already: its face evidence is the verdict's, so the verdict and
    the job's outcome cannot disagree. ``rendered_img``: the image the "after" views show when it
    is not the one checked (the refaced scan: the check judges its mask on the defaced one).
    """
    started = time.perf_counter()
    if not stem or Path(stem).name != stem:
        raise ValueError(f"stem must be a file name without folders, got {stem!r}")
    figures = Path(out_dir) / "figures"
    original, defaced = (None, None) if verification is None else verification.volumes
    original = original or ras_volume(original_img)
    # Same grid and threshold for the defaced scan, so before and after differ only by the mask.
    defaced = defaced or same_shape(ras_volume(defaced_img, voxel_mm=original.voxel_mm,
                                               threshold=original.threshold),
                                    original.intensity.shape)
    removed = mask_on_grid(mask_img, original.intensity.shape, original.voxel_mm)

    shown = defaced if rendered_img is None else same_shape(ras_volume(
        rendered_img, voxel_mm=original.voxel_mm, threshold=original.threshold), original.intensity.shape)
    depth = {(when, view): render.depth_map(volume, view)
             for when, volume in (("before", original), ("after", shown)) for view in render.VIEWS}
    if verification is not None:
        face_before = verification.face_before
        face_after = face_after_own = verification.face_after or face_evidence(
            depth["after", "front"], original.voxel_mm)
    else:
        face_before = face_evidence(depth["before", "front"], original.voxel_mm)
        face_after, face_after_own = face_left(defaced_img, depth["after", "front"], original)
    mask_result = check_mask(original.head, removed, original.voxel_mm, face_before)

    flags = []
    if face_after.face_present:
        flags.append(f"face still present: {face_after.reason}")
    flags.extend(mask_result.pop("flags"))
    flags.extend(extra_flags)
    notes = mask_result.pop("notes")
    if verification is not None and not verification.verified and not face_after.face_present:
        flags.append(verification.reason)
    if verification is not None and verification.view != HEADER_VIEW:
        notes.append(f"the face was found with {view_name(verification.view)}, not where the "
                     "header's orientation puts it: the header's orientation is wrong")
    if not face_before.face_present:
        notes.append(f"no face found on the original ({face_before.reason}); the face check cannot be "
                      "confirmed on this scan")

    render_path = figures / f"{stem}{RENDER_SUFFIX}"
    slices_path = figures / f"{stem}{SLICES_SUFFIX}"
    marked = face_after if verification is None or verification.view == HEADER_VIEW else None
    render.write_png(render_path, _render_figure(depth, original.voxel_mm, marked))
    render.write_png(slices_path, _slices_figure(original, removed, face_before))

    result = {
        "stem": stem,
        "source": str(source) if source is not None else None,
        "verdict": "flag" if flags else "pass",
        "flags": flags,
        "notes": notes,
        "face_after": face_after.to_dict(),
        "face_after_own_threshold": face_after_own.to_dict(),
        "face_before": face_before.to_dict(),
        "mask": mask_result,
        "qc_voxel_mm": round(original.voxel_mm, 3),
        "figures": {"render": render_path.name, "slices": slices_path.name},
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(result, figures / f"{stem}{VERDICT_SUFFIX}")
    return result


def face_left(defaced_img, front_depth_same_threshold, original) -> tuple[FaceEvidence, FaceEvidence]:
    """Is a face left on the defaced scan? Judged on two surfaces, and a face on either counts.

    The surface at the original's head threshold shows the defaced scan exactly as the
    "before" render showed the original, so the two differ only by the mask. The surface at
    the defaced scan's own threshold is what `deepdefacer-check` (and anyone rendering the
    shared file) sees: removing the face changes the histogram, so the threshold moves, and
    a remnant can stand out on one surface only (NiChart's `Subj6_T1` nasal bridge shows on
    its own-threshold surface alone, docs/qc.md). Returns (the evidence reported, the own-threshold evidence); the first is
    the original-threshold view unless only the own-threshold view shows a face.
    """
    same = face_evidence(front_depth_same_threshold, original.voxel_mm)
    own_volume = same_shape(ras_volume(defaced_img, voxel_mm=original.voxel_mm), original.intensity.shape)
    own = face_evidence(render.depth_map(own_volume, "front"), original.voxel_mm)
    if own.face_present and not same.face_present:
        own.reason += " (on the defaced scan's own head threshold)"
        return own, own
    return same, own


def defaced_face_evidence(original_img, defaced_img) -> FaceEvidence:
    """The participant QC's face verdict on a defaced scan, without rendering figures."""
    original = ras_volume(original_img)
    defaced = same_shape(ras_volume(defaced_img, voxel_mm=original.voxel_mm, threshold=original.threshold),
                          original.intensity.shape)
    return face_left(defaced_img, render.depth_map(defaced, "front"), original)[0]


def _pixels_per_voxel(shape) -> int:
    return max(1, int(round(PANEL_HEIGHT_PX / max(shape[2], 1))))


def _render_figure(depth, voxel_mm, face_after) -> np.ndarray:
    factor = _pixels_per_voxel((0, 0, depth["before", "front"].shape[0]))
    panels = []
    for when in ("before", "after"):
        for view in render.VIEWS:
            image = render.shade_upsampled(depth[when, view], voxel_mm, factor)
            if when == "after" and view == "front" and face_after is not None and face_after.face_present:
                image = render.mark(image, (face_after.nose_row + 0.5) * factor, (face_after.nose_column + 0.5) * factor)
            panels.append(image)
    return render.montage(panels)


def _slices_figure(original, removed, face_before) -> np.ndarray:
    centre = [int(c) for c in np.argwhere(original.head).mean(axis=0)] if original.head.any() \
        else [s // 2 for s in original.intensity.shape]
    if face_before.face_present:
        # Sagittal through the nose (front-view columns run from the patient's right).
        centre[0] = original.intensity.shape[0] - 1 - face_before.nose_column
    if removed.any():
        removed_centre = np.argwhere(removed & original.head).mean(axis=0) if (removed & original.head).any() \
            else np.argwhere(removed).mean(axis=0)
        centre[1], centre[2] = int(removed_centre[1]), int(removed_centre[2])
    panels = render.slices_with_mask(original, removed, centre)
    return render.upscale(render.montage(panels), _pixels_per_voxel(original.intensity.shape))


def defacing_flags(details: dict) -> list:
    """Flags for a scan whose atlas guard was asked for but not used (its brain is then guarded
    by the network alone, the path that lost brain on 3 of the 48 validation scans), and for a
    scan whose header's voxel sizes are implausible (its size was estimated: worth a look)."""
    flags = []
    header = details.get("HeaderVoxelSizes")
    if header:
        stored = " x ".join(f"{z:g}" for z in header["Stored"])
        fitted = (" and the atlas fit (" + " x ".join(f"{z:g}" for z in header["AtlasFit"]) + " mm)"
                  if header["AtlasFitUsed"] else f"; atlas fit not used: {header['Reason']}")
        flags.append(f"implausible voxel sizes in the header ({stored} mm): defaced under the "
                     f"head-size rule ({' x '.join(f'{z:g}' for z in header['HeadSizeRule'])} mm){fitted}")
    guard = details.get("AtlasGuard")
    if guard and not guard["Used"]:
        flags.append(f"atlas guard not used ({guard['Reason']}): only the network's brain guard applied")
    if details.get("RefaceFallback"):
        flags.append(f"defaced, not refaced: {details['RefaceFallback']}")
    return flags
