"""Reference labels by registration: pydeface's average head carried onto each training head.

Affine registration (antspyx, the FLIRT-like step of pydeface) of pydeface's average head to
the subject carries two masks across:

* face  = pydeface's ``facemask`` == 0 (eyes, nose, mouth, chin, and the air in front);
* brain = mridefacer's ``head_tmpl_brain`` > 0, brought once onto pydeface's grid by
  registering mridefacer's head template to pydeface's average head (``prepare_template``);

and landmarks (eyes, nose tip, mouth) for evaluation. A deformable (SyN) brain is the
scoring reference (``register_brain_deformable``). ``deepdefacer.train.labels`` writes them.
The ears (mridefacer's ``face_teeth_ear_mask``, ``ear_labels``) come across the same way
(``register_ears``): the reference of ``--remove-ears`` (``bench/ears.py``).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from deepdefacer.conform import plausible_affine
from deepdefacer.train.data import DATA_ROOT


@contextmanager
def random_seed(ants, seed: int):
    """Seed ANTs' metric sampling for the registrations run inside this block.

    antspyx 0.6 reads the seed from ``ants.config`` and silently drops
    ``registration(random_seed=...)`` into ``**kwargs``: without this every run drew other
    sample points. Reruns are then identical with one ITK thread
    (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``).
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


def _ants():
    try:
        import ants  # noqa: WPS433 (training-only dependency)
    except ImportError as exc:  # pragma: no cover - message for users
        raise SystemExit("labels need antspyx: pip install '.[train]'") from exc
    return ants


# Landmarks on pydeface's mean_reg2mean grid (voxel indices, ~1 mm), read off the image:
# globe centres, nose tip, lips. Spheres of 6 mm around them test "eyes, nose and mouth
# removed" in evaluation.
EYES_VOX = ((57, 201, 93), (118, 201, 93))
LANDMARKS_VOX = {"eye_left": EYES_VOX[0], "eye_right": EYES_VOX[1],
                 "nose": (88, 236, 56), "mouth": (88, 226, 37)}
MASKS = ("face", "brain", "landmarks")


def capsules(shape, segments, radius: float) -> np.ndarray:
    """Voxels within ``radius`` of any segment (start, end) given in voxel coordinates."""
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1).T
    out = np.zeros(len(grid), bool)
    for start, end in segments:
        a, b = np.asarray(start, np.float32), np.asarray(end, np.float32)
        ab = b - a
        t = np.clip(((grid - a) @ ab) / max(float(ab @ ab), 1e-6), 0, 1)
        out |= np.linalg.norm(grid - (a + t[:, None] * ab), axis=1) <= radius
    return out.reshape(shape)


def prepare_template(work_dir: Path) -> dict:
    """Head, face, brain and landmark images on pydeface's average head grid (made once)."""
    ants = _ants()
    work_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: work_dir / f"template_{name}.nii.gz" for name in ("head",) + MASKS}
    if all(p.exists() for p in paths.values()):
        return paths
    templates = DATA_ROOT / "templates"
    mean = nib.load(templates / "pydeface_mean_reg2mean.nii.gz")
    facemask = nib.load(templates / "pydeface_facemask.nii.gz")
    nib.save(mean, paths["head"])

    to_pydeface = mridefacer_onto(paths["head"])
    brain_img = ants.image_read(str(templates / "mridefacer_head_tmpl_brain.nii.gz"))
    brain = to_pydeface((brain_img.numpy() > 0).astype("float32")) > 0.5

    # pydeface's mask stops at mid-globe on its own template (z = 91 vs globe centre 93,
    # radius ~11 voxels): add the whole eyes with the lids and the air in front, and keep
    # the face region 3 mm clear of the brain.
    face = np.asarray(facemask.dataobj) < 0.5
    face |= capsules(face.shape, [(eye, (eye[0], face.shape[1], eye[2])) for eye in EYES_VOX], 14)
    face &= ~ndimage.binary_dilation(brain, iterations=3)
    landmarks = np.zeros(face.shape, np.uint8)
    for value, centre in enumerate(LANDMARKS_VOX.values(), start=1):
        landmarks[capsules(face.shape, [(centre, centre)], 6)] = value
    for name, array in (("face", face), ("brain", brain), ("landmarks", landmarks)):
        nib.save(nib.Nifti1Image(array.astype(np.uint8), mean.affine), paths[name])
    print(f"template: face {face.sum()} voxels, brain {brain.sum()} voxels, "
          f"overlap {(face & brain).sum()}, landmarks in face {(face & (landmarks > 0)).sum()}"
          f"/{(landmarks > 0).sum()}")
    return paths


