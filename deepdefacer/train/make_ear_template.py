"""Make the ear region that ``--remove-ears`` removes: ``python -m deepdefacer.train.make_ear_template``.

mridefacer's ``face_teeth_ear_mask`` (MIT) marks, on its own head template, the face and teeth
(one region) and each ear with the air around it (two lateral regions). The two ear regions are
carried onto pydeface's average head, the atlas guard's atlas (``label_registration.mridefacer_onto``:
the affine that brings mridefacer's brain across for the atlas), block-averaged onto the atlas's
3 mm grid and stored as a probability (uint8) with the atlas's affine in
``models/`` (deepdefacer.ears.EARS_NAME). The atlas guard's fit of a scan then places them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from deepdefacer.atlas import ATLAS_MM, load_atlas
from deepdefacer.ears import EARS_NAME
from deepdefacer.resample import block_reduce
from deepdefacer.train.data import DATA_ROOT
from deepdefacer.train.label_registration import ear_regions, mridefacer_onto

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = DATA_ROOT / "templates"


def make_ears(out: Path) -> dict:
    head_path = TEMPLATES / "pydeface_mean_reg2mean.nii.gz"
    head = nib.load(head_path)
    ears = mridefacer_onto(head_path)(ear_regions())
    reduced, affine = block_reduce(np.clip(ears, 0, 1).astype(np.float32), head.affine, 1.5 * ATLAS_MM)
    atlas = load_atlas()
    if reduced.shape != atlas["head"].shape or not np.allclose(affine, atlas["affine"]):
        raise ValueError("the ears did not come out on the atlas's grid")
    np.savez_compressed(out, ears=np.clip(np.round(reduced * 255), 0, 255).astype(np.uint8), affine=affine)
    return {"voxels_1mm": int((ears > 0.5).sum()), "ml": float((ears > 0.5).sum() * abs(np.linalg.det(head.affine[:3, :3])) / 1000)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "models" / EARS_NAME)
    args = parser.parse_args(argv)
    summary = make_ears(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} KB): ears {summary['ml']:.0f} ml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
