"""Make the atlas of the optional atlas guard: ``python -m deepdefacer.train.make_atlas``.

pydeface's average head (``mean_reg2mean``, MIT) and mridefacer's brain (``head_tmpl_brain``,
MIT) brought onto it (the template that ``deepdefacer.train.label_registration`` prepares), block-averaged
to 3 mm and stored as uint8 with their affine in ``models/atlas_pydeface_3mm.npz`` (~0.2 MB).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from deepdefacer.atlas import ATLAS_MM, ATLAS_NAME
from deepdefacer.resample import block_reduce

REPO = Path(__file__).resolve().parents[2]


def make_atlas(template_dir: Path, out: Path) -> None:
    head = nib.load(template_dir / "template_head.nii.gz")
    brain = nib.load(template_dir / "template_brain.nii.gz")
    target = 1.5 * ATLAS_MM  # block_reduce averages blocks of about target / 1.5
    head_data, affine = block_reduce(head.get_fdata(dtype=np.float32), head.affine, target)
    brain_data, brain_affine = block_reduce(brain.get_fdata(dtype=np.float32), brain.affine, target)
    if not np.allclose(affine, brain_affine):
        raise ValueError("the template's head and brain are not on one grid")
    scale = 255.0 / float(np.percentile(head_data, 99.9))
    np.savez_compressed(out, head=np.clip(np.round(head_data * scale), 0, 255).astype(np.uint8),
                        brain=np.clip(np.round(brain_data * 255), 0, 255).astype(np.uint8), affine=affine)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template-dir", type=Path, default=REPO / "labels_work" / "template",
                        help="made by python -m deepdefacer.train.labels (prepare_template)")
    parser.add_argument("--out", type=Path, default=REPO / "models" / ATLAS_NAME)
    args = parser.parse_args(argv)
    if not (args.template_dir / "template_head.nii.gz").exists():
        from deepdefacer.train.label_registration import prepare_template

        prepare_template(args.template_dir)
    make_atlas(args.template_dir, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
