"""Score a model against the reference labels: ``python -m deepdefacer.train.evaluate``.

Per head: fraction of the reference face region removed (within the head), whether each
landmark (both eyes, nose tip, mouth) is removed, brain voxels removed, Dice against the
reference, seconds and peak memory (the arrays ``deface`` allocates, by ``tracemalloc``; the whole
process's peak, framework and model included, is in ``bench/bench_deface.py``); then the worst case
over every head. Also the consistency checks: the same mask for all 48 axis orders and under
rotations.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from deepdefacer.conform import head_mask_coarse
from deepdefacer.train.data import label_name, split
from deepdefacer.train.label_registration import LANDMARKS_VOX
from deepdefacer.train.perturbations import rotation_matrix

LANDMARK_NAMES = tuple(LANDMARKS_VOX)
LANDMARK_REMOVED = 0.9  # a landmark counts as removed when 90% of its 6 mm sphere is


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def head_region(data: np.ndarray) -> np.ndarray:
    """Voxels of the head (skin and inside), at the scan's own resolution."""
    head = head_mask_coarse(data)
    return ndimage.binary_fill_holes(ndimage.binary_dilation(head, iterations=2))


def reference_labels(labels_dir: Path, name: str) -> dict:
    """face, brain, landmarks and (where made) the affine-only brain of one head.

    ``brain`` is the deformable (SyN) brain when ``<name>_brainsyn.nii.gz`` exists: it
    follows the brain's edge, where the affine brain overreaches into the frontal sinus
    and orbital roof; ``brain_affine`` is then kept for a second, stricter count.
    """
    labels = {k: np.asarray(nib.load(labels_dir / f"{name}_{k}.nii.gz").dataobj)
              for k in ("face", "brain", "landmarks")}
    deformable = labels_dir / f"{name}_brainsyn.nii.gz"
    if deformable.exists():
        labels["brain_affine"] = labels["brain"]
        labels["brain"] = np.asarray(nib.load(deformable).dataobj)
    return labels


def score(mask: np.ndarray, data: np.ndarray, face: np.ndarray, brain: np.ndarray,
          landmarks: np.ndarray, brain_affine: np.ndarray | None = None) -> dict:
    head = head_region(data)
    face_ref = face.astype(bool) & head
    removed = mask.astype(bool)
    result = {
        "face_removed": float((removed & face_ref).sum() / max(face_ref.sum(), 1)),
        "brain_removed_voxels": int((removed & brain.astype(bool)).sum()),
        "dice": dice(removed & head, face_ref),
        "face_voxels": int(face_ref.sum()),
        "brain_reference": "affine" if brain_affine is None else "deformable",
    }
    if brain_affine is not None:
        result["brain_removed_voxels_affine"] = int((removed & brain_affine.astype(bool)).sum())
    for value, name in enumerate(LANDMARK_NAMES, start=1):
        spot = landmarks == value
        if spot.sum() < 5:  # outside the field of view
            result[name] = None
        else:
            result[name] = bool((removed & spot).sum() / spot.sum() >= LANDMARK_REMOVED)
    return result


def evaluate_head(path: Path, labels_dir: Path, defacer) -> dict:
    from deepdefacer.pipeline import deface

    img = nib.load(path)
    img.get_fdata()  # read and cache before timing: timing is the method, not gunzip
    name = label_name(path)
    labels = reference_labels(labels_dir, name)
    tracemalloc.start()
    start = time.perf_counter()
    _, mask_img = deface(img, defacer)
    seconds = time.perf_counter() - start
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    mask = np.asarray(mask_img.dataobj).astype(bool)
    result = {"head": name, "seconds": round(seconds, 2), "peak_numpy_mb": round(peak_mb, 1)}
    result.update(score(mask, img.get_fdata(dtype=np.float32), labels["face"], labels["brain"],
                        labels["landmarks"], labels.get("brain_affine")))
    return result


def passes(row: dict) -> bool:
    landmarks_ok = all(row[name] in (True, None) for name in LANDMARK_NAMES)
    return row["face_removed"] >= 0.95 and row["brain_removed_voxels"] == 0 and landmarks_ok


def reoriented(img, codes: str):
    """The same image stored in another axis order (data and affine both permuted)."""
    start = nib.orientations.io_orientation(img.affine)
    target = nib.orientations.axcodes2ornt(tuple(codes))
    transform = nib.orientations.ornt_transform(start, target)
    data = nib.orientations.apply_orientation(np.asanyarray(img.dataobj), transform)
    affine = img.affine @ nib.orientations.inv_ornt_aff(transform, img.shape)
    return nib.Nifti1Image(data, affine), transform


