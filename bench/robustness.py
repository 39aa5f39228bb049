"""Robustness: the product path on validation scans made harder, scored against their labels.

    .venv/bin/python -m bench.robustness [--sets validation] [--perturbations NAME ...]
                                         [--n-procs 2] [--no-atlas-guard] [--json OUT] [--md OUT]

Each scan of the chosen sets (default: the 36 validation scans, never trained on) is
changed as a user's scan might differ from it, the reference labels (face, SyN and
affine brain, landmarks) are changed with it, and ``deepdefacer.deface`` (the shipped
defaults: model, decision parameters, atlas guard) is scored with
``deepdefacer.train.evaluate.score`` and ``passes`` exactly as ``evaluate`` does:

  none          the scan as stored
  thick_si_5mm  a 2D acquisition: whole voxels averaged along the axis nearest
  thick_ap_5mm  superior-inferior (front-back, left-right) into >= 5 mm slices;
  thick_lr_5mm  labels follow (brain and landmarks: any voxel of the slice, face: most);
                not applicable where the slices are already over 3.3 mm
  crop_nose     the field of view ends at the nose tip's centre (the front of the nose cut)
  crop_mouth    the field of view ends at the mouth (chin and neck cut)
  crop_top      the top 25 mm of the head cut
  noise_bias    training's smooth bias field (strength 0.15: x0.8-1.2) and Rician
                noise (6% of the head's 99th percentile)
  header_x3     the header's voxel sizes 3x too small (a conformed volume saved without
                its zooms): the pipeline must notice and rescale
The thick slices, crop_top and header_x3 are in millimetres of the header: they do not apply
to scans whose header is already implausible (the 64^3 volumes of heads/).

Perturbations are seeded (the noise and bias field from the scan's name); every run of the
script scores the same images. Registration runs on one ITK thread per process
(reproducible, as the CI and ``evaluate``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PERTURBATIONS = ("none", "thick_si_5mm", "thick_ap_5mm", "thick_lr_5mm", "crop_nose", "crop_mouth",
                 "crop_top", "noise_bias", "header_x3")
LABEL_KINDS = ("face", "brain", "brain_affine", "landmarks")
NOSE, MOUTH = 3, 4  # landmark values (deepdefacer.train.label_registration.LANDMARKS_VOX order, from 1)
BIAS_STRENGTH = 0.15  # training's bias field (augment.bias_field) at a mid strength: ~0.8-1.2


class NotApplicable(ValueError):
    """The perturbation does not apply to this scan (e.g. its field of view already ends there)."""


def voxel_axis(affine: np.ndarray, world_axis: int) -> int:
    """The voxel axis that moves most along RAS axis ``world_axis``."""
    return int(np.argmax(np.abs(np.asarray(affine)[world_axis, :3])))


def thick_slices(data, affine, labels, world_axis: int, slice_mm: float = 5.0):
    """Average whole voxels along one axis into slices of at least ``slice_mm``."""
    from deepdefacer.resample import voxel_sizes

    axis = voxel_axis(affine, world_axis)
    factor = int(round(slice_mm / float(voxel_sizes(affine)[axis])))
    if factor < 2:
        raise NotApplicable(f"its slices along that axis are already "
                            f"{float(voxel_sizes(affine)[axis]):.1f} mm")
    keep = (data.shape[axis] // factor) * factor

    def blocks(array):
        array = np.take(array, np.arange(keep), axis=axis)
        shape = list(array.shape)
        shape[axis: axis + 1] = [keep // factor, factor]
        return array.reshape(shape)

    out = blocks(data).mean(axis=axis + 1, dtype=np.float32)
    new_labels = {}
    for kind, array in labels.items():
        stacked = blocks(array)
        if kind == "face":
            new_labels[kind] = (stacked.astype(np.float32).mean(axis=axis + 1) >= 0.5).astype(np.uint8)
        else:  # brain and landmarks: a slice containing any of it counts as it
            new_labels[kind] = stacked.max(axis=axis + 1)
    scale = np.eye(4)
    scale[axis, axis] = factor
    scale[axis, 3] = (factor - 1) / 2.0
    return out, np.asarray(affine) @ scale, new_labels


def crop_world(data, affine, labels, world_axis: int, limit_mm: float, keep_below: bool):
    """Keep the voxels whose RAS coordinate along ``world_axis`` is below (or above) ``limit_mm``."""
    axis = voxel_axis(affine, world_axis)
    index = np.arange(data.shape[axis])
    # The RAS coordinate of each slice's centre along world_axis.
    points = np.tile((np.array(data.shape, float) - 1) / 2.0, (len(index), 1))
    points[:, axis] = index
    coords = points @ np.asarray(affine)[world_axis, :3] + np.asarray(affine)[world_axis, 3]
    inside = np.nonzero(coords <= limit_mm if keep_below else coords >= limit_mm)[0]
    if len(inside) in (0, len(index)):
        raise NotApplicable(f"the field of view does not reach {limit_mm:.0f} mm on RAS axis {world_axis}")
    lo, hi = int(inside.min()), int(inside.max()) + 1
    where = [slice(None)] * 3
    where[axis] = slice(lo, hi)
    where = tuple(where)
    shift = np.eye(4)
    shift[axis, 3] = lo
    return data[where], np.asarray(affine) @ shift, {k: v[where] for k, v in labels.items()}


def landmark_world(affine, landmarks, value: int) -> np.ndarray:
    spot = np.argwhere(landmarks == value)
    if len(spot) < 5:
        raise NotApplicable(f"landmark {value} is outside the field of view")
    ijk = spot.mean(axis=0)
    return np.asarray(affine)[:3, :3] @ ijk + np.asarray(affine)[:3, 3]


def head_top_mm(data, affine) -> float:
    from deepdefacer.conform import head_box_ras

    return float(head_box_ras(data, affine)[1][2])


def noise_bias(data, name: str):
    from deepdefacer.train.augment import bias_field

    rng = np.random.default_rng(zlib.crc32(name.encode()))
    sigma = 0.06 * float(np.percentile(data[data > np.percentile(data, 50)], 99))
    biased = data * bias_field(data.shape, rng, strength=BIAS_STRENGTH)
    real = biased + rng.normal(0, sigma, data.shape)
    imaginary = rng.normal(0, sigma, data.shape)
    return np.sqrt(real ** 2 + imaginary ** 2).astype(np.float32)


# Defined in millimetres of the header: meaningless where the header's voxel sizes are wrong.
IN_HEADER_MM = ("thick_si_5mm", "thick_ap_5mm", "thick_lr_5mm", "crop_top", "header_x3")


def perturb(kind: str, data, affine, labels, name: str):
    """(data, affine, labels) of the scan changed by ``kind``."""
    if kind == "none":
        return data, affine, labels
    if kind in IN_HEADER_MM:
        from deepdefacer.conform import plausible_affine

        if plausible_affine(data, affine)[1] != 1.0:
            raise NotApplicable("the header's voxel sizes are already implausible (the pipeline rescales it)")
    if kind.startswith("thick_"):
        world_axis = {"si": 2, "ap": 1, "lr": 0}[kind.split("_")[1]]
        return thick_slices(data, affine, labels, world_axis)
    if kind == "crop_nose":
        nose = landmark_world(affine, labels["landmarks"], NOSE)
        return crop_world(data, affine, labels, 1, float(nose[1]), keep_below=True)
    if kind == "crop_mouth":
        mouth = landmark_world(affine, labels["landmarks"], MOUTH)
        return crop_world(data, affine, labels, 2, float(mouth[2]), keep_below=False)
    if kind == "crop_top":
        return crop_world(data, affine, labels, 2, head_top_mm(data, affine) - 25.0, keep_below=True)
    if kind == "noise_bias":
        return noise_bias(data, name), affine, labels
    if kind == "header_x3":
        centre = np.asarray(affine)[:3, :3] @ ((np.array(data.shape) - 1) / 2.0) + np.asarray(affine)[:3, 3]
        shrink = np.eye(4)
        shrink[:3, :3] /= 3.0
        shrink[:3, 3] = centre - centre / 3.0
        return data, shrink @ np.asarray(affine), labels
    raise ValueError(f"unknown perturbation {kind!r}")


_DEFACER = None


def _worker_init(atlas_guard: bool):
    global _DEFACER
    from deepdefacer.pipeline import load_defacer

    _DEFACER = load_defacer("cpu", atlas_guard)


def score_one(job):
    import nibabel as nib

    from deepdefacer.pipeline import deface_with_details
    from deepdefacer.train.evaluate import passes, reference_labels, score
    from deepdefacer.train.labels import label_name

    path, kind, labels_dir = job
    name = label_name(Path(path))
    img = nib.load(path)
    data = img.get_fdata(dtype=np.float32)
    labels = reference_labels(Path(labels_dir), name)
    labels = {k: np.asarray(labels[k]) for k in LABEL_KINDS if k in labels}
    try:
        data, affine, labels = perturb(kind, data, img.affine, labels, name)
    except NotApplicable as exc:
        return {"head": name, "perturbation": kind, "skipped": str(exc)}
    changed = nib.Nifti1Image(np.ascontiguousarray(data, np.float32), affine)
    changed.set_qform(affine, 1)
    try:
        _, mask_img, details = deface_with_details(changed, _DEFACER)
    except Exception as exc:  # reported, not fatal: the other scans still count
        return {"head": name, "perturbation": kind, "error": f"{type(exc).__name__}: {exc}", "pass": False}
    mask = np.asarray(mask_img.dataobj).astype(bool)
    row = score(mask, data, labels["face"], labels["brain"], labels["landmarks"], labels.get("brain_affine"))
    row.update(head=name, perturbation=kind, shape=list(data.shape))
    if "AtlasGuard" in details:  # whether the registration was trusted, its overlap with the face, its start
        row["atlas_guard"] = details["AtlasGuard"]
    row["pass"] = passes(row)
    return row


def summarise(rows):
    table = {}
    for kind in dict.fromkeys(r["perturbation"] for r in rows):
        group = [r for r in rows if r["perturbation"] == kind and "skipped" not in r]
        ok = [r for r in group if "error" not in r]
        worst = min(ok, key=lambda r: r["face_removed"]) if ok else None
        table[kind] = {
            "passed": sum(r["pass"] for r in group), "scans": len(group),
            "errors": sum("error" in r for r in group),
            "worst_face_removed": None if worst is None else round(worst["face_removed"], 4),
            "worst_face_head": None if worst is None else worst["head"],
            "scans_losing_brain": sum(r.get("brain_removed_voxels", 0) > 0 for r in ok),
            "brain_voxels_removed": sum(r.get("brain_removed_voxels", 0) for r in ok),
            "landmarks_kept": sum(sum(r.get(k) is False for k in ("eye_left", "eye_right", "nose", "mouth"))
                                  for r in ok),
            "failed": [r["head"] for r in group if not r["pass"]],
            "not_applicable": sum(r["perturbation"] == kind and "skipped" in r for r in rows),
        }
    return table


def markdown(table, args) -> str:
    lines = ["| perturbation | pass | worst face removed | scans losing brain (voxels) | landmarks kept | failing |"
             " not applicable |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for kind, t in table.items():
        worst = ("-" if t["worst_face_removed"] is None
                 else f"{100 * t['worst_face_removed']:.1f}% ({t['worst_face_head']})")
        failing = ", ".join(f"`{h}`" for h in t["failed"]) or "-"
        lines.append(f"| {kind} | {t['passed']}/{t['scans']} | {worst} | {t['scans_losing_brain']} "
                     f"({t['brain_voxels_removed']}) | {t['landmarks_kept']} | {failing} | {t['not_applicable']} |")
    guard = "on (the default)" if args.atlas_guard else "off (`--no-atlas-guard`)"
    return (f"Sets: {', '.join(args.sets)}; atlas guard {guard}; one ITK thread per process.\n\n"
            + "\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["validation"])
    parser.add_argument("--perturbations", nargs="+", choices=PERTURBATIONS, default=list(PERTURBATIONS))
    parser.add_argument("--labels", type=Path, default=ROOT / "labels")
    parser.add_argument("--n-procs", type=int, default=2)
    parser.add_argument("--atlas-guard", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--md", type=Path, help="write the table as markdown here")
    parser.add_argument("--rows", type=Path, help="a .jsonl file of scored rows: read back (those jobs are "
                        "not rerun) and appended to, so an interrupted run resumes")
    args = parser.parse_args(argv)
    # One thread per worker: reproducible registrations, and the workers share the cores.
    for variable in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ[variable] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from deepdefacer.train.data import split
    from deepdefacer.train.labels import label_name

    parts = split()
    paths = [p for s in args.sets for p in parts[s] if (args.labels / f"{label_name(p)}_face.nii.gz").exists()]
    jobs = [(str(p), kind, str(args.labels)) for kind in args.perturbations for p in paths]
    rows = []
    if args.rows and args.rows.exists():
        rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()]
        done = {(r["head"], r["perturbation"]) for r in rows}
        jobs = [j for j in jobs if (label_name(Path(j[0])), j[1]) not in done]
    with ProcessPoolExecutor(args.n_procs, initializer=_worker_init, initargs=(args.atlas_guard,)) as pool:
        for row in pool.map(score_one, jobs):
            rows.append(row)
            if args.rows:
                with open(args.rows, "a") as fh:
                    fh.write(json.dumps(row, default=float) + "\n")
            if "skipped" in row:
                print(f"{row['perturbation']}\t{row['head']}\tskipped: {row['skipped']}", flush=True)
                continue
            status = "error: " + row["error"] if "error" in row else (
                f"face {row['face_removed']:.3f} brain {row['brain_removed_voxels']} "
                f"kept {[k for k in ('eye_left', 'eye_right', 'nose', 'mouth') if row[k] is False]}")
            print(f"{row['perturbation']}\t{row['head']}\t{'pass' if row['pass'] else 'FAIL'}\t{status}", flush=True)
    table = summarise(rows)
    text = markdown(table, args)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"summary": table, "rows": rows}, indent=1, default=float))
    if args.md:
        args.md.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
