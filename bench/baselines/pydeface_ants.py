"""The pydeface method, with antspyx in place of FSL FLIRT: time it on one scan; write JSON.

    python bench/baselines/pydeface_ants.py --scan head.nii.gz --repeats 1 \
        --mask-out removed.nii.gz --json out.json

pydeface 2.0 (``pydeface/__main__.py``) does: FLIRT the template ``mean_reg2mean`` to the
input (12 dof, mutual information), apply that matrix to ``facemask`` (1 = keep, 0 = face)
with nearest-neighbour interpolation, and multiply the input by it. FSL is not available
here, so ``ants.registration(type_of_transform="Affine")`` (12 dof, Mattes mutual
information, ANTs' default 4-level schedule at full resolution) stands in for FLIRT, and
``ants.apply_transforms(interpolator="nearestNeighbor")`` for ``flirt -applyxfm``. As in
pydeface, voxels that the warped template does not cover read 0 and are zeroed too.

Timed per repeat: read the scan, register, warp the mask, multiply, write the defaced image
(the same file-to-file span as the other methods); the registration alone is also reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

TEMPLATES = Path(os.environ.get("DEEPDEFACER_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")) / "templates"
TEMPLATE = TEMPLATES / "pydeface_mean_reg2mean.nii.gz"
FACEMASK = TEMPLATES / "pydeface_facemask.nii.gz"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", required=True, type=Path)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mask-out", required=True, type=Path, help="removed voxels (uint8, 1 = removed)")
    parser.add_argument("--json", required=True, type=Path)
    args = parser.parse_args(argv)

    start_import = time.perf_counter()
    import ants
    import nibabel as nib
    import numpy as np

    import_seconds = time.perf_counter() - start_import
    template = ants.image_read(str(TEMPLATE))
    facemask = ants.image_read(str(FACEMASK))
    seconds, registration, keep = [], [], None
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            start = time.perf_counter()
            img = nib.load(args.scan)
            data = img.get_fdata()
            fixed = ants.image_read(str(args.scan))
            start_reg = time.perf_counter()
            reg = ants.registration(fixed, template, type_of_transform="Affine", random_seed=args.seed)
            registration.append(time.perf_counter() - start_reg)
            warped = ants.apply_transforms(fixed, facemask, reg["fwdtransforms"],
                                           interpolator="nearestNeighbor")
            keep = warped.numpy().reshape(data.shape)
            out = nib.Nifti1Image(data * keep, img.affine, img.header)
            nib.save(out, Path(tmp) / "defaced.nii.gz")
            seconds.append(time.perf_counter() - start)
            for path in reg["fwdtransforms"] + reg["invtransforms"]:
                if os.path.isfile(path) and path.startswith(tempfile.gettempdir()):
                    os.unlink(path)
    removed = (keep < 0.5).astype(np.uint8)
    nib.save(nib.Nifti1Image(removed, img.affine), args.mask_out)
    result = {
        "method": "pydeface-ants",
        "scan": str(args.scan),
        "repeats": args.repeats,
        "seconds": seconds,
        "registration_seconds": registration,
        "import_seconds": import_seconds,
        "peak_rss_mb_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mask_removed": str(args.mask_out),
        "versions": {"antspyx": ants.__version__, "nibabel": nib.__version__},
    }
    args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
