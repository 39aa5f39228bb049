"""deepdefacer-check BIDS_DIR [--json OUT]: is a face left in any anatomical scan?

For a curator checking a dataset defaced by any tool before upload. Exit codes:
0 every scan checked and none shows a face; 1 at least one scan shows a face;
2 usage error (no such folder, no anatomical scans); 3 no face found, but some
scans could not be read, so the dataset is not confirmed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deepdefacer.messages import EXIT_FACE, EXIT_NO_FACE, EXIT_UNCHECKED, EXIT_USAGE  # noqa: F401

# Files in anat/ that are not head images: masks and segmentations.
NOT_HEAD_SUFFIXES = ("_defacemask", "_mask", "_dseg", "_probseg", "_label")


def find_anatomical_scans(bids_dir: Path) -> list[Path]:
    """Every NIfTI under sub-*/anat and sub-*/ses-*/anat (raw or derivative datasets)."""
    scans = []
    for pattern in ("sub-*/anat/*.nii", "sub-*/anat/*.nii.gz", "sub-*/ses-*/anat/*.nii", "sub-*/ses-*/anat/*.nii.gz"):
        scans.extend(bids_dir.glob(pattern))
    stems = {path: path.name.split(".nii")[0] for path in scans}
    return sorted(path for path in scans if not stems[path].endswith(NOT_HEAD_SUFFIXES))


def check_scan(path: Path) -> dict:
    from deepdefacer.errors import InputError
    from deepdefacer.nifti import load_image
    from deepdefacer.qc.facecheck import check_image

    try:
        # The defacer's own checks: a scan it would refuse (no orientation in the header, complex
        # values, a hostile header) cannot be judged either, and "no face" would be a guess.
        image = load_image(path)
        evidence = check_image(image)
    except InputError as error:
        return {"file": str(path), "status": "error", "face_present": None, "reason": error.reason}
    except Exception as error:  # one unreadable file must not stop the others
        return {"file": str(path), "status": "error", "face_present": None, "reason": f"{type(error).__name__}: {error}"}
    return {"file": str(path), "status": "face" if evidence.face_present else "no_face",
            "face_present": evidence.face_present, "reason": evidence.reason, "evidence": evidence.to_dict()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepdefacer-check",
        description="Check every anatomical scan of a BIDS dataset for a face that is still present "
                    "(nose ridge on the rendered head surface).",
        epilog="Exit codes: 0 no scan shows a face; 1 a scan shows a face; 2 usage error; "
               "3 no face found but some scans could not be read.")
    parser.add_argument("bids_dir", type=Path, help="a BIDS dataset (raw or derivatives)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the per-scan results as JSON here")
    parser.add_argument("--quiet", action="store_true", help="print only scans that show a face, and the summary")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    bids_dir = args.bids_dir
    if not bids_dir.is_dir():
        parser.error(f"{bids_dir}: not a folder")
    scans = find_anatomical_scans(bids_dir)
    if not scans:
        parser.error(f"{bids_dir}: no anatomical scans (sub-*/[ses-*/]anat/*.nii[.gz])")

    results = []
    for path in scans:
        result = check_scan(path)
        result["file"] = str(path.relative_to(bids_dir))
        results.append(result)
        label = {"face": "FACE", "no_face": "ok", "error": "ERROR"}[result["status"]]
        if not args.quiet or result["status"] != "no_face":
            print(f"{label:5s} {result['file']}: {result['reason']}", flush=True)

    faces = sum(r["status"] == "face" for r in results)
    errors = sum(r["status"] == "error" for r in results)
    print(f"{len(results)} scans: {faces} with a face, {errors} unreadable, {len(results) - faces - errors} without")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"bids_dir": str(bids_dir), "n_scans": len(results), "n_face": faces,
                                         "n_error": errors, "scans": results}, indent=2) + "\n")
    if faces:
        return EXIT_FACE
    return EXIT_UNCHECKED if errors else EXIT_NO_FACE


if __name__ == "__main__":
    sys.exit(main())