def all_axis_codes():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((0, 1), repeat=3):
            yield "".join(("RL", "AP", "SI")[axis][flip] for axis, flip in zip(perm, signs))


def orientation_consistency(img, defacer) -> dict:
    """Dice of each axis order's mask (brought back) with the mask of the original order."""
    from deepdefacer.pipeline import deface

    reference = np.asarray(deface(img, defacer)[1].dataobj).astype(bool)
    start_codes = nib.orientations.io_orientation(img.affine)
    scores = {}
    for codes in all_axis_codes():
        other, _ = reoriented(img, codes)
        mask = np.asarray(deface(other, defacer)[1].dataobj)
        back = nib.orientations.ornt_transform(nib.orientations.io_orientation(other.affine), start_codes)
        scores[codes] = dice(nib.orientations.apply_orientation(mask, back).astype(bool), reference)
    return scores


def rotation_consistency(img, defacer, degrees=(-15, -10, -5, 5, 10, 15)) -> dict:
    """Dice with the unrotated mask when the head is rotated in the scanner (affine only)."""
    from deepdefacer.pipeline import deface

    reference = np.asarray(deface(img, defacer)[1].dataobj).astype(bool)
    centre = img.affine @ np.r_[(np.array(img.shape[:3]) - 1) / 2.0, 1]
    scores = {}
    for axis, angle in itertools.product(range(3), degrees):
        angles = [0.0, 0.0, 0.0]
        angles[axis] = np.deg2rad(angle)
        world = np.eye(4)
        world[:3, :3] = rotation_matrix(angles)
        world[:3, 3] = centre[:3] - world[:3, :3] @ centre[:3]
        rotated = nib.Nifti1Image(np.asanyarray(img.dataobj), world @ img.affine)
        mask = np.asarray(deface(rotated, defacer)[1].dataobj).astype(bool)
        scores[f"{'xyz'[axis]}{angle:+d}"] = dice(mask, reference)
    return scores


def summarise(rows: list[dict]) -> dict:
    if not rows:
        return {}
    worst = min(rows, key=lambda r: r["face_removed"])
    return {
        "heads": len(rows), "passed": sum(r["pass"] for r in rows),
        "worst_face_removed": {"head": worst["head"], "value": worst["face_removed"]},
        "max_brain_removed_voxels": max(r["brain_removed_voxels"] for r in rows),
        "heads_with_brain_removed": sum(r["brain_removed_voxels"] > 0 for r in rows),
        "heads_with_affine_brain_removed": sum(r.get("brain_removed_voxels_affine", 0) > 0 for r in rows),
        "landmarks_missed": sum(1 for r in rows for n in LANDMARK_NAMES if r[n] is False),
        "median_face_removed": float(np.median([r["face_removed"] for r in rows])),
        "median_dice": float(np.median([r["dice"] for r in rows])),
        "median_seconds": float(np.median([r["seconds"] for r in rows])),
    }


def write_card(defacer, rows: list[dict], consistency: dict, command: str) -> None:
    """Record the decision parameters and the metrics in the model's card (its .json)."""
    predictor, t = defacer.predictor, defacer.predictor.thresholds
    card_path = predictor.path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["thresholds"] = {"face": t.face, "brain": t.brain, "brain_margin_mm": t.brain_margin_mm,
                          "face_dilate_mm": t.face_dilate_mm, "growth_margin_mm": t.growth_margin_mm,
                          "edge_mm": t.edge_mm}
    card["inference"] = {**card.get("inference", {}), "mirror_average": predictor.mirror_average}
    keep = ("head", "face_removed", "brain_removed_voxels", "brain_removed_voxels_affine",
            "brain_reference", "dice", *LANDMARK_NAMES, "seconds")
    card["metrics"] = {
        "command": command,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **{set_name: summarise([r for r in rows if r["set"] == set_name])
           for set_name in dict.fromkeys(r["set"] for r in rows)},
        "per_head": [{k: r[k] for k in keep if k in r} | {"set": r["set"]} for r in rows],
    }
    if consistency:
        card["metrics"]["consistency"] = {k: consistency[k] for k in ("axis_orders_min_dice",
                                                                      "rotations_min_dice")}
    card_path.write_text(json.dumps(card, indent=2, default=float) + "\n")


