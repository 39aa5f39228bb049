"""A second brain guard: an average brain registered to the scan (on by default since stop 15;
``--no-atlas-guard`` turns it off).

The network's brain output is the guard that keeps every voxel near the brain. On a few
heads it falls short (model v9: the frontal base of the most chin-down elderly head,
``Subj7_T1``, 10-20 mm short; a 6 mm T2w), and the face region's growth then reaches
the brain. This guard registers an average head (pydeface's ``mean_reg2mean``, MIT) to
the scan with an affine (antspyx, Mattes mutual information, so any contrast; two
starts at 6 mm, the better one refined at 3 mm) and carries its brain (mridefacer's
``head_tmpl_brain``, MIT, on pydeface's grid) onto the model's cube. The guard then protects the union of
both brains, the registered one counted x ``BRAIN_GAIN`` (a fit a millimetre or two short still guards).

A registration can fail (a cropped block, a scan far from an average head). A
registered brain that covers more than ``MAX_FACE_OVERLAP_ML`` of the network's face is
not trusted: the network's brain alone is used and the reason is logged.

Needs antspyx (a core dependency since stop 15); on 2 cores it adds ~1.7-3.3 s a scan
(docs/model.md, docs/benchmark.md). The registration is seeded (``random_seed``); reruns
are bit-identical with one ITK thread. The atlas travels in the package
(``models/atlas_pydeface_3mm.npz``, made by ``python -m deepdefacer.train.atlas``).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib import resources

import numpy as np

from deepdefacer.conform import block_reduce, voxel_sizes

log = logging.getLogger("deepdefacer")

ATLAS_NAME = "atlas_pydeface_3mm.npz"
ATLAS_MM = 3.0
MAX_FACE_OVERLAP_ML = 20.0
# The registered brain's probability is multiplied by this before it joins the network's: with the
# brain threshold 0.2 it protects down to an atlas probability of 0.13, ~1-2 mm farther out. Without
# it, small changes to the fit (two ITK threads in one CI run, a looser stopping rule) cost `Subj7_T1`
# 5 frontal-pole voxels; with it none, and the same scans pass on 48 scans x seeds 1-6 (docs/model.md,
# stop 16). Fits centimetres off are not rescued by it (the two starts are for those).
BRAIN_GAIN = 1.5
ITERATIONS = (200, 50)  # at 6 mm, then 3 mm (where it converges after ~25-70 iterations)
RIGID_ITERATIONS = 200  # the second start at 6 mm: rigid, then AFTER_RIGID_ITERATIONS of affine
AFTER_RIGID_ITERATIONS = 100
# Levels of the 3 mm fixed image (ANTs shrink factor, smoothing sigma in its voxels): the two starts
# at 6 mm, the chosen one refined at 3 mm. Coarser levels were measured in stop 19 (9 mm then 6 mm:
# 3x faster; 6 mm then 6 mm) and each kept eyes of Subj1_FL or Subj7_T1 with some seeds, where these
# pass with seeds 1-6 (docs/model.md).
LEVELS = ((2, 1), (1, 0))
SEED = 1
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


class AtlasUnavailable(RuntimeError):
    """The atlas guard was asked for but antspyx is not installed."""


@dataclass
class AtlasResult:
    brain: np.ndarray | None  # brain probability on the cube, None when not trusted
    used: bool
    reason: str
    face_overlap_ml: float | None = None
    start: str | None = None  # which of the two 6 mm fits was refined ("direct" or "rigid first")
    world: np.ndarray | None = None  # the fit, scan world -> atlas world (RAS 4x4), when it ran


def require_ants():
    try:
        import ants
    except ImportError as exc:
        raise AtlasUnavailable("the atlas guard needs antspyx, a dependency of deepdefacer: "
                               "pip install antspyx") from exc
    return ants


@contextmanager
def random_seed(ants, seed: int):
    """Seed ANTs' metric sampling for the registrations run inside this block.

    antspyx 0.6 reads the seed from ``ants.config`` and silently drops
    ``registration(random_seed=...)`` into ``**kwargs``: without this every run drew other
    sample points. Reruns are then identical with one ITK thread
    (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``, as each ``--n-procs`` worker on 2 cores
    has); with several threads ITK's metric sums in a varying order and results vary a little.
    """
    config = getattr(ants, "config", None)
    if config is None or not hasattr(config, "_random_seed"):
        yield  # older antspyx: registration(random_seed=...) is honoured
        return
    before = config._random_seed
    config._random_seed = int(seed)
    try:
        yield
    finally:
        config._random_seed = before


def ants_image(ants, array: np.ndarray, affine_ras: np.ndarray):
    """An ANTs image of ``array`` on the grid of ``affine_ras`` (nibabel's RAS; ITK is LPS)."""
    lps = LPS @ np.asarray(affine_ras, dtype=float)
    spacing = voxel_sizes(lps)
    return ants.from_numpy(np.ascontiguousarray(array, dtype=np.float32), origin=lps[:3, 3].tolist(),
                           spacing=spacing.tolist(), direction=lps[:3, :3] / spacing)


_ATLAS: dict = {}


def load_atlas() -> dict:
    """The shipped average head and brain (uint8) and their affine, read once."""
    if not _ATLAS:
        with resources.as_file(resources.files("deepdefacer.models") / ATLAS_NAME) as path:
            with np.load(path) as z:
                _ATLAS.update(head=z["head"].astype(np.float32), brain=z["brain"].astype(np.float32) / 255,
                              affine=z["affine"].astype(float))
    return _ATLAS


def register_brain(data: np.ndarray, affine: np.ndarray, cube_affine: np.ndarray, plan,
                   seed: int = SEED, fit: dict | None = None) -> np.ndarray:
    """The atlas brain registered to the scan, as a probability on the cube's grid.

    Both fits start from the shift that puts the atlas's head where ``conform`` puts any
    head (centred left-right and front-back, hanging from the top of the head), not from
    the centres of mass, which a neck in the field of view pulls down. An affine fit has
    more than one optimum on some heads, and which one it reaches depended on the seed
    (stop 14: a brain 1-2 cm forward, over both eyes, on 2 of 48 scans with some seeds).
    So at 6 mm two fits are made: the affine directly, and a rigid fit first with the
    affine after it. The one whose warped atlas correlates better with the scan (ITK's
    correlation metric, squared: either sign of contrast) is refined at 3 mm. Neither
    start alone is right on every head (a rigid start misses the pose of the most
    chin-down head, ``Subj7_T1``); the choice was right on all 48 scans with 3 seeds
    (docs/model.md). ``fit``, when given, receives the chosen start and both similarities.
    """
    import tempfile

    from deepdefacer.conform import conform

    ants = require_ants()
    atlas = load_atlas()
    # Where conform puts the atlas's head depends on the grid only: found once per grid.
    if atlas.get("cube_plan") != plan:
        atlas.update(cube_plan=plan, cube_affine=conform(atlas["head"], atlas["affine"], plan).affine_ras)
    atlas_cube = atlas["cube_affine"]
    shift_ras = atlas_cube[:3, 3] - np.asarray(cube_affine)[:3, 3]  # same axes and voxel size
    start = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                       matrix=np.eye(3), translation=LPS[:3, :3] @ shift_ras)
    reduced, reduced_affine = block_reduce(np.asarray(data, np.float32), affine, 1.5 * ATLAS_MM)
    fixed = ants_image(ants, reduced, reduced_affine)
    if min(fixed.spacing) < 0.9 * ATLAS_MM:
        fixed = ants.resample_image(fixed, (ATLAS_MM,) * 3, False, 0)
    moving = ants_image(ants, atlas["head"], atlas["affine"])
    # ANTs writes its transforms to files: all of them in a folder removed afterwards.
    with tempfile.TemporaryDirectory(prefix="deepdefacer-atlas-") as tmp:
        start_file = f"{tmp}/start.mat"
        ants.write_transform(start, start_file)

        def fit_stage(kind, initial, iterations, name, level=LEVELS[0]):
            return affine_stage(ants, fixed, moving, kind, initial, iterations, level, f"{tmp}/{name}_", seed)

        rigid = fit_stage("Rigid", start_file, RIGID_ITERATIONS, "rigid")
        candidates = {"direct": fit_stage("Affine", start_file, ITERATIONS[0], "direct"),
                      "rigid first": fit_stage("Affine", rigid, AFTER_RIGID_ITERATIONS, "after_rigid")}
        similarity = {name: float(ants.image_similarity(fixed, ants.apply_transforms(fixed, moving, [path]),
                                                        metric_type="Correlation"))
                      for name, path in candidates.items()}
        chosen = min(similarity, key=similarity.get)  # ITK's metrics are lower for better fits
        final = fit_stage("Affine", candidates[chosen], ITERATIONS[1], "final", LEVELS[1])
        cube = ants_image(ants, np.zeros(plan.shape, np.float32), cube_affine)
        brain = ants.apply_transforms(cube, ants_image(ants, atlas["brain"], atlas["affine"]), [final],
                                      interpolator="linear")
        world = world_transform(ants.read_transform(final))
    if fit is not None:
        fit.update(start=chosen, similarity={k: round(v, 4) for k, v in similarity.items()}, world=world)
    return np.clip(brain.numpy(), 0, 1).astype(np.float32)


