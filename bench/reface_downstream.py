"""What defacing and refacing do to what comes after: affine and rigid registrations, a brain mask.

For each of the 48 validation scans (``deepdefacer.train.data.split()``: 36 IXI/NiChart heads and
the 12 heads of ``../shared/data/heads``) the original is defaced and refaced with the same mask
(``--mode deface`` and ``--mode reface``) and refaced with the ears removed (``--mode reface
--remove-ears``), and on each version:

* **registration**: the atlas guard's affine fit of the average head (``deepdefacer.atlas``, the
  same code every run uses, a stand-in for FLIRT-like tools): where it puts the atlas's brain in
  the scan, against where the original's fit puts it (mm, over the atlas brain's voxels: median
  and maximum);
* **noise**: the original's own fit with other sample points (``seed`` + 1), the registration's
  noise that the others are measured against;
* **brain mask**: the network's brain output on the scan's grid (probability above the model
  card's brain threshold), Dice against the original's;
* **antspyx to MNI152**: an antspyx affine registration (Mattes, the FLIRT-like step pydeface runs)
  of FSL's MNI152 2 mm head to the scan at 2 mm: where it carries the original's brain voxels,
  against where the original's own fit carries them (mm); its noise: the original with another
  seed.

And for the NiChart validation people, each with a T1w and a FLAIR: an antspyx **rigid**
registration of the FLAIR to the T1w (both in the same version: original, defaced, refaced,
refaced with the ears removed), the displacement at the T1w's brain against the original pair's.

Reported per version: the median and the worst over the scans, leaving out scans whose header's voxel
sizes are implausible for a head (the fit here uses the header as it is).

    .venv/bin/python -m bench.reface_downstream [--limit N] [--json docs/reface_downstream.json] \
        [--plot docs/reface_downstream.png]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")  # antspyx reruns identical

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from deepdefacer import atlas
from deepdefacer.conform import head_box_ras, plausible_affine, to_native
from deepdefacer.nifti import Volume, load_volume
from deepdefacer.pipeline import load_defacer, predict
from deepdefacer.train.data import DATA_ROOT, split
from deepdefacer.train.label_registration import random_seed

VERSIONS = ("reseeded", "defaced", "refaced", "refaced+ears")  # "reseeded": the original, other sample points
MNI = DATA_ROOT / "templates" / "fsl_MNI152_T1_2mm.nii.gz"
POINTS = 4000  # brain voxels at which the antspyx fits are compared (a seeded sample)


def ants_fit(image, kind: str, moving=None, seed: int = 1, work: Path = Path(".")):
    """A 4x4 map of the fixed image's points (world, RAS mm) into the moving image's world:
    antspyx ``kind`` ("Affine" or "Rigid") registration of ``moving`` (default: MNI152) to
    ``image`` (a nibabel image) at 2 mm."""
    import ants

    def read(img, name):
        path = work / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(img.get_fdata(dtype=np.float32)), img.affine), path)
        loaded = ants.image_read(str(path))
        return ants.resample_image(loaded, (2.0, 2.0, 2.0), False, 0) if min(loaded.spacing) < 1.9 else loaded

    fixed = read(image, "fixed")
    moving_image = ants.image_read(str(MNI)) if moving is None else read(moving, "moving")
    with random_seed(ants, seed):
        reg = ants.registration(fixed, moving_image, type_of_transform=kind, random_seed=seed,
                                aff_metric="mattes")
    transform = ants.read_transform(reg["fwdtransforms"][0])
    a = np.asarray(transform.parameters[:9], float).reshape(3, 3)
    t = np.asarray(transform.parameters[9:12], float)
    c = np.asarray(transform.fixed_parameters[:3], float)
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = a, t + c - a @ c  # ITK: y = A (x - c) + t + c, in LPS
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS
    return flip @ lps @ flip


def shift_mm(fit: np.ndarray, reference: np.ndarray, points: np.ndarray) -> dict:
    shift = np.linalg.norm((fit @ points - reference @ points)[:3], axis=0)
    return {"shift_median_mm": round(float(np.median(shift)), 3), "shift_max_mm": round(float(shift.max()), 3)}


def brain_sample(brain: np.ndarray, affine: np.ndarray, rng) -> np.ndarray:
    ijk = np.argwhere(brain)
    ijk = ijk[rng.choice(len(ijk), min(POINTS, len(ijk)), replace=False)].T
    return np.asarray(affine, float) @ np.vstack([ijk, np.ones(ijk.shape[1])])


def brain_points_mm() -> np.ndarray:
    """World positions (atlas space, 4 x N) of the atlas brain's voxels."""
    model = atlas.load_atlas()
    ijk = np.argwhere(model["brain"] > 0.5).T
    return model["affine"] @ np.vstack([ijk, np.ones(ijk.shape[1])])