def mridefacer_onto(pydeface_head_path: Path):
    """A function that carries an array on mridefacer's head template grid onto pydeface's
    average head (``pydeface_head_path``), trilinear.

    mridefacer's head template is cut below the face (its lower slices are exactly 0): it is
    registered (affine) as the fixed image with a mask of its non-zero field of view, so the
    missing neck does not pull the fit, and arrays come across with the inverse."""
    ants = _ants()
    pydeface_head = ants.image_read(str(pydeface_head_path))
    mridefacer_head = ants.image_read(str(DATA_ROOT / "templates" / "mridefacer_head_tmpl.nii.gz"))
    fov = mridefacer_head.new_image_like((mridefacer_head.numpy() != 0).astype("float32"))
    with random_seed(ants, 1):
        reg = ants.registration(mridefacer_head, pydeface_head, type_of_transform="Affine",
                                mask=fov, random_seed=1)

    def carry(array: np.ndarray) -> np.ndarray:
        image = mridefacer_head.new_image_like(np.asarray(array, np.float32))
        return ants.apply_transforms(pydeface_head, image, reg["invtransforms"],
                                     whichtoinvert=[True], interpolator="linear").numpy()

    return carry


def ear_regions(mask_path: Path = DATA_ROOT / "templates" / "mridefacer_face_teeth_ear_mask.nii.gz") -> np.ndarray:
    """The two ear regions of mridefacer's mask (0 = removed): its removed regions but the
    largest (the face and teeth), on its head template's grid (the mask's own header is
    not that grid's, but its voxels are)."""
    removed = np.asanyarray(nib.load(mask_path).dataobj) == 0
    labels, count = ndimage.label(removed)
    sizes = ndimage.sum(removed, labels, range(1, count + 1))
    regions = [label for label in range(1, count + 1)
               if label != int(np.argmax(sizes)) + 1 and sizes[label - 1] >= 27]
    if len(regions) != 2:
        raise ValueError(f"{mask_path}: expected two ear regions besides the face, found {len(regions)}")
    return np.isin(labels, regions)


def ear_labels(template: dict, work_dir: Path) -> Path:
    """The ear regions on the template (pydeface's average head), made once into ``work_dir``:
    carried by ``register_ears`` onto a head, they are the reference ears (``bench/ears.py``)."""
    path = Path(work_dir) / "template_ears.nii.gz"
    if not path.exists():
        head = nib.load(template["head"])
        carried = mridefacer_onto(template["head"])(ear_regions()) > 0.5
        nib.save(nib.Nifti1Image(carried.astype(np.uint8), head.affine), path)
    return path


def register_ears(head_path: Path, template: dict, ears_path: Path, seed: int = 1) -> np.ndarray:
    """The template's ear regions (``ear_labels``) on the grid of ``head_path`` (bool), by the
    same affine registration as ``register_labels``."""
    ants = _ants()
    moving, _ = _template_images(template)
    fixed = _fixed_image(head_path)
    reg = _affine_registration(fixed, moving, seed)
    ears = ants.image_read(str(ears_path)).astype("float32")
    return ants.apply_transforms(fixed, ears, reg["fwdtransforms"], interpolator="linear").numpy() > 0.5


