"""Measure the face check that every defaced scan must pass (deepdefacer.qc.verify).

    python -m bench.gate_rates [--sets heads ixi nichart] [--json docs/gate_rates.json]

For every original head with a face (../shared/data: heads/ in three axis orders, the 150 IXI and
the 36 NiChart scans) it records:
  found    whether the gate finds the face on the original (its hit rate: a scan it cannot find a
           face on fails as "cannot confirm")
  passed   whether the shipped model's defacing of it passes the gate (a failure here is a false
           alarm, unless the defacing really left the nose tip: `defacing_failed`)
and the same for the head whose header lies about its orientation (the array turned 90 degrees
under an unchanged header: the face must be found from another side), and, on heads/, for the
header scaled to half and double size (wrong voxel sizes) and all 48 axis orders of two heads.
A header without orientation codes fails before the gate (deepdefacer.nifti), so the
gate is measured on such a head as the array's own axes, i.e. as a lying header.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from bench.eval_qc_rates import defacing_failed, originals, reorient
from deepdefacer.qc.verify import HEADER_VIEW, verify_defacing


def turned(img):
    """The array turned 90 degrees (face up) under the same header: a header that lies."""
    return nib.Nifti1Image(np.ascontiguousarray(np.rot90(np.asanyarray(img.dataobj), 1, (1, 2))),
                           img.affine)


def scaled(img, factor: float):
    affine = img.affine.copy()
    affine[:3, :3] *= factor
    return nib.Nifti1Image(np.asanyarray(img.dataobj), affine)


def gate_row(img, defaced, mask) -> dict:
    verification = verify_defacing(img, defaced, mask)
    return {"found": bool(verification.face_before.face_present),
            "found_in_header_view": bool(verification.face_before.face_present
                                         and verification.view == HEADER_VIEW),
            "passed": bool(verification.verified), "reason": verification.reason}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["heads", "ixi", "nichart"],
                        choices=["heads", "ixi", "nichart"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from deepdefacer.pipeline import deface, load_defacer

    defacer = load_defacer()
    rows = []
    started = time.perf_counter()
    for set_name, name, path, orientation in originals(args.sets):
        img = nib.load(path)
        if orientation is not None:
            img = reorient(img, *orientation)
        defaced, mask_img = deface(img, defacer)
        mask = np.asanyarray(mask_img.dataobj) > 0
        failed = bool(defacing_failed(img, mask_img))
        variants = {"header": (img, defaced, mask)}
        # The same defacing seen through a lying header: original, output and mask turned alike.
        variants["turned"] = (turned(img), turned(defaced), np.rot90(mask, 1, (1, 2)))
        if set_name == "heads" and orientation is None:
            for factor in (0.5, 2.0):
                small, small_mask = deface(scaled(img, factor), defacer)
                variants[f"zooms_x{factor:g}"] = (scaled(img, factor), small,
                                                  np.asanyarray(small_mask.dataobj) > 0)
        for variant, (original, output, removed) in variants.items():
            row = {"set": set_name, "scan": name, "variant": variant, "defacing_failed": failed,
                   **gate_row(original, output, removed)}
            rows.append(row)
            print(f"{set_name:8s} {name:34s} {variant:10s} found={row['found']!s:5s} "
                  f"passed={row['passed']!s:5s} {row['reason'][:90]}", flush=True)
    if "heads" in args.sets:
        rows += axis_orders()
    summary = summarise(rows)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    return 0


def axis_orders(names=("t1w_head_ext2", "chris_t1w")) -> list:
    """Every one of the 48 axis orders (array and affine changed together) of two real heads,
    defaced by a geometric slab cut made once: does the gate find the face, and pass the cut?"""
    from tests.qc_helpers import HEADS, slab_deface

    rows = []
    for name in names:
        source = nib.load(next(HEADS.glob(f"{name}.nii*")))
        for permutation in itertools.permutations(range(3)):
            for flips in itertools.product((0, 1), repeat=3):
                img = reorient(source, permutation, flips)
                defaced, mask = slab_deface(img)
                row = {"set": "axis_orders", "scan": name, "variant": f"{permutation}{flips}",
                       "defacing_failed": False,
                       **gate_row(img, defaced, np.asanyarray(mask.dataobj) > 0)}
                rows.append(row)
    return rows


def summarise(rows) -> dict:
    summary = {}
    keys = sorted({(row["set"], row["variant"]) for row in rows})
    for set_name, variant in keys:
        part = [row for row in rows if row["set"] == set_name and row["variant"] == variant]
        defaced = [row for row in part if not row["defacing_failed"]]
        summary[f"{set_name}/{variant}"] = {
            "originals": len(part), "face_found": sum(row["found"] for row in part),
            "defaced": len(defaced),
            "false_alarms": sum(not row["passed"] and row["found"] for row in defaced),
            "failed_as_cannot_confirm": sum(not row["found"] for row in part),
            "defacing_failed_and_caught": sum(not row["passed"] for row in part
                                              if row["defacing_failed"]),
            "defacing_failed": len(part) - len(defaced)}
    return summary


if __name__ == "__main__":
    sys.exit(main())
