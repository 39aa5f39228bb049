"""What defacing and refacing do to what comes after: an affine registration and a brain mask.

For each of the 48 validation scans (``deepdefacer.train.data.split()``: 36 IXI/NiChart heads and
the 12 heads of ``../shared/data/heads``) the original is defaced and refaced with the same mask
(``--mode deface`` and ``--mode reface``), and on each of the three versions:

* **registration**: the atlas guard's affine fit of the average head (``deepdefacer.atlas``, the
  same code every run uses, a stand-in for FLIRT-like tools): where it puts the atlas's brain in
  the scan, against where the original's fit puts it (mm, over the atlas brain's voxels: median
  and maximum);
* **noise**: the original's own fit with other sample points (``seed`` + 1), the registration's
  noise that the others are measured against;
* **brain mask**: the network's brain output on the scan's grid (probability above the model
  card's brain threshold), Dice against the original's.

Reported per version: the median and the worst over the scans, leaving out scans whose header's voxel
sizes are implausible for a head (the fit here uses the header as it is).

    .venv/bin/python -m bench.reface_downstream [--limit N] [--json docs/reface_downstream.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from deepdefacer import atlas
from deepdefacer.conform import head_box_ras, plausible_affine, to_native
from deepdefacer.nifti import Volume, load_volume
from deepdefacer.pipeline import load_defacer, predict
from deepdefacer.train.data import split

VERSIONS = ("reseeded", "defaced", "refaced")  # "reseeded": the original, its fit from other sample points


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, help="the first N scans only")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    parts = split()
    scans = (parts["validation"] + parts["heads"])[:args.limit]
    refacer = load_defacer("cpu", atlas_guard=True, mode="reface")
    points = brain_points_mm()
    rows = []
    started = time.perf_counter()
    for path in scans:
        volume = load_volume(path)
        done = refacer.deface_volume(volume)
        world, brain = measure(volume, refacer)
        where = np.linalg.inv(world) @ points  # the atlas brain in the original scan's world
        scale = plausible_affine(volume.data, volume.affine, head_box_ras(volume.data, volume.affine))[1]
        row = {"scan": path.name, "refaced_written": done.refaced_raw is not None,
               "header_plausible": scale == 1.0}
        images = {"defaced": (done.raw, done.image), "refaced": (done.written_raw, done.written_image)}
        for version in VERSIONS:
            if version == "reseeded":  # the registration's own noise: the same scan, other points
                other_world, other_brain = measure(volume, refacer, seed=atlas.SEED + 1)
            else:
                other_world, other_brain = measure(with_raw(volume, *images[version]), refacer)
            shift = np.linalg.norm((np.linalg.inv(other_world) @ points - where)[:3], axis=0)
            row[version] = {"shift_median_mm": round(float(np.median(shift)), 3),
                            "shift_max_mm": round(float(shift.max()), 3),
                            "brain_dice": round(dice(brain, other_brain), 5)}
        rows.append(row)
        print(f"reface_downstream.py: {path.name}: " + "; ".join(
            f"{version} shift {row[version]['shift_median_mm']:.2f}/{row[version]['shift_max_mm']:.2f} mm, "
            f"brain Dice {row[version]['brain_dice']:.4f}" for version in VERSIONS), flush=True)
    # A header whose voxel sizes are implausible for a head (the 64^3 blocks): this benchmark's
    # direct fit on the header's affine is not the method's (which rescales it first) and is
    # unstable on the original too, so those scans are listed but left out of the summary.
    kept = [row for row in rows if row["header_plausible"]]
    summary = {}
    for version in VERSIONS:
        values = {key: [row[version][key] for row in kept] for key in kept[0][version]}
        summary[version] = {"shift_median_mm": statistics.median(values["shift_median_mm"]),
                            "shift_max_mm_worst": max(values["shift_max_mm"]),
                            "shift_max_mm_median": statistics.median(values["shift_max_mm"]),
                            "brain_dice_median": statistics.median(values["brain_dice"]),
                            "brain_dice_worst": min(values["brain_dice"])}
    result = {"scans": len(rows), "summarised": len(kept),
              "left_out": [row["scan"] for row in rows if not row["header_plausible"]], "refaced_written": sum(row["refaced_written"] for row in rows), "summary": summary,
              "rows": rows, "seconds": round(time.perf_counter() - started, 1)}
    for version in VERSIONS:
        s = summary[version]
        print(f"{version}: atlas brain moved {s['shift_median_mm']:.2f} mm (median of medians), worst "
              f"{s['shift_max_mm_worst']:.2f} mm; brain Dice median {s['brain_dice_median']:.4f}, "
              f"worst {s['brain_dice_worst']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