def affine_stage(ants, fixed, moving, kind: str, initial: str, iterations: int, level, outprefix: str,
                 seed: int) -> str:
    """One linear antsRegistration stage; returns the file of the transform it found.

    The arguments are those ``ants.registration(fixed, moving, kind, aff_metric="mattes",
    initial_transform=[initial], aff_iterations=(iterations,), aff_shrink_factors=(level[0],),
    aff_smoothing_sigmas=(level[1],))`` passes (the same transforms, tested), with the seed given
    directly (antspyx 0.6 drops ``random_seed=``) and without the two whole warped images that
    wrapper makes after every stage, which the guard does not use.
    """
    from ants.internal import get_lib_fn, get_pointer_string

    args = ["--dimensionality", "3", "-r", initial,
            "--metric", f"mattes[{get_pointer_string(fixed)},{get_pointer_string(moving)},1,32,regular,0.2]",
            "--transform", f"{kind}[0.25]", "--convergence", str(int(iterations)),
            "--smoothing-sigmas", f"{level[1]:g}", "--shrink-factors", str(int(level[0])),
            "-u", "0", "-z", "1", "--output", outprefix, "-x", "[NA,NA]",
            "--random-seed", str(int(seed)), "--float", "1", "--write-composite-transform", "0"]
    status = get_lib_fn("antsRegistration")(args)
    if status != 0:
        raise RuntimeError(f"antsRegistration ({kind}) failed with status {status}")
    return f"{outprefix}0GenericAffine.mat"