def scoring_parser(description: str) -> argparse.ArgumentParser:
    """The arguments of every command that scores a model: labels, model and sets of heads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--labels", type=Path, default=Path(__file__).resolve().parents[2] / "labels")
    parser.add_argument("--model", type=Path, help="a .keras file with its model card (.json) beside it "
                        "(default: the shipped model)")
    parser.add_argument("--sets", nargs="+", default=["validation", "heads"])
    return parser


def main(argv=None) -> int:
    import dataclasses

    from deepdefacer.pipeline import Defacer
    from deepdefacer.predictor import load_predictor

    parser = scoring_parser(__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="only these heads of the sets (label names, e.g. colin27_t1w_2mm)")
    parser.add_argument("--json", type=Path, help="write all results here")
    parser.add_argument("--consistency", action="store_true", help="48 axis orders and rotations")
    parser.add_argument("--face-threshold", type=float, help="override the model card's")
    parser.add_argument("--brain-margin-mm", type=float, help="override the model card's")
    parser.add_argument("--face-dilate-mm", type=float, help="override the model card's")
    parser.add_argument("--brain-threshold", type=float, help="override the model card's")
    parser.add_argument("--growth-margin-mm", type=float, help="override the model card's")
    parser.add_argument("--edge-mm", type=float, help="override the model card's")
    parser.add_argument("--mirror-average", action=argparse.BooleanOptionalAction,
                        help="average the prediction with its left-right mirror's (override the card's)")
    parser.add_argument("--atlas-guard", action=argparse.BooleanOptionalAction, default=True,
                        help="also guard an average brain registered to each scan (deepdefacer.atlas; "
                             "default: on, as the product; --no-atlas-guard: the network alone)")
    parser.add_argument("--write-card", action="store_true",
                        help="store the decision parameters used and these metrics in the model card")
    args = parser.parse_args(argv)
    parts = split()
    missing = sorted(set(args.only or ()) - {label_name(p) for name in args.sets for p in parts[name]})
    if missing:
        parser.error(f"--only: not in --sets {' '.join(args.sets)}: {' '.join(missing)}")
    if args.atlas_guard and args.write_card:
        parser.error("--write-card records the model's own decision: use it with --no-atlas-guard")
    predictor = load_predictor("cpu", args.model)
    overrides = {field: getattr(args, option) for option, field in (
        ("face_threshold", "face"), ("brain_threshold", "brain"), ("brain_margin_mm", "brain_margin_mm"),
        ("face_dilate_mm", "face_dilate_mm"), ("growth_margin_mm", "growth_margin_mm"),
        ("edge_mm", "edge_mm")) if getattr(args, option) is not None}
    predictor = dataclasses.replace(
        predictor, thresholds=dataclasses.replace(predictor.thresholds, **overrides),
        mirror_average=predictor.mirror_average if args.mirror_average is None else args.mirror_average)
    defacer = Defacer(predictor, args.atlas_guard)
    rows = []
    print("set\thead\tface_removed\teyes\tnose\tmouth\tbrain_removed\t(affine brain)\tdice\tseconds"
          "\tpeak_numpy_mb\tpass")
    for set_name in args.sets:
        for path in parts[set_name]:
            if args.only and label_name(path) not in args.only:
                continue
            if not (args.labels / f"{label_name(path)}_face.nii.gz").exists():
                print(f"{set_name}\t{label_name(path)}\t(no reference label)")
                continue
            row = evaluate_head(path, args.labels, defacer)
            row["set"] = set_name
            row["pass"] = passes(row)
            rows.append(row)
            eyes = row["eye_left"] and row["eye_right"] if None not in (row["eye_left"], row["eye_right"]) else None
            print(f"{set_name}\t{row['head']}\t{row['face_removed']:.3f}\t{eyes}\t{row['nose']}\t"
                  f"{row['mouth']}\t{row['brain_removed_voxels']}\t{row.get('brain_removed_voxels_affine', '-')}\t"
                  f"{row['dice']:.3f}\t"
                  f"{row['seconds']:.2f}\t{row['peak_numpy_mb']:.0f}\t{row['pass']}", flush=True)
    summary = summarise(rows)
    if summary:
        print(json.dumps(summary, indent=2))
    consistency = {}
    if args.consistency:
        head = nib.load(parts["heads"][0].parent / "t1w_head_ext2.nii.gz")
        orient = orientation_consistency(head, defacer)
        rot = rotation_consistency(head, defacer)
        consistency = {"axis_orders_min_dice": min(orient.values()), "rotations_min_dice": min(rot.values()),
                       "axis_orders": orient, "rotations": rot}
        print(f"48 axis orders: min Dice {min(orient.values()):.4f}; "
              f"rotations +-15 deg: min Dice {min(rot.values()):.4f}")
    if args.write_card:
        write_card(defacer, rows, consistency, " ".join(["python -m deepdefacer.train.evaluate"]
                                                         + list(argv if argv is not None else sys.argv[1:])))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary, "consistency": consistency},
                                        indent=2, default=float))
    return 0 if rows and all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
