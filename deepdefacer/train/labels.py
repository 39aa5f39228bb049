"""Reference labels: a face mask and a brain mask on each training head's own grid.

Made reproducibly by affine registration (antspyx, the FLIRT-like step of pydeface) of
pydeface's average head to the subject, then carrying two masks across:

* face  = pydeface's ``facemask`` == 0 (eyes, nose, mouth, chin, and the air in front);
* brain = mridefacer's ``head_tmpl_brain`` > 0, brought once onto pydeface's grid by
  registering mridefacer's head template to pydeface's average head.

Ears are NOT part of the face label: pydeface leaves them, they are rarely identifying
on their own, and removing them takes signal that some pipelines (e.g. head-motion
or head-model work) need. This is a documented product decision (README).

Run as ``python -m deepdefacer.train.labels --out labels/`` (training-only extra:
``pip install .[train]``). Labels are written as small uint8 ``.nii.gz`` files with
a manifest recording the command; training never redoes registration.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from deepdefacer.conform import plausible_affine
from deepdefacer.train.data import DATA_ROOT, split, training_heads


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

    # mridefacer's head template is cut below the face (its lower slices are exactly 0):
    # register it as the fixed image with a mask of its non-zero field of view, so the
    # missing neck does not pull the fit, then bring its brain across with the inverse.
    pydeface_head = ants.image_read(str(paths["head"]))
    mridefacer_head = ants.image_read(str(templates / "mridefacer_head_tmpl.nii.gz"))
    fov = mridefacer_head.new_image_like((mridefacer_head.numpy() != 0).astype("float32"))
    brain_img = ants.image_read(str(templates / "mridefacer_head_tmpl_brain.nii.gz"))
    brain_img = (brain_img > 0).astype("float32")
    with random_seed(ants, 1):
        reg = ants.registration(mridefacer_head, pydeface_head, type_of_transform="Affine",
                                mask=fov, random_seed=1)
    warped = ants.apply_transforms(pydeface_head, brain_img, reg["invtransforms"],
                                   whichtoinvert=[True], interpolator="linear")
    brain = warped.numpy() > 0.5

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
    frontal pole (docs/model.md); a deformable fit (at 2 mm) follows the brain's edge.
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


def save_overlay(head_path: Path, face: np.ndarray, brain: np.ndarray, png_path: Path) -> None:
    """Three orthogonal slices through the face with both labels outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = nib.as_closest_canonical(nib.load(head_path))
    ornt = nib.orientations.io_orientation(nib.load(head_path).affine)
    tr = lambda m: nib.orientations.apply_orientation(m, ornt)  # noqa: E731
    data, face_c, brain_c = img.get_fdata(), tr(face), tr(brain)
    centre = np.array(np.nonzero(face_c)).mean(axis=1).astype(int) if face_c.any() else np.array(data.shape) // 2
    brain_c_centre = np.array(np.nonzero(brain_c)).mean(axis=1).astype(int) if brain_c.any() else centre
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    cuts = [
        (data[brain_c_centre[0]], face_c[brain_c_centre[0]], brain_c[brain_c_centre[0]], "sagittal"),
        (data[:, centre[1]], face_c[:, centre[1]], brain_c[:, centre[1]], "coronal"),
        (data[:, :, centre[2]], face_c[:, :, centre[2]], brain_c[:, :, centre[2]], "axial"),
    ]
    for ax, (sl, fm, bm, name) in zip(axes, cuts):
        ax.imshow(np.rot90(sl), cmap="gray")
        if fm.any():
            ax.contour(np.rot90(fm), [0.5], colors="r", linewidths=1)
        if bm.any():
            ax.contour(np.rot90(bm), [0.5], colors="y", linewidths=1)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(f"{head_path.name}: face (red), brain (yellow)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=55)
    plt.close(fig)


def brain_contact_sheet(head_paths, label_dir: Path, png_path: Path, columns: int = 10) -> int:
    """One sagittal slice a head, affine brain (yellow) and SyN brain (cyan) outlined.

    The slice is 8 mm off the midline (through the frontal pole, not the falx). Returns
    the number of heads drawn: those with both brains in ``label_dir``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiles = []
    for head_path in head_paths:
        name = label_name(head_path)
        affine_path, syn_path = (label_dir / f"{name}_{kind}.nii.gz" for kind in ("brain", "brainsyn"))
        if not (affine_path.exists() and syn_path.exists()):
            continue
        img = nib.load(head_path)
        ornt = nib.orientations.io_orientation(img.affine)
        canon = [nib.orientations.apply_orientation(np.asarray(v), ornt)
                 for v in (img.dataobj, nib.load(affine_path).dataobj, nib.load(syn_path).dataobj)]
        zooms = np.array(img.header.get_zooms()[:3])[ornt[:, 0].astype(int)]
        brain = canon[1] > 0
        x = int(np.clip(np.array(np.nonzero(brain))[0].mean() + 8 / zooms[0], 0, brain.shape[0] - 1)) \
            if brain.any() else brain.shape[0] // 2
        tiles.append((name, [np.rot90(v[x].astype(np.float32)) for v in canon], zooms[2] / zooms[1]))
    if not tiles:
        return 0
    rows = -(-len(tiles) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (name, (sl, affine_brain, syn_brain), aspect) in zip(axes.ravel(), tiles):
        ax.imshow(sl, cmap="gray", aspect=aspect, vmax=np.percentile(sl, 99.5))
        for mask, colour in ((affine_brain, "y"), (syn_brain, "c")):
            if mask.any():
                ax.contour(mask, [0.5], colors=colour, linewidths=0.6)
        ax.set_title(name, fontsize=6)
    fig.suptitle("brain labels: affine (yellow), SyN (cyan)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)
    plt.close(fig)
    return len(tiles)


def _save_atomic(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    # Temporary name + rename: a killed run never leaves a truncated label.
    tmp = path.with_name(path.name + ".part.nii.gz")
    nib.save(nib.Nifti1Image(array, affine), tmp)
    os.replace(tmp, path)


def label_name(head_path: Path) -> str:
    return head_path.name.replace(".nii.gz", "").replace(".nii", "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("labels"), help="label folder")
    parser.add_argument("--png", type=Path, default=Path("labels_work/png"), help="overlay folder")
    parser.add_argument("--shard", default="0/1", help="i/n: process every n-th head from i")
    parser.add_argument("--include-heads", action="store_true",
                        help="also label the validation heads in shared/data/heads")
    parser.add_argument("--deformable-brain", action="store_true",
                        help="only write <name>_brainsyn.nii.gz, the deformable brain used for scoring")
    parser.add_argument("--contact-sheet", type=Path, metavar="PNG",
                        help="only draw the affine and SyN brains of --sets on one sheet")
    parser.add_argument("--sets", nargs="+", choices=("train", "validation", "heads"),
                        help="label these sets of deepdefacer.train.data.split(), in this order")
    args = parser.parse_args(argv)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    shard_i, shard_n = (int(v) for v in args.shard.split("/"))
    if args.contact_sheet:
        heads = [path for name in (args.sets or ("train",)) for path in split()[name]]
        drawn = brain_contact_sheet(heads[shard_i::shard_n], args.out, args.contact_sheet)
        print(f"{args.contact_sheet}: {drawn} heads")
        return 0
    template = prepare_template(Path("labels_work/template"))
    args.out.mkdir(parents=True, exist_ok=True)
    args.png.mkdir(parents=True, exist_ok=True)
    if args.sets:
        parts = split()
        heads = [path for name in args.sets for path in parts[name]]
    else:
        heads = training_heads(include_validation_heads=args.include_heads)
        # Most varied first (FLAIR, templates), so a training run can start before all are done.
        priority = ("nichart", "templates", "ixi", "heads")
        heads.sort(key=lambda p: priority.index(p.parent.name) if p.parent.name in priority else 9)
    rows = []
    for index, head_path in enumerate(heads):
        if index % shard_n != shard_i:
            continue
        name = label_name(head_path)
        if args.deformable_brain:
            path = args.out / f"{name}_brainsyn.nii.gz"
            if not path.exists():
                brain, seconds = register_brain_deformable(head_path, template)
                _save_atomic(brain, nib.load(head_path).affine, path)
                print(f"{name}: deformable brain {brain.sum()} ({seconds:.1f} s)", flush=True)
            continue
        outputs = {mask: args.out / f"{name}_{mask}.nii.gz" for mask in MASKS}
        if all(p.exists() for p in outputs.values()):
            continue
        labels, seconds = register_labels(head_path, template)
        affine = nib.load(head_path).affine
        for mask, path in outputs.items():
            _save_atomic(labels[mask], affine, path)
        face, brain = labels["face"], labels["brain"]
        save_overlay(head_path, face, brain, args.png / f"{name}.png")
        overlap = int((face & brain).sum())
        rows.append((name, int(face.sum()), int(brain.sum()), overlap, round(seconds, 1)))
        print(f"{name}: face {face.sum()} brain {brain.sum()} overlap {overlap} ({seconds:.1f} s)",
              flush=True)
    with open(args.out / f"log_{shard_i}of{shard_n}.tsv", "a", newline="") as fh:
        csv.writer(fh, delimiter="\t").writerows(rows)
    manifest = args.out / "manifest.json"
    if not manifest.exists():
        manifest.write_text(json.dumps({
            "command": "python -m deepdefacer.train.labels " + " ".join(argv or sys.argv[1:]),
            "method": "antspyx Affine (mattes MI) of pydeface mean_reg2mean to each head; "
                      "face = (pydeface facemask==0) + eye capsules - brain dilated 3 mm, brain = mridefacer head_tmpl_brain>0 via "
                      "mridefacer head -> pydeface mean Affine; linear interpolation, >0.5",
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