def world_transform(transform) -> np.ndarray:
    """An ITK affine transform (LPS; fixed -> moving points) as a 4x4 RAS matrix: scan world -> atlas world."""
    params = np.asarray(transform.parameters, float)
    centre = np.asarray(transform.fixed_parameters, float)
    matrix, translation = params[:9].reshape(3, 3), params[9:12]
    flip = LPS[:3, :3]
    world = np.eye(4)
    world[:3, :3] = flip @ matrix @ flip
    world[:3, 3] = flip @ (translation + centre - matrix @ centre)
    return world


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
    1.5-1.9 mm (docs/model.md, stop 18).

    Returns ``(affine, zooms, None)``, or ``(None, zooms, reason)`` when the fit is implausible
    (the registration failed, or a voxel axis outside ``FIT_SCALE_RANGE`` of the assumption).
    """
    from deepdefacer.conform import cube_affine, head_box_ras

    require_ants()
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
    except AtlasUnavailable:
        raise
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
    world, RAS); trilinear, the same values as ANTs' warp of the registration."""
    from scipy import ndimage

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
    result = atlas_guard(prediction.face, brain_fn, prediction.voxel_mm)
    result.start = fit.get("start")
    result.world = fit.get("world")
    if not result.used:
        log.warning("%s: atlas guard not used (%s); the network's brain guard alone applies",
                    name, result.reason)
        return prediction, result
    atlas_brain = np.minimum(result.brain * np.float32(BRAIN_GAIN), np.float32(1))
    return replace(prediction, brain=np.maximum(prediction.brain, atlas_brain)), result
