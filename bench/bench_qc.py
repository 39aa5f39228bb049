"""Benchmark: seconds that QC adds per scan (renders, checks, figures, verdict JSON).

    python bench/bench_qc.py [--repeat 5] [--out DIR]

For every head in ../shared/data/heads: deface it (a geometric slab cut, or the
shipped model with --model), then time `qc_scan` on images already in memory
(the BIDS app has them loaded for defacing), `repeat` times; prints the median
per scan and the median over scans. Also times `check_image` alone, which is
what deepdefacer-check runs per scan. Target: <= 2 s per scan.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from qc_helpers import head_paths, slab_deface  # noqa: E402

from deepdefacer.qc.facecheck import check_image  # noqa: E402
from deepdefacer.qc.participant import qc_scan  # noqa: E402


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
    print(f"{'scan':32s} {'shape':>16s} {'qc_scan s':>9s} {'check s':>8s}  verdict")
    scan_medians, check_medians = [], []
    for path in paths:
        original = in_memory(nib.load(path))
        defaced, mask = defaced_by_model(original) if args.model else slab_deface(original)
        defaced, mask = in_memory(defaced), in_memory(mask)
        scan_times, check_times = [], []
        for _ in range(args.repeat):
            started = time.perf_counter()
            result = qc_scan(original, defaced, mask, out, path.name.split(".")[0])
            scan_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            check_image(defaced)
            check_times.append(time.perf_counter() - started)
        scan_medians.append(statistics.median(scan_times))
        check_medians.append(statistics.median(check_times))
        print(f"{path.name:32s} {'x'.join(map(str, original.shape[:3])):>16s} {scan_medians[-1]:9.2f} "
              f"{check_medians[-1]:8.2f}  {result['verdict']}", flush=True)
    print(f"median over {len(paths)} scans: qc_scan {statistics.median(scan_medians):.2f} s "
          f"(max {max(scan_medians):.2f} s), check_image {statistics.median(check_medians):.2f} s "
          f"(max {max(check_medians):.2f} s); figures in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