_TEMPLATE_CACHE: dict = {}


def _template_images(template: dict):
    """The 2 mm template head and 1 mm masks as ants images, read once per process."""
    key = str(template["head"])
    if key not in _TEMPLATE_CACHE:
        ants = _ants()
        # The face and brain are large structures: a 2 mm template and a shorter
        # multi-resolution schedule give the same fit (Dice 0.99) as the 1 mm default.
        head = ants.resample_image(ants.image_read(str(template["head"])), (2.0, 2.0, 2.0), False, 0)
        masks = {name: ants.image_read(str(template[name])).astype("float32") for name in MASKS}
        _TEMPLATE_CACHE[key] = (head, masks)
    return _TEMPLATE_CACHE[key]


def _fixed_image(head_path: Path):
    """The head as an ants image, with plausible voxel sizes (as inference uses)."""
    ants = _ants()
    img = nib.load(head_path)
    affine, scale = plausible_affine(img.get_fdata(dtype=np.float32), img.affine)
    if scale != 1.0:  # wrong voxel sizes in the header: register with plausible ones
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            fixed_path = Path(tmp) / "rescaled.nii.gz"
            nib.save(nib.Nifti1Image(img.get_fdata(dtype=np.float32), affine), fixed_path)
            fixed = ants.image_read(str(fixed_path))
    else:
        fixed = ants.image_read(str(head_path))
    if fixed.dimension != 3:
        raise ValueError(f"{head_path}: not 3D")
    return fixed


def _affine_registration(fixed, moving, seed: int):
    ants = _ants()
    with random_seed(ants, seed):
        return ants.registration(fixed, moving, type_of_transform="Affine", random_seed=seed,
                                 aff_metric="mattes", aff_iterations=(1000, 500, 250),
                                 aff_shrink_factors=(6, 4, 2), aff_smoothing_sigmas=(3, 2, 1))


def register_brain_deformable(head_path: Path, template: dict, seed: int = 1):
    """The brain (0/1 uint8) by affine + SyN registration: the scoring reference.

    The affine brain of ``register_labels`` cannot follow one person's frontal sinus,
    orbital roof or atrophy, and overreaches into bone and sinus by up to ~10 mm at the
    frontal pole (docs/dev/experiments.md); a deformable fit (at 2 mm) follows the brain's edge.
    """
    ants = _ants()
    start = time.perf_counter()
    moving, masks = _template_images(template)
    fixed = _fixed_image(head_path)
    affine = _affine_registration(fixed, moving, seed)
    coarse = ants.resample_image(fixed, (2.0, 2.0, 2.0), False, 0) if min(fixed.spacing) < 1.9 else fixed
    with random_seed(ants, seed):
        syn = ants.registration(coarse, moving, type_of_transform="SyNOnly",
                                initial_transform=affine["fwdtransforms"][0], random_seed=seed,
                                syn_metric="mattes", reg_iterations=(40, 20, 0))
    warped = ants.apply_transforms(fixed, masks["brain"], syn["fwdtransforms"], interpolator="linear")
    return (warped.numpy() > 0.5).astype(np.uint8), time.perf_counter() - start


def register_labels(head_path: Path, template: dict, seed: int = 1):
    """Face, brain (0/1) and landmark (0-4) uint8 arrays on the grid of ``head_path``."""
    ants = _ants()
    start = time.perf_counter()
    moving, masks = _template_images(template)
    fixed = _fixed_image(head_path)
    reg = _affine_registration(fixed, moving, seed)
    out = {}
    for name, mask in masks.items():
        method = "nearestNeighbor" if name == "landmarks" else "linear"
        warped = ants.apply_transforms(fixed, mask, reg["fwdtransforms"], interpolator=method).numpy()
        out[name] = (np.round(warped) if name == "landmarks" else warped > 0.5).astype(np.uint8)
    return out, time.perf_counter() - start
