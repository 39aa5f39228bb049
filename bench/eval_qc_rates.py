"""Measure the face check: hit rate on original heads, false-alarm rate on defaced heads.

    python -m bench.eval_qc_rates [--sets heads ixi nichart] [--defacers slab model pydeface]
                                  [--cache DIR] [--json OUT]

Originals: every head in ../shared/data/heads, each also stored in two other axis
orders (array and affine changed together), plus the IXI and NiChart heads
when asked. Defaced versions of each original come from:
  slab      tests/qc_helpers.slab_deface: a geometric cut behind the frontmost point
  model     deepdefacer.pipeline.deface (the shipped model; skipped when it is missing)
  pydeface  pydeface's face mask after an ANTs affine registration of its template
            (needs antspyx, the `train` extra; slow, so results are cached in --cache)
A defaced head whose mask missed the head's frontmost point (the nose tip on
every head here) is reported apart: the defacer failed there (pydeface's
registration does on the 64^3 volumes), so a face found on it is right.

Every defaced head is judged twice: by `check_image` on the defaced file alone
(`deepdefacer-check`), and by the participant QC's verdict, which also looks at the
defaced scan at the original's head threshold (`participant.defaced_face_evidence`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from deepdefacer.qc.facecheck import check_image
from deepdefacer.qc.participant import defaced_face_evidence
from tests.qc_helpers import DATA, head_paths, reorient, slab_deface

ORIENTATIONS = {"": None, "_psr": ((1, 2, 0), (0, 1, 0)), "_ilp": ((2, 0, 1), (1, 0, 1))}


def defacing_failed(original, mask) -> bool:
    """True when the mask leaves the head's frontmost point (the nose tip) in place.

    Where the field of view cuts the face, the frontmost layer is a plane of skin, fat
    and bone; any one of its voxels is arbitrary, so take the one nearest its centre.
    """
    from deepdefacer.qc.volume import mask_on_grid, ras_volume, voxel_sizes_mm

    # A fine grid: on QC's 2 mm grid a thin nose tip can fall under the threshold.
    volume = ras_volume(original, voxel_mm=max(float(voxel_sizes_mm(original.affine).min()), 1.5))
    removed = mask_on_grid(mask, volume.head.shape, volume.voxel_mm)
    points = np.argwhere(volume.head)
    front = points[points[:, 1] >= points[:, 1].max() - 1]
    tip = front[np.argmin(((front - front.mean(axis=0)) ** 2).sum(axis=1))]
    reach = int(np.ceil(5.0 / volume.voxel_mm))  # within 5 mm of the tip
    near = tuple(slice(max(c - reach, 0), c + reach + 1) for c in tip)
    return not removed[near].any()


def originals(sets):
    for name in sets:
        if name == "heads":
            for path in head_paths():
                for suffix, orientation in ORIENTATIONS.items():
                    yield "heads", path.name.split(".")[0] + suffix, path, orientation
        else:
            for path in sorted((DATA / name).glob("*.nii*")):
                yield name, path.name.split(".")[0], path, None


def pydeface(img, path: Path, cache: Path):
    import ants

    cache.mkdir(parents=True, exist_ok=True)
    mask_path = cache / (path.name.split(".")[0] + "_pydefacemask.nii.gz")
    if not mask_path.exists():
        templates = DATA / "templates"
        template = ants.image_read(str(templates / "pydeface_mean_reg2mean.nii.gz"))
        face_mask = ants.image_read(str(templates / "pydeface_facemask.nii.gz"))
        fixed = ants.image_read(str(path))
        # Registering at 3 mm is 5x faster and as good for placing a face mask.
        registration = ants.registration(ants.resample_image(fixed, (3, 3, 3), False, 0),
                                         ants.resample_image(template, (3, 3, 3), False, 0), "Affine")
        keep = ants.apply_transforms(fixed, face_mask, registration["fwdtransforms"],
                                     interpolator="nearestNeighbor").numpy() > 0.5
        nib.Nifti1Image((~keep).astype(np.uint8), nib.load(path).affine).to_filename(mask_path)
    removed = np.asanyarray(nib.load(mask_path).dataobj) > 0
    data = np.asanyarray(nib.load(path).dataobj)
    data = data[..., 0] if data.ndim > 3 else data
    original = nib.load(path)
    return (nib.Nifti1Image(np.where(removed, 0, data).astype(data.dtype), original.affine, original.header),
            nib.Nifti1Image(removed.astype(np.uint8), original.affine))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["heads"], choices=["heads", "ixi", "nichart"])
    parser.add_argument("--defacers", nargs="+", default=["slab"], choices=["slab", "model", "pydeface"])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/deepdefacer_qc_pydeface"))
    parser.add_argument("--cached-only", action="store_true",
                        help="pydeface: only heads whose registration is already in --cache")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    model = None
    if "model" in args.defacers:
        try:
            from deepdefacer.pipeline import deface as model
            from deepdefacer.pipeline import load_defacer

            load_defacer()
        except Exception as error:  # noqa: BLE001 - report and go on without it
            print(f"model skipped: {error}", file=sys.stderr)
            model = None

    rows = []
    for set_name, name, path, orientation in originals(args.sets):
        img = nib.load(path)
        if orientation is not None:
            img = reorient(img, *orientation)
        found = check_image(img)
        rows.append({"set": set_name, "scan": name, "kind": "original", "defacer": "", "face": found.face_present,
                     "reason": found.reason})
        print(f"{set_name:8s} {name:34s} original        {'FACE' if found.face_present else 'none'}  {found.reason}",
              flush=True)
        for defacer in args.defacers:
            if defacer == "model" and model is None:
                continue
            if defacer == "pydeface" and orientation is not None:
                continue  # same registration as the stored orientation; the check sees the same RAS grid
            if defacer == "pydeface" and args.cached_only and not (
                    args.cache / (path.name.split(".")[0] + "_pydefacemask.nii.gz")).exists():
                continue
            if defacer == "slab":
                defaced, mask = slab_deface(img)
            elif defacer == "model":
                defaced, mask = model(img)
            else:
                defaced, mask = pydeface(img, path, args.cache)
            fraction = float(np.mean(np.asanyarray(mask.dataobj) > 0))
            kind = "defacing_failed" if defacing_failed(img, mask) else "defaced"
            found = check_image(defaced)
            participant = defaced_face_evidence(img, defaced)
            rows.append({"set": set_name, "scan": name, "kind": kind, "defacer": defacer,
                         "face": found.face_present, "reason": found.reason,
                         "face_participant": participant.face_present, "reason_participant": participant.reason,
                         "removed_fraction": round(fraction, 4)})
            print(f"{set_name:8s} {name:34s} {defacer + ' ' + kind:15s} {'FACE' if found.face_present else 'none'}  "
                  f"participant {'FACE' if participant.face_present else 'none'}  {found.reason}", flush=True)

    print("\nsummary")
    summary = {}
    for set_name in args.sets:
        hits = [r for r in rows if r["set"] == set_name and r["kind"] == "original"]
        line = {"hits": sum(r["face"] for r in hits), "originals": len(hits)}
        for defacer in args.defacers:
            defaced = [r for r in rows if r["set"] == set_name and r["defacer"] == defacer and r["kind"] == "defaced"]
            failed = [r for r in rows if r["set"] == set_name and r["defacer"] == defacer
                      and r["kind"] == "defacing_failed"]
            line[defacer] = {"false_alarms": sum(r["face"] for r in defaced),
                             "false_alarms_participant": sum(r["face_participant"] for r in defaced),
                             "defaced": len(defaced), "defacing_failed": len(failed),
                             "failed_flagged": sum(r["face"] for r in failed),
                             "failed_flagged_participant": sum(r["face_participant"] for r in failed)}
        summary[set_name] = line
        text = f"{set_name:8s} hits {line['hits']}/{line['originals']}"
        for defacer in args.defacers:
            part = line[defacer]
            if part["defaced"] or part["defacing_failed"]:
                text += (f"; {defacer}: false alarms {part['false_alarms']}/{part['defaced']}"
                         f" (participant QC {part['false_alarms_participant']}/{part['defaced']});"
                         f" {part['defacing_failed']} failed defacings left out, flagged"
                         f" {part['failed_flagged']} (participant QC {part['failed_flagged_participant']})")
        print(text)
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
