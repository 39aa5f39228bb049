"""Make the face that ``--mode reface`` puts in: ``python -m deepdefacer.train.make_reface_template``.

pydeface's average head (``mean_reg2mean``, MIT: an average of many heads, nobody's face), at its
own ~1 mm, cropped to where any face mask can reach (pydeface's face mask grown by
``MARGIN_MM``) and stored as uint8 with its affine in ``models/`` (deepdefacer.reface.TEMPLATE_NAME).
It lies in the atlas's world (the atlas guard's atlas is the same head at 3 mm), so the guard's fit
of a scan places it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from deepdefacer.reface import TEMPLATE_NAME

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO.parent / "shared" / "data" / "templates"
MARGIN_MM = 30.0  # the crop reaches this far beyond pydeface's face mask


def make_template(head_path: Path, face_mask_path: Path, out: Path) -> tuple:
    head = nib.load(head_path)
    data = head.get_fdata(dtype=np.float32)
    keep = np.asanyarray(nib.load(face_mask_path).dataobj) > 0  # pydeface: 1 = keep, 0 = face
    face = ~keep & (data > np.percentile(data, 50))  # its face mask, where there is head
    voxel_mm = np.sqrt((head.affine[:3, :3] ** 2).sum(axis=0))
    grown = ndimage.distance_transform_edt(~face, sampling=voxel_mm) <= MARGIN_MM
    where = np.argwhere(grown)
    low, high = where.min(axis=0), where.max(axis=0) + 1
    crop = data[low[0]:high[0], low[1]:high[1], low[2]:high[2]]
    affine = head.affine.copy()
    affine[:3, 3] += head.affine[:3, :3] @ low
    scale = 255.0 / float(np.percentile(data, 99.9))
    np.savez_compressed(out, head=np.clip(np.round(crop * scale), 0, 255).astype(np.uint8), affine=affine)
    return crop.shape, affine


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", type=Path, default=TEMPLATES / "pydeface_mean_reg2mean.nii.gz")
    parser.add_argument("--face-mask", type=Path, default=TEMPLATES / "pydeface_facemask.nii.gz")
    parser.add_argument("--out", type=Path, default=REPO / "models" / TEMPLATE_NAME)
    args = parser.parse_args(argv)
    shape, _ = make_template(args.head, args.face_mask, args.out)
    print(f"wrote {args.out}: {shape}, {args.out.stat().st_size / 1e3:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
