"""A second brain guard: an average brain registered to the scan (on by default;
``--no-atlas-guard`` turns it off).

The network's brain output is the guard that keeps every voxel near the brain. On a few
heads it falls short (model v9: the frontal base of the most chin-down elderly head,
``Subj7_T1``, 10-20 mm short; a 6 mm T2w), and the face region's growth then reaches
the brain. This guard registers an average head (pydeface's ``mean_reg2mean``, MIT) to
the scan with an affine (Mattes mutual information, so any contrast; three starts at 6 mm,
the best refined at 3 mm; ``deepdefacer.registration``, numpy only) and carries its brain (mridefacer's ``head_tmpl_brain``, MIT, on pydeface's grid) onto
the model's cube. The guard then protects the union of both brains, the registered one counted
x ``BRAIN_GAIN`` (a fit a millimetre or two short still guards).

A registration can fail (a cropped block, a scan far from an average head). A
registered brain that covers more than ``MAX_FACE_OVERLAP_ML`` of the network's face is
not trusted: the network's brain alone is used and the reason is logged.

On 2 cores the fit takes ~0.5-1 s a scan (docs/benchmark.md). Its sample points are
drawn with a seed (``SEED``): reruns are bit-identical. The atlas travels in the package
(``models/atlas_pydeface_3mm.npz``, made by ``python -m deepdefacer.train.make_atlas``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from importlib import resources

import numpy as np
from scipy import ndimage
from scipy.ndimage import gaussian_filter

from deepdefacer import registration as reg
from deepdefacer.conform import conform, cube_affine, head_box_ras
from deepdefacer.resample import block_reduce
from deepdefacer.errors import ModelLoadError

log = logging.getLogger("deepdefacer")

ATLAS_NAME = "atlas_pydeface_3mm.npz"
ATLAS_MM = 3.0
MAX_FACE_OVERLAP_ML = 20.0
# The registered brain's probability is multiplied by this before it joins the network's: with the
# brain threshold 0.2 it protects down to an atlas probability of 0.13, ~1-2 mm farther out. Without
# it, small changes to the fit (two ITK threads, a looser stopping rule) cost `Subj7_T1` 5
# frontal-pole voxels; with it none. Fits centimetres off are not rescued by it (the starts are
# for those).
BRAIN_GAIN = 1.5
# The fit (deepdefacer.registration): L-BFGS-B iterations at 6 mm (each 6 mm start), then at 3 mm.
ITERATIONS = (100, 50)
RIGID_ITERATIONS = 50  # the rigid start at 6 mm, then AFTER_RIGID_ITERATIONS of affine
AFTER_RIGID_ITERATIONS = 50
TOLERANCE = 1e-7  # L-BFGS-B's relative decrease of the metric at which a fit stops
SMOOTH_MM = 3.0  # Gaussian sigma of both images at 6 mm
# Sample points: at most this many scan voxels at 6 mm and at 3 mm (seeded); the 3 mm choice of the
# start uses all of them (antsRegistration drew ~20% of the voxels: ~84k at 3 mm).
POINTS = (12000, 50000)
# The affine starts at 6 mm: the atlas at its own size and at 0.9x (an atrophied or small head's
# right optimum, ``Subj7_T1``), besides a rigid fit first.
START_SCALES = {"direct": 1.0, "direct at 0.9x": 0.9}
# Names the fit above in every guarded output's provenance (Decision.AtlasRegistration): outputs made
# with another registration (antsRegistration, in earlier versions) do not match and are redone.
REGISTRATION = "mattes-affine-3-starts"
SEED = 1


@dataclass(frozen=True)
class AtlasResult:
    brain: np.ndarray | None  # brain probability on the cube, None when not trusted
    used: bool
    reason: str
    face_overlap_ml: float | None = None
    start: str | None = None  # which 6 mm fit was refined (a key of START_SCALES, or "rigid first")
    world: np.ndarray | None = None  # the fit, scan world -> atlas world (RAS 4x4), when it ran


_ATLAS: dict = {}


def load_atlas() -> dict:
    """The shipped average head and brain (uint8) and their affine, read once."""
    if not _ATLAS:
        with resources.as_file(resources.files("deepdefacer.models") / ATLAS_NAME) as path:
            with np.load(path) as z:
                _ATLAS.update(head=z["head"].astype(np.float32), brain=z["brain"].astype(np.float32) / 255,
                              affine=z["affine"].astype(float))
    return _ATLAS


def require_atlas() -> None:
    """Read the atlas now, so that a run whose guard cannot work stops before any scan."""
    try:
        load_atlas()
    except OSError as exc:
        raise ModelLoadError(f"the atlas guard cannot read its atlas: {exc} "
                             "(or --no-atlas-guard: the network's brain guard alone)") from exc


def register_brain(data: np.ndarray, affine: np.ndarray, cube_affine: np.ndarray, plan,
                   seed: int = SEED, fit: dict | None = None) -> np.ndarray:
    """The atlas brain registered to the scan, as a probability on the cube's grid.

    An affine fit by Mattes mutual information (``deepdefacer.registration``): at 6 mm from
    three starts, the best by correlation refined at 3 mm. Every start puts the atlas's head
    where ``conform`` puts any head (centred left-right and front-back, hanging from the top of
    the head), not at the centres of mass, which a neck in the field of view pulls down. An
    affine fit has more than one optimum on some heads, and mutual information does not always
    prefer the right one: on the most chin-down, atrophied head (``Subj7_T1``) its best optimum
    puts the atlas brain 12 mm too high, and only a start with the atlas at 0.9x reaches the
    right one. So at 6 mm three fits are made: the affine directly at
    1x and at 0.9x, and a rigid fit followed by the affine. The one whose atlas correlates best
    with the scan at 3 mm (squared, so either sign of contrast) is refined. ``seed`` draws the
    sample points; reruns are identical. ``fit``, when given, receives the chosen start, the
    correlations and the fit (``world``).
    """
    atlas = load_atlas()
    # Where conform puts the atlas's head depends on the grid only: found once per grid.
    if atlas.get("cube_plan") != plan:
        atlas.update(cube_plan=plan, cube_affine=conform(atlas["head"], atlas["affine"], plan).affine_ras)
    if "moving" not in atlas:
        atlas["moving"] = {0.0: reg.MovingImage(atlas["head"], atlas["affine"]),
                           SMOOTH_MM: reg.MovingImage(gaussian_filter(atlas["head"], SMOOTH_MM / ATLAS_MM),
                                                      atlas["affine"])}
    cube_affine = np.asarray(cube_affine, float)
    shift = atlas["cube_affine"][:3, 3] - cube_affine[:3, 3]  # same axes and voxel size
    centre = cube_affine[:3, :3] @ np.full(3, (plan.size - 1) / 2) + cube_affine[:3, 3]
    reduced, reduced_affine = block_reduce(np.asarray(data, np.float32), affine, 1.5 * ATLAS_MM)
    rng = np.random.default_rng(seed)
    values, points = reg.level_points(reduced, reduced_affine, 2 * ATLAS_MM, SMOOTH_MM, POINTS[0], rng)
    coarse = reg.MattesMI(values, points - centre, atlas["moving"][SMOOTH_MM])
    start = reg.Affine(np.eye(3), centre + shift)
    candidates = {}
    for name, scale in START_SCALES.items():
        candidates[name] = reg.fit_affine(coarse, reg.Affine(scale * np.eye(3), start.b), ITERATIONS[0],
                                          TOLERANCE)[0]
    rigid = reg.fit_rigid(coarse, start, RIGID_ITERATIONS, TOLERANCE)[0]
    candidates["rigid first"] = reg.fit_affine(coarse, rigid, AFTER_RIGID_ITERATIONS, TOLERANCE)[0]
    values, points = reg.level_points(reduced, reduced_affine, ATLAS_MM, 0.0, None, rng)
    similarity = {name: reg.correlation(atlas["moving"][0.0], c, values, points - centre)
                  for name, c in candidates.items()}
    chosen = max(similarity, key=similarity.get)
    values, points = reg.subset(values, points, POINTS[1], rng)
    fine = reg.MattesMI(values, points - centre, atlas["moving"][0.0])
    final = reg.fit_affine(fine, candidates[chosen], ITERATIONS[1], TOLERANCE)[0]
    world = final.world(centre)
    if fit is not None:
        fit.update(start=chosen, similarity={k: round(v, 4) for k, v in similarity.items()}, world=world)
    return warp_brain(world, cube_affine, plan)


# A fitted voxel size this far from the one the head-size rule assumed means the fit failed.
FIT_SCALE_RANGE = (0.6, 1.8)


def fitted_voxel_sizes(data: np.ndarray, affine: np.ndarray, plan, seed: int = SEED):
    """Voxel sizes for a scan whose header's are implausible, from the atlas's affine fit.

    ``affine`` is the header's affine already rescaled by ``conform.plausible_affine`` (the
    head made ``ASSUMED_HEAD_MM`` across). The average head is registered to it as for the
    guard, and each voxel axis takes the length the fit gives it, so the error in the
    header's zooms is corrected axis by axis (a volume stored with the wrong anisotropy too);
    the axes' directions and the volume's centre are kept. On the robustness benchmark's
    ``header_x3`` scans (2 mm stored as 0.67 mm) the fit gave 1.7-2.1 mm, the 200 mm rule
    1.5-1.9 mm.

    Returns ``(affine, zooms, None)``, or ``(None, zooms, reason)`` when the fit is implausible
    (the registration failed, or a voxel axis outside ``FIT_SCALE_RANGE`` of the assumption).
    """
    fit: dict = {}
    try:
        register_brain(data, affine, cube_affine(*head_box_ras(data, affine), plan), plan, seed, fit)
    except Exception as exc:  # a failed fit leaves the head-size rule
        return None, None, f"registration failed: {exc}"
    columns = np.asarray(affine, float)[:3, :3]
    assumed = np.linalg.norm(columns, axis=0)
    zooms = np.linalg.norm(fit["world"][:3, :3] @ columns, axis=0)
    ratio = zooms / assumed
    if np.any(ratio < FIT_SCALE_RANGE[0]) or np.any(ratio > FIT_SCALE_RANGE[1]):
        return None, zooms, (f"fitted voxel sizes {np.round(zooms, 2).tolist()} mm are implausible "
                             f"next to the assumed {np.round(assumed, 2).tolist()} mm")
    centre_ijk = (np.array(data.shape[:3], float) - 1) / 2
    out = np.eye(4)
    out[:3, :3] = columns * ratio
    out[:3, 3] = columns @ centre_ijk + np.asarray(affine, float)[:3, 3] - out[:3, :3] @ centre_ijk
    return out, zooms, None


def atlas_guard(face: np.ndarray, brain_fn, voxel_mm: float,
                max_face_overlap_ml: float = MAX_FACE_OVERLAP_ML) -> AtlasResult:
    """Run ``brain_fn()`` (the registration) and decide whether its brain can be trusted."""
    try:
        brain = brain_fn()
    except Exception as exc:  # a registration that fails leaves the network's guard
        return AtlasResult(None, False, f"registration failed: {exc}")
    overlap_ml = float(((brain >= 0.5) & (face >= 0.5)).sum() * voxel_mm ** 3 / 1000)
    if overlap_ml > max_face_overlap_ml:
        return AtlasResult(None, False, f"registered brain covers {overlap_ml:.0f} ml of the predicted "
                           f"face (limit {max_face_overlap_ml:.0f} ml): registration not trusted",
                           overlap_ml)
    return AtlasResult(brain, True, "used", overlap_ml)


def warp_brain(world: np.ndarray, cube_affine: np.ndarray, plan) -> np.ndarray:
    """The atlas brain on a cube through a fit already made (``world``: scan world -> atlas
    world, RAS); trilinear."""
    atlas = load_atlas()
    to_atlas = np.linalg.inv(atlas["affine"]) @ np.asarray(world, float) @ np.asarray(cube_affine, float)
    brain = ndimage.affine_transform(atlas["brain"], to_atlas[:3, :3], to_atlas[:3, 3],
                                     output_shape=tuple(plan.shape), order=1, mode="constant", cval=0.0)
    return np.clip(brain, 0, 1).astype(np.float32)


# The atlas's scalp: voxels of its head brighter than this fraction of its maximum.
HEAD_FRACTION = 0.15


def head_top_mm(world: np.ndarray) -> float:
    """How high (RAS z, mm) the top of the atlas's head lands in the scan's world under the fit."""
    atlas = load_atlas()
    if "head_points" not in atlas:
        ijk = np.argwhere(atlas["head"] > HEAD_FRACTION * atlas["head"].max())
        top = ijk[ijk[:, 2] >= ijk[:, 2].max() - 10]  # the top 30 mm of the head: enough under any pitch
        atlas["head_points"] = atlas["affine"][:3, :3] @ top.T + atlas["affine"][:3, 3:4]
    back = np.linalg.inv(np.asarray(world, float))
    return float((back[2, :3] @ atlas["head_points"] + back[2, 3]).max())


def guard_prediction(prediction, data: np.ndarray, affine: np.ndarray, plan, name: str = "<image>",
                     world: np.ndarray | None = None):
    """``prediction`` with the atlas brain (x ``BRAIN_GAIN``) merged into its brain (maximum),
    and the result. ``world``: a fit of this scan made already (on another cube), reused."""
    fit: dict = {}
    if world is None:
        def brain_fn():
            return register_brain(data, affine, prediction.cube_affine, plan, fit=fit)
    else:
        fit.update(start="reused", world=np.asarray(world, float))

        def brain_fn():
            return warp_brain(world, prediction.cube_affine, plan)
    result = replace(atlas_guard(prediction.face, brain_fn, prediction.voxel_mm),
                     start=fit.get("start"), world=fit.get("world"))
    if not result.used:
        log.warning("%s: atlas guard not used (%s); the network's brain guard alone applies",
                    name, result.reason)
        return prediction, result
    atlas_brain = np.minimum(result.brain * np.float32(BRAIN_GAIN), np.float32(1))
    return replace(prediction, brain=np.maximum(prediction.brain, atlas_brain)), result