def measure(volume: Volume, defacer, seed: int = atlas.SEED) -> tuple[np.ndarray, np.ndarray]:
    """The atlas fit (scan world -> atlas world) and the network's brain mask on the scan's grid."""
    prediction = predict(volume.data, volume.affine, defacer.predictor)
    fit = {}
    atlas.register_brain(volume.data, volume.affine, prediction.cube_affine, defacer.predictor.plan,
                         seed=seed, fit=fit)
    brain = to_native(prediction.brain, prediction.cube_affine, volume.affine, volume.data.shape)
    return fit["world"], brain >= defacer.predictor.thresholds.brain


def with_raw(volume: Volume, raw: np.ndarray, image) -> Volume:
    return Volume(image, raw, np.asarray(image.get_fdata(dtype=np.float32)), volume.stored_header)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def versions_of(volume: Volume, refacer, ear_refacer) -> tuple:
    """(the refaced result, {version: (stored values, image)}) for the defaced, refaced and
    refaced-without-ears versions of one scan."""
    done = refacer.deface_volume(volume)
    eared = ear_refacer.deface_volume(volume)
    return done, {"defaced": (done.raw, done.image), "refaced": (done.written_raw, done.written_image),
                  "refaced+ears": (eared.written_raw, eared.written_image)}


def scan_row(path: Path, refacer, ear_refacer, points, rng, work: Path) -> dict:
    volume = load_volume(path)
    done, images = versions_of(volume, refacer, ear_refacer)
    world, brain = measure(volume, refacer)
    where = np.linalg.inv(world) @ points  # the atlas brain in the original scan's world
    scale = plausible_affine(volume.data, volume.affine, head_box_ras(volume.data, volume.affine))[1]
    row = {"scan": path.name, "refaced_written": done.refaced_raw is not None,
           "header_plausible": scale == 1.0}
    brain_points = brain_sample(brain, volume.affine, rng)
    original_mni = ants_fit(volume.img, "Affine", work=work)
    for version in VERSIONS:
        if version == "reseeded":  # the registrations' own noise: the same scan, other points
            other_world, other_brain = measure(volume, refacer, seed=atlas.SEED + 1)
            other_mni = ants_fit(volume.img, "Affine", seed=2, work=work)
        else:
            other_world, other_brain = measure(with_raw(volume, *images[version]), refacer)
            other_mni = ants_fit(images[version][1], "Affine", work=work)
        shift = np.linalg.norm((np.linalg.inv(other_world) @ points - where)[:3], axis=0)
        row[version] = {"shift_median_mm": round(float(np.median(shift)), 3),
                        "shift_max_mm": round(float(shift.max()), 3),
                        "brain_dice": round(dice(brain, other_brain), 5),
                        "mni": shift_mm(other_mni, original_mni, brain_points)}
    return row


def pair_row(t1_path: Path, flair_path: Path, refacer, ear_refacer, rng, work: Path) -> dict:
    """FLAIR -> T1w rigid, each version against the original pair."""
    t1, flair = load_volume(t1_path), load_volume(flair_path)
    _, t1_images = versions_of(t1, refacer, ear_refacer)
    _, flair_images = versions_of(flair, refacer, ear_refacer)
    _, brain = measure(t1, refacer)
    points = brain_sample(brain, t1.affine, rng)
    original = ants_fit(t1.img, "Rigid", moving=flair.img, work=work)
    row = {"pair": f"{t1_path.name} <- {flair_path.name}"}
    for version in VERSIONS:
        if version == "reseeded":
            fit = ants_fit(t1.img, "Rigid", moving=flair.img, seed=2, work=work)
        else:
            fit = ants_fit(t1_images[version][1], "Rigid", moving=flair_images[version][1], work=work)
        row[version] = shift_mm(fit, original, points)
    return row


def flair_pairs(scans: list[Path]) -> list[tuple[Path, Path]]:
    """(T1w, FLAIR) of each NiChart person among ``scans`` (named Subj<N>_T1 / Subj<N>_FL)."""
    by_name = {path.name.split(".nii")[0]: path for path in scans}
    return [(path, by_name[name[:-3] + "_FL"]) for name, path in sorted(by_name.items())
            if name.endswith("_T1") and name[:-3] + "_FL" in by_name]


