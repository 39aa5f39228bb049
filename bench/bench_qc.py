"""Benchmark: seconds that the face check and QC add per scan.

    python -m bench.bench_qc [--repeat 5] [--out DIR] [--model]

For every head in ../shared/data/heads: deface it (a geometric slab cut, or the
shipped model with --model), then time, on images already in memory (the BIDS app
has them loaded for defacing), `repeat` times each:
  verify    the face check every scan must pass (deepdefacer.qc.verify), as the job runs it
  qc        `qc_scan` (renders, figures, verdict JSON) after it, reusing its volumes, as the
            job runs it
  qc alone  `qc_scan` without the check's volumes (the baseline: QC before the check was a gate)
  check     `check_image` alone, what deepdefacer-check runs per scan
and prints the medians per scan, the median over scans, and the ratio of the job's
added time (verify + qc) to QC alone in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from deepdefacer.qc.facecheck import check_image
from deepdefacer.qc.participant import qc_scan
from deepdefacer.qc.verify import verify_defacing
from tests.qc_helpers import head_paths, slab_deface


def in_memory(img):
    """A copy whose array is already decompressed, as the app holds it."""
    data = np.asanyarray(img.dataobj)
    return nib.Nifti1Image(data, img.affine, img.header)


def defaced_by_model(img):
    from deepdefacer.pipeline import deface

    return deface(img)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, help="keep the figures here (default: a temporary folder)")
    parser.add_argument("--model", action="store_true", help="deface with deepdefacer.deface instead of a slab cut")
    args = parser.parse_args(argv)

    paths = head_paths()
    if not paths:
        print("no heads found in ../shared/data/heads", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_qc_"))
    columns = ("verify", "qc", "qc alone", "check")
    print(f"{'scan':32s} {'shape':>16s} " + " ".join(f"{c + ' s':>10s}" for c in columns) + "  verified")
    medians = {column: [] for column in columns}
    for path in paths:
        original = in_memory(nib.load(path))
        defaced, mask = defaced_by_model(original) if args.model else slab_deface(original)
        defaced, mask = in_memory(defaced), in_memory(mask)
        removed = np.asanyarray(mask.dataobj) > 0
        stem = path.name.split(".")[0]
        times = {column: [] for column in columns}
        for _ in range(args.repeat):
            started = time.perf_counter()
            verification = verify_defacing(original, defaced, removed)
            times["verify"].append(time.perf_counter() - started)
            started = time.perf_counter()
            qc_scan(original, defaced, mask, out, stem, verification=verification)
            times["qc"].append(time.perf_counter() - started)
            started = time.perf_counter()
            qc_scan(original, defaced, mask, out, stem)
            times["qc alone"].append(time.perf_counter() - started)
            started = time.perf_counter()
            check_image(defaced)
            times["check"].append(time.perf_counter() - started)
        for column in columns:
            medians[column].append(statistics.median(times[column]))
        print(f"{path.name:32s} {'x'.join(map(str, original.shape[:3])):>16s} "
              + " ".join(f"{medians[c][-1]:10.2f}" for c in columns) + f"  {verification.verified}",
              flush=True)
    over = {column: statistics.median(values) for column, values in medians.items()}
    print(f"median over {len(paths)} scans: " + ", ".join(f"{c} {over[c]:.2f} s" for c in columns)
          + f"; the job's check and QC (verify + qc) take {(over['verify'] + over['qc']) / over['qc alone']:.2f}x "
          f"QC alone; figures in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
