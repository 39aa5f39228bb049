"""What the atlas guard's affine fit says about a scan's geometry when its own cannot be trusted.

Two cases, each changing only the scans it concerns:

* **A crown cut by the field of view.** ``conform`` hangs the cube from the top of the head; where
  the field of view cuts the crown, that is the cut, the face sits higher in the cube than any
  training head's, and eyes were kept (robustness benchmark, ``crop_top``). The fit places the
  whole average head, so its crown is where this head's would be (within ~2 mm on uncut
  validation scans, 2-7 mm above on cut ones).
* **Implausible voxel sizes in the header.** The head-size rule (``conform.plausible_affine``) is
  a population guess of the size that keeps the header's shape; the fit measures this head's
  shape and size (on the robustness benchmark's ``header_x3`` scans, 2 mm stored as 0.67 mm, the
  fit gave 1.7-2.1 mm, the rule 1.5-1.9 mm). The size is the less certain part (the atlas is an
  average adult head), and a 64^3 block lost its mouth at the one size and brain at the other,
  so the pipeline defaces under both.
"""

from __future__ import annotations

import logging

import numpy as np

from deepdefacer import atlas
from deepdefacer.conform import world_extent
from deepdefacer.resample import voxel_sizes

log = logging.getLogger("deepdefacer")

# A head whose box reaches within this of the top of the field of view may be cut there, and its
# crown is then placed from the atlas fit when that puts it at least CROWN_MIN_MM higher.
CROWN_EDGE_MM = 4.0
CROWN_MIN_MM = 8.0


def crown_box(guard: atlas.AtlasResult | None, data: np.ndarray, affine: np.ndarray, box, name: str):
    """The head's box raised to the atlas's crown for a scan cut at the top, with how far it was
    raised (mm); ``(None, None)`` when the scan is not cut or the fit was not used."""
    if guard is None or not guard.used or guard.world is None:
        return None, None
    box_top = float(box[1][2])
    if box_top < float(world_extent(affine, data.shape)[1][2]) - CROWN_EDGE_MM:
        return None, None  # the head does not reach the top of the field of view
    top = atlas.head_top_mm(guard.world)
    if top - box_top < CROWN_MIN_MM:
        return None, None
    log.warning("%s: the field of view cuts the top of the head; the atlas fit puts the crown "
                "%.0f mm higher", name, top - box_top)
    raised = (np.asarray(box[0], float), np.array(box[1], dtype=float))
    raised[1][2] = top
    return raised, round(top - box_top, 1)


def size_estimates(data: np.ndarray, header_affine: np.ndarray, assumed_affine: np.ndarray,
                   plan, name: str):
    """The affines to deface an implausible header's scan under, and the provenance record.

    ``assumed_affine``: the head-size rule's. With a plausible fit, two affines of the fit's
    shape, one at the rule's size and one at the fit's; else the rule's alone.
    """
    fitted, zooms, reason = atlas.fitted_voxel_sizes(data, assumed_affine, plan)
    record = {"Stored": np.round(voxel_sizes(header_affine), 3).tolist(),
              "HeadSizeRule": np.round(voxel_sizes(assumed_affine), 3).tolist(),
              "AtlasFit": None if zooms is None else np.round(zooms, 3).tolist(),
              "AtlasFitUsed": fitted is not None}
    if fitted is None:
        record["Reason"] = reason
        log.warning("%s: the atlas fit of the voxel sizes is not used (%s)", name, reason)
        return [assumed_affine], record
    log.warning("%s: the atlas fit gives voxel sizes of %s mm; the face is removed under both "
                "size estimates", name, " x ".join(f"{z:.2f}" for z in zooms))
    affines = [scaled_about_centre(fitted, data.shape, voxel_sizes(assumed_affine)), fitted]
    record["HeadSizeRule"] = np.round(voxel_sizes(affines[0]), 3).tolist()
    return affines, record


def scaled_about_centre(affine: np.ndarray, shape, like_zooms) -> np.ndarray:
    """``affine`` with its voxel sizes scaled alike so that a voxel has the volume of one of
    ``like_zooms``; the axes' directions and the volume's centre are kept."""
    factor = float(np.cbrt(np.prod(like_zooms) / np.prod(voxel_sizes(affine))))
    centre = (np.array(shape[:3], float) - 1) / 2
    out = np.array(affine, dtype=float)
    out[:3, :3] *= factor
    out[:3, 3] = affine[:3, :3] @ centre + affine[:3, 3] - out[:3, :3] @ centre
    return out
