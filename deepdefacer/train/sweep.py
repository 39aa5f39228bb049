"""Choose the decision parameters of a model: ``python -m deepdefacer.train.sweep``.

Runs the model once per head, then scores every combination of face threshold, face
growth (mm), brain margins (mm), brain threshold and edge band (mm) against the reference labels, and prints per
combination: heads passing every criterion, the worst face fraction, the most brain
voxels removed. The chosen values go into the model card's ``thresholds``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from deepdefacer.conform import plausible_affine
from deepdefacer.mask import face_mask
from deepdefacer.nifti import read_volume
from deepdefacer.pipeline import predict
from deepdefacer.train.data import label_name, split
from deepdefacer.train.evaluate import LANDMARK_NAMES, passes, reference_labels, score, scoring_parser


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def main(argv=None) -> int:
    import dataclasses

    from deepdefacer.predictor import load_predictor

    parser = scoring_parser(__doc__.splitlines()[0])
    parser.add_argument("--face-threshold", type=floats, default=[0.3, 0.4, 0.5])
    parser.add_argument("--face-dilate-mm", type=floats, default=[0.0, 3.0, 6.0])
    parser.add_argument("--brain-margin-mm", type=floats, default=[4.0, 6.0])
    parser.add_argument("--brain-threshold", type=floats, default=[0.3])
    parser.add_argument("--growth-margin-mm", type=floats, default=[12.0])
    parser.add_argument("--edge-mm", type=floats, default=[0.0],
                        help="carry the mask to the cube's and the field of view's edges over this")
    parser.add_argument("--mirror-average", action=argparse.BooleanOptionalAction,
                        help="average the prediction with its left-right mirror's (override the card's)")
    parser.add_argument("--json", type=Path, help="write every score here")
    args = parser.parse_args(argv)
    predictor = load_predictor("cpu", args.model)
    if args.mirror_average is not None:
        predictor = dataclasses.replace(predictor, mirror_average=args.mirror_average)
    combos = list(itertools.product(args.face_threshold, args.face_dilate_mm,
                                    args.brain_margin_mm, args.brain_threshold, args.growth_margin_mm,
                                    args.edge_mm))
    results = {c: [] for c in combos}
    parts = split()
    for set_name in args.sets:
        for path in parts[set_name]:
            name = label_name(path)
            if not (args.labels / f"{name}_face.nii.gz").exists():
                continue
            img = nib.load(path)
            data = read_volume(img).data
            affine, _ = plausible_affine(data, img.affine)
            pred = predict(data, affine, predictor)
            labels = reference_labels(args.labels, name)
            for combo in combos:
                threshold, dilate, margin, brain_threshold, growth_margin, edge = combo
                mask = face_mask(pred, threshold, brain_threshold, margin, dilate, growth_margin, edge)
                row = score(mask, data, labels["face"], labels["brain"], labels["landmarks"],
                            labels.get("brain_affine"))
                row.update(head=name, set=set_name)
                row["pass"] = passes(row)
                results[combo].append(row)
            print(f"{set_name} {name}: " + " ".join(
                f"{int(r['pass'])}" for r in (results[c][-1] for c in combos)), flush=True)
    print("face_t\tgrow_mm\tmargin_mm\tbrain_t\tgrowth_margin_mm\tedge_mm\tpassed\tworst_face\tmedian_face\tmax_brain\t"
          "heads_with_brain\tlandmark_misses")
    for combo, rows in results.items():
        if not rows:
            continue
        misses = sum(1 for r in rows for n in LANDMARK_NAMES if r[n] is False)
        print("\t".join(map(str, combo)) + f"\t{sum(r['pass'] for r in rows)}/{len(rows)}\t"
              f"{min(r['face_removed'] for r in rows):.3f}\t"
              f"{np.median([r['face_removed'] for r in rows]):.3f}\t"
              f"{max(r['brain_removed_voxels'] for r in rows)}\t"
              f"{sum(r['brain_removed_voxels'] > 0 for r in rows)}\t{misses}")
    if args.json:
        args.json.write_text(json.dumps({"|".join(map(str, c)): rows for c, rows in results.items()},
                                        indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