def summarise(rows: list[dict], pairs: list[dict]) -> dict:
    summary = {}
    for version in VERSIONS:
        values = {key: [row[version][key] for row in rows] for key in ("shift_median_mm", "shift_max_mm", "brain_dice")}
        mni = [row[version]["mni"] for row in rows]
        summary[version] = {"shift_median_mm": statistics.median(values["shift_median_mm"]),
                            "shift_max_mm_worst": max(values["shift_max_mm"]),
                            "shift_max_mm_median": statistics.median(values["shift_max_mm"]),
                            "brain_dice_median": statistics.median(values["brain_dice"]),
                            "brain_dice_worst": min(values["brain_dice"]),
                            "mni_shift_median_mm": statistics.median(m["shift_median_mm"] for m in mni),
                            "mni_shift_max_mm_worst": max(m["shift_max_mm"] for m in mni)}
        if pairs:
            summary[version].update(
                flair_shift_median_mm=statistics.median(p[version]["shift_median_mm"] for p in pairs),
                flair_shift_max_mm_worst=max(p[version]["shift_max_mm"] for p in pairs))
    return summary


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in result["rows"] if row["header_plausible"]]
    panels = [("the atlas guard's affine fit", [[row[v]["shift_median_mm"] for row in rows] for v in VERSIONS]),
              ("antspyx affine to MNI152", [[row[v]["mni"]["shift_median_mm"] for row in rows] for v in VERSIONS])]
    if result["pairs"]:
        panels.append(("antspyx rigid, FLAIR to T1w", [[p[v]["shift_median_mm"] for p in result["pairs"]]
                                                      for v in VERSIONS]))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), sharey=True)
    for axis, (title, data) in zip(np.atleast_1d(axes), panels):
        axis.boxplot(data, showfliers=False)
        for position, values in enumerate(data, start=1):
            axis.plot(np.full(len(values), position) + np.linspace(-0.15, 0.15, len(values)), values, ".",
                      alpha=0.6, color="C0")
        axis.set_xticks(range(1, len(VERSIONS) + 1), ["noise\n(reseeded)", "defaced", "refaced", "refaced\n+ ears"])
        axis.set_yscale("log")
        axis.set_title(title, fontsize=10)
    np.atleast_1d(axes)[0].set_ylabel("displacement at the brain against the original (mm, median)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, help="the first N scans only")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path, help="a PNG of the displacements by version")
    args = parser.parse_args(argv)
    parts = split()
    scans = (parts["validation"] + parts["heads"])[:args.limit]
    refacer = load_defacer("cpu", atlas_guard=True, mode="reface")
    ear_refacer = load_defacer("cpu", atlas_guard=True, mode="reface", remove_ears=True)
    points = brain_points_mm()
    rng = np.random.default_rng(0)
    rows, pairs = [], []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        for path in scans:
            row = scan_row(path, refacer, ear_refacer, points, rng, work)
            rows.append(row)
            print(f"reface_downstream.py: {path.name}: " + "; ".join(
                f"{version} shift {row[version]['shift_median_mm']:.2f} mm, MNI "
                f"{row[version]['mni']['shift_median_mm']:.2f} mm, brain Dice {row[version]['brain_dice']:.4f}"
                for version in VERSIONS), flush=True)
        for t1_path, flair_path in flair_pairs(scans):
            pairs.append(pair_row(t1_path, flair_path, refacer, ear_refacer, rng, work))
            print(f"reface_downstream.py: {pairs[-1]['pair']}: " + "; ".join(
                f"{version} {pairs[-1][version]['shift_median_mm']:.2f} mm" for version in VERSIONS), flush=True)
    # A header whose voxel sizes are implausible for a head (the 64^3 blocks): this benchmark's
    # direct fit on the header's affine is not the method's (which rescales it first) and is
    # unstable on the original too, so those scans are listed but left out of the summary.
    kept = [row for row in rows if row["header_plausible"]]
    summary = summarise(kept, pairs)
    result = {"scans": len(rows), "summarised": len(kept),
              "left_out": [row["scan"] for row in rows if not row["header_plausible"]],
              "refaced_written": sum(row["refaced_written"] for row in rows), "summary": summary,
              "rows": rows, "pairs": pairs, "seconds": round(time.perf_counter() - started, 1)}
    for version in VERSIONS:
        s = summary[version]
        print(f"{version}: atlas brain moved {s['shift_median_mm']:.2f} mm (median of medians), worst "
              f"{s['shift_max_mm_worst']:.2f} mm; brain Dice median {s['brain_dice_median']:.4f}, "
              f"worst {s['brain_dice_worst']:.4f}; MNI152 {s['mni_shift_median_mm']:.2f} mm, worst "
              f"{s['mni_shift_max_mm_worst']:.2f} mm; FLAIR to T1w {s.get('flair_shift_median_mm', float('nan')):.2f} mm")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
