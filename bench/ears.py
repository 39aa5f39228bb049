"""``--remove-ears`` on the validation heads: how much of each ear it removes, and no brain.

For each of the 48 validation scans (``deepdefacer.train.data.split()``: 36 IXI/NiChart heads and
the 12 heads of ``../shared/data/heads``), with reference labels in ``labels/``:

* **reference ears**: the project's label tool (``deepdefacer.train.label_registration``: an
  antspyx affine registration of pydeface's average head to the scan, independent of the atlas
  guard's own fit) carries the ear regions of mridefacer's ``face_teeth_ear_mask`` (on the average
  head, as ``deepdefacer.train.make_ear_template`` makes them) onto the scan; the reference ear is
  the head's tissue there (intensity above the QC's head threshold). The **pinna** is the part of it
  farther than ``PINNA_FROM_BRAIN_MM`` from the reference brain: the region also holds scalp over
  the skull, which ear removal keeps next to the brain;
* **removed**: the share of the reference ear (and pinna) that ``--remove-ears`` sets to air, and
  the voxels of the reference brain (the deformable SyN brain) it removes (acceptance: >= 90% of
  the pinna, no brain voxel);
* the face criteria of ``deepdefacer.train.evaluate`` on the same mask (face, eyes, nose, mouth).

    .venv/bin/python -m bench.ears [--limit N] [--json docs/ears.json] [--markdown docs/ears.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")  # reruns identical

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from deepdefacer import ears  # noqa: E402
from deepdefacer.conform import plausible_affine  # noqa: E402
from deepdefacer.nifti import load_volume  # noqa: E402
from deepdefacer.pipeline import load_defacer  # noqa: E402
from deepdefacer.qc.volume import head_threshold  # noqa: E402
from deepdefacer.train import label_registration as lr  # noqa: E402
from deepdefacer.train.data import label_name, split  # noqa: E402
from deepdefacer.train.evaluate import passes, reference_labels, score  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
LABELS = REPOSITORY / "labels"
PINNA_FROM_BRAIN_MM = 15.0
GOAL_REMOVED = 0.9


def template_ears(work: Path) -> dict:
    """The label tool's template (pydeface's average head, its masks) with the ear regions."""
    template = lr.prepare_template(work / "template")
    return {**template, "ears": lr.ear_labels(template, work / "template")}


def measure(path: Path, template: dict, defacer) -> dict:
    name = label_name(path)
    labels = reference_labels(LABELS, name)
    volume = load_volume(path)
    data = volume.data
    start = time.perf_counter()
    done = defacer.deface_volume(volume)
    seconds = time.perf_counter() - start
    removed = done.mask
    tissue = lr.register_ears(path, template, template["ears"]).reshape(data.shape) & (data > head_threshold(data))
    brain = labels["brain"].astype(bool).reshape(data.shape)
    # Millimetres from plausible voxel sizes (a lying header's as the method assumes them).
    voxel_mm = np.sqrt((plausible_affine(data, volume.affine)[0][:3, :3] ** 2).sum(axis=0))
    pinna = tissue & (ndimage.distance_transform_edt(~brain, sampling=voxel_mm) > PINNA_FROM_BRAIN_MM)
    voxel_ml = float(np.prod(voxel_mm)) / 1000
    faces = score(removed, data, labels["face"], labels["brain"], labels["landmarks"], labels.get("brain_affine"))
    return {"scan": name, "seconds": round(seconds, 2),
            "ear_tissue_ml": round(float(tissue.sum()) * voxel_ml, 1),
            "pinna_ml": round(float(pinna.sum()) * voxel_ml, 1),
            "ear_removed": round(float((tissue & removed).sum() / max(tissue.sum(), 1)), 4),
            "pinna_removed": round(float((pinna & removed).sum() / max(pinna.sum(), 1)), 4) if pinna.any() else None,
            "brain_removed_voxels": int((removed & brain).sum()),
            "ears_region_ml": done.details.get("Ears", {}).get("RegionML"),
            "face_criteria_pass": passes(faces)}


def summary(rows: list[dict]) -> dict:
    measured = [row for row in rows if row.get("pinna_removed") is not None]
    return {"scans": len(rows), "scans_with_a_pinna_in_view": len(measured),
            "pinna_removed_median": statistics.median(row["pinna_removed"] for row in measured) if measured else None,
            "pinna_removed_min": min((row["pinna_removed"] for row in measured), default=None),
            "scans_pinna_90": sum(row["pinna_removed"] >= GOAL_REMOVED for row in measured),
            "ear_removed_median": statistics.median(row["ear_removed"] for row in rows),
            "ear_removed_min": min(row["ear_removed"] for row in rows),
            "scans_brain_removed": sum(row["brain_removed_voxels"] > 0 for row in rows),
            "scans_face_criteria_pass": sum(row["face_criteria_pass"] for row in rows),
            "seconds_median": statistics.median(row["seconds"] for row in rows)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="only the first N scans")
    parser.add_argument("--work", type=Path, help="the label tool's template (default: a temporary folder)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    parts = split()
    scans = [p for p in parts["validation"] + parts["heads"]
             if (LABELS / f"{label_name(p)}_face.nii.gz").exists()]
    scans = scans[: args.limit] if args.limit else scans
    defacer = load_defacer("cpu", remove_ears=True)
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        template = template_ears(args.work or Path(temporary))
        for number, path in enumerate(scans, start=1):
            row = measure(path, template, defacer)
            rows.append(row)
            print(f"[{number}/{len(scans)}] {row}", flush=True)
    result = {"command": " ".join(["python -m bench.ears", *(argv or sys.argv[1:])]),
              "pinna_from_brain_mm": PINNA_FROM_BRAIN_MM, "margin_mm": ears.MARGIN_MM,
              "brain_clearance_mm": ears.BRAIN_CLEARANCE_MM, "summary": summary(rows), "scans": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
