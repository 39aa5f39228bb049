"""Reference labels: a face mask and a brain mask on each training head's own grid.

Made reproducibly by affine registration of pydeface's average head to each head
(``deepdefacer.train.label_registration``), with an overlay to review each by eye
(``deepdefacer.train.label_review``).

Ears are NOT part of the face label: pydeface leaves them, they are rarely identifying
on their own, and removing them takes signal that some pipelines (e.g. head-motion
or head-model work) need. This is a documented product decision (README).

Run as ``python -m deepdefacer.train.labels --out labels/`` (training-only extra:
``pip install .[train]``). Labels are written as small uint8 ``.nii.gz`` files with
a manifest recording the command; training never redoes registration.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import nibabel as nib

from deepdefacer.apply import write_image
from deepdefacer.train.data import label_name, split, training_heads
from deepdefacer.train.label_registration import (MASKS, prepare_template, register_brain_deformable,
                                                  register_labels)
from deepdefacer.train.label_review import brain_contact_sheet, save_overlay


def save_label(array, affine, path: Path) -> None:
    """A label image, written atomically: a killed run never leaves a truncated label."""
    write_image(nib.Nifti1Image(array, affine), path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("labels"), help="label folder")
    parser.add_argument("--png", type=Path, default=Path("labels_work/png"), help="overlay folder")
    parser.add_argument("--shard", default="0/1", help="i/n: process every n-th head from i")
    parser.add_argument("--include-heads", action="store_true",
                        help="also label the validation heads in shared/data/heads")
    parser.add_argument("--deformable-brain", action="store_true",
                        help="only write <name>_brainsyn.nii.gz, the deformable brain used for scoring")
    parser.add_argument("--contact-sheet", type=Path, metavar="PNG",
                        help="only draw the affine and SyN brains of --sets on one sheet")
    parser.add_argument("--sets", nargs="+", choices=("train", "validation", "heads"),
                        help="label these sets of deepdefacer.train.data.split(), in this order")
    args = parser.parse_args(argv)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    shard_i, shard_n = (int(v) for v in args.shard.split("/"))
    if args.contact_sheet:
        heads = [path for name in (args.sets or ("train",)) for path in split()[name]]
        drawn = brain_contact_sheet(heads[shard_i::shard_n], args.out, args.contact_sheet)
        print(f"{args.contact_sheet}: {drawn} heads")
        return 0
    template = prepare_template(Path("labels_work/template"))
    args.out.mkdir(parents=True, exist_ok=True)
    args.png.mkdir(parents=True, exist_ok=True)
    if args.sets:
        parts = split()
        heads = [path for name in args.sets for path in parts[name]]
    else:
        heads = training_heads(include_validation_heads=args.include_heads)
        # Most varied first (FLAIR, templates), so a training run can start before all are done.
        priority = ("nichart", "templates", "ixi", "heads")
        heads.sort(key=lambda p: priority.index(p.parent.name) if p.parent.name in priority else 9)
    rows = []
    for index, head_path in enumerate(heads):
        if index % shard_n != shard_i:
            continue
        name = label_name(head_path)
        if args.deformable_brain:
            path = args.out / f"{name}_brainsyn.nii.gz"
            if not path.exists():
                brain, seconds = register_brain_deformable(head_path, template)
                save_label(brain, nib.load(head_path).affine, path)
                print(f"{name}: deformable brain {brain.sum()} ({seconds:.1f} s)", flush=True)
            continue
        outputs = {mask: args.out / f"{name}_{mask}.nii.gz" for mask in MASKS}
        if all(p.exists() for p in outputs.values()):
            continue
        labels, seconds = register_labels(head_path, template)
        affine = nib.load(head_path).affine
        for mask, path in outputs.items():
            save_label(labels[mask], affine, path)
        face, brain = labels["face"], labels["brain"]
        save_overlay(head_path, face, brain, args.png / f"{name}.png")
        overlap = int((face & brain).sum())
        rows.append((name, int(face.sum()), int(brain.sum()), overlap, round(seconds, 1)))
        print(f"{name}: face {face.sum()} brain {brain.sum()} overlap {overlap} ({seconds:.1f} s)",
              flush=True)
    with open(args.out / f"log_{shard_i}of{shard_n}.tsv", "a", newline="") as fh:
        csv.writer(fh, delimiter="\t").writerows(rows)
    manifest = args.out / "manifest.json"
    if not manifest.exists():
        manifest.write_text(json.dumps({
            "command": "python -m deepdefacer.train.labels " + " ".join(argv or sys.argv[1:]),
            "method": "antspyx Affine (mattes MI) of pydeface mean_reg2mean to each head; "
                      "face = (pydeface facemask==0) + eye capsules - brain dilated 3 mm, brain = mridefacer head_tmpl_brain>0 via "
                      "mridefacer head -> pydeface mean Affine; linear interpolation, >0.5",
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
