"""Figures to review reference labels by eye: one head's labels, or many heads' brains."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from deepdefacer.train.data import label_name


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
