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
from pathlib import Path

import nibabel as nib
import numpy as np

from deepdefacer.train.data import DATA_ROOT, training_heads


def _ants():
    try:
        import ants  # noqa: WPS433 (training-only dependency)
    except ImportError as exc:  # pragma: no cover - message for users
        raise SystemExit("labels need antspyx: pip install '.[train]'") from exc
    return ants


def prepare_template(work_dir: Path) -> tuple[Path, Path, Path]:
    """Face and brain masks on pydeface's average head grid (made once)."""
    ants = _ants()
    work_dir.mkdir(parents=True, exist_ok=True)
    head_path = work_dir / "template_head.nii.gz"
    face_path = work_dir / "template_face.nii.gz"
    brain_path = work_dir / "template_brain.nii.gz"
    if head_path.exists() and face_path.exists() and brain_path.exists():
        return head_path, face_path, brain_path
    templates = DATA_ROOT / "templates"
    mean = nib.load(templates / "pydeface_mean_reg2mean.nii.gz")
    facemask = nib.load(templates / "pydeface_facemask.nii.gz")
    face = (np.asarray(facemask.dataobj) < 0.5).astype(np.uint8)
    nib.save(nib.Nifti1Image(face, facemask.affine), face_path)
    nib.save(mean, head_path)

    # mridefacer's head template is cut below the face (its lower slices are exactly 0):
    # register it as the fixed image with a mask of its non-zero field of view, so the
    # missing neck does not pull the fit, then bring its brain across with the inverse.
    pydeface_head = ants.image_read(str(head_path))
    mridefacer_head = ants.image_read(str(templates / "mridefacer_head_tmpl.nii.gz"))
    fov = mridefacer_head.new_image_like((mridefacer_head.numpy() != 0).astype("float32"))
    brain_img = ants.image_read(str(templates / "mridefacer_head_tmpl_brain.nii.gz"))
    brain_img = (brain_img > 0).astype("float32")
    reg = ants.registration(mridefacer_head, pydeface_head, type_of_transform="Affine",
                            mask=fov, random_seed=1)
    warped = ants.apply_transforms(pydeface_head, brain_img, reg["invtransforms"],
                                   whichtoinvert=[True], interpolator="linear")
    brain = (warped.numpy() > 0.5).astype(np.uint8)
    nib.save(nib.Nifti1Image(brain, mean.affine), brain_path)
    overlap = int((brain & face).sum())
    print(f"template: face {face.sum()} voxels, brain {brain.sum()} voxels, overlap {overlap}")
    return head_path, face_path, brain_path


def register_labels(head_path: Path, template: tuple[Path, Path, Path], seed: int = 1):
    """Return (face, brain) uint8 masks on the grid of ``head_path`` and the seconds taken."""
    ants = _ants()
    start = time.perf_counter()
    t_head, t_face, t_brain = template
    fixed = ants.image_read(str(head_path))
    if fixed.dimension != 3:
        raise ValueError(f"{head_path}: not 3D")
    # The face and brain are large structures: a 2 mm template and a shorter
    # multi-resolution schedule give the same fit as the 1 mm default in a third of the time.
    moving = ants.resample_image(ants.image_read(str(t_head)), (2.0, 2.0, 2.0), False, 0)
    reg = ants.registration(fixed, moving, type_of_transform="Affine", random_seed=seed,
                            aff_metric="mattes", aff_iterations=(1000, 500, 250),
                            aff_shrink_factors=(6, 4, 2), aff_smoothing_sigmas=(3, 2, 1))
    out = []
    for mask_path in (t_face, t_brain):
        mask = ants.image_read(str(mask_path)).astype("float32")
        warped = ants.apply_transforms(fixed, mask, reg["fwdtransforms"], interpolator="linear")
        out.append((warped.numpy() > 0.5).astype(np.uint8))
    return out[0], out[1], time.perf_counter() - start


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


def label_name(head_path: Path) -> str:
    return head_path.name.replace(".nii.gz", "").replace(".nii", "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("labels"), help="label folder")
    parser.add_argument("--png", type=Path, default=Path("labels_work/png"), help="overlay folder")
    parser.add_argument("--shard", default="0/1", help="i/n: process every n-th head from i")
    parser.add_argument("--include-heads", action="store_true",
                        help="also label the validation heads in shared/data/heads")
    args = parser.parse_args(argv)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    shard_i, shard_n = (int(v) for v in args.shard.split("/"))
    template = prepare_template(Path("labels_work/template"))
    args.out.mkdir(parents=True, exist_ok=True)
    args.png.mkdir(parents=True, exist_ok=True)
    heads = training_heads(include_validation_heads=args.include_heads)
    # Most varied first (FLAIR, templates), so a training run can start before all are done.
    priority = ("nichart", "templates", "ixi", "heads")
    heads.sort(key=lambda p: priority.index(p.parent.name) if p.parent.name in priority else 9)
    rows = []
    for index, head_path in enumerate(heads):
        if index % shard_n != shard_i:
            continue
        name = label_name(head_path)
        face_out = args.out / f"{name}_face.nii.gz"
        brain_out = args.out / f"{name}_brain.nii.gz"
        if face_out.exists() and brain_out.exists():
            continue
        face, brain, seconds = register_labels(head_path, template)
        affine = nib.load(head_path).affine
        nib.save(nib.Nifti1Image(face, affine), face_out)
        nib.save(nib.Nifti1Image(brain, affine), brain_out)
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
                      "face = pydeface facemask==0, brain = mridefacer head_tmpl_brain>0 via "
                      "mridefacer head -> pydeface mean Affine; linear interpolation, >0.5",
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
