#!/usr/bin/env python3
"""Check a Deepdefacer derivatives folder written by the container against the input and a bare run.

    python containers/check_outputs.py BIDS_DIR CONTAINER_OUT [--reference BARE_OUT] [--uid UID]

- CONTAINER_OUT/dataset_description.json exists and says DatasetType "derivative";
- every anatomical NIfTI of BIDS_DIR (sub-*/[ses-*/]anat/, defacemasks aside) has its defaced image in
  CONTAINER_OUT: same folder, same entities, plus desc-defaced, same suffix;
- with --reference: both folders hold the same NIfTI files, and each pair has equal data arrays (as
  stored, voxel for voxel), equal dtypes, shapes and affines;
- with --uid: every file the container wrote belongs to that uid (the container ran as that user);
- with --container TYPE: GeneratedBy in dataset_description.json names a container of that type;
- with --validator PATH: bids-validator-deno finds no error in CONTAINER_OUT.
Prints one line per problem and exits 1 if there is any. Needs numpy and nibabel.
"""
import argparse
import json
import pathlib
import subprocess
import sys

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def strip_nifti_extension(name):
    for extension in NIFTI_SUFFIXES:
        if name.endswith(extension):
            return name[: -len(extension)]
    return None


def nifti_files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*.nii*") if strip_nifti_extension(p.name))


def input_anatomical_scans(bids_dir):
    scans = []
    for pattern in ("sub-*/anat/*.nii*", "sub-*/ses-*/anat/*.nii*"):
        for path in bids_dir.glob(pattern):
            stem = strip_nifti_extension(path.name)
            if stem and not stem.endswith("_defacemask"):
                scans.append(path.relative_to(bids_dir))
    return sorted(scans)


def defaced_output_for(scan, output_dir):
    stem = strip_nifti_extension(scan.name)
    entities, suffix = stem.rsplit("_", 1)
    folder = output_dir / scan.parent
    for candidate in sorted(folder.glob(f"{entities}_*")):
        candidate_stem = strip_nifti_extension(candidate.name)
        if candidate_stem and "_desc-defaced_" in candidate_stem and candidate_stem.endswith("_" + suffix):
            return candidate
    return None


def compare_images(path_a, path_b):
    image_a, image_b = nib.load(path_a), nib.load(path_b)
    data_a, data_b = np.asanyarray(image_a.dataobj), np.asanyarray(image_b.dataobj)
    if data_a.shape != data_b.shape or data_a.dtype != data_b.dtype:
        return f"shape/dtype {data_a.shape} {data_a.dtype} != {data_b.shape} {data_b.dtype}"
    if not np.array_equal(data_a, data_b, equal_nan=data_a.dtype.kind == "f"):
        return f"{int(np.count_nonzero(data_a != data_b))} voxels differ"
    if not np.allclose(image_a.affine, image_b.affine, rtol=0, atol=1e-6):
        return "affines differ"
    return None


def validator_errors(validator, dataset):
    completed = subprocess.run([validator, str(dataset), "--format", "json"], capture_output=True,
                               text=True, timeout=600)
    try:
        issues = json.loads(completed.stdout)["issues"]["issues"]
    except (json.JSONDecodeError, KeyError):
        return [f"{validator} failed (exit {completed.returncode}): {completed.stderr.strip()[-300:]}"]
    return [f"{issue.get('code')}: {issue.get('location', '')}" for issue in issues
            if issue.get("severity") == "error"]


def check(bids_dir, output_dir, reference_dir=None, uid=None, container=None, validator=None):
    problems = []
    description_path = output_dir / "dataset_description.json"
    description = json.loads(description_path.read_text()) if description_path.is_file() else None
    if description is None:
        problems.append(f"{description_path}: missing")
    elif description.get("DatasetType") != "derivative":
        problems.append(f"{description_path}: DatasetType is not 'derivative'")
    elif container is not None:
        containers = [entry.get("Container", {}).get("Type") for entry in description.get("GeneratedBy", [])]
        if container not in containers:
            problems.append(f"{description_path}: GeneratedBy names no {container} container ({containers})")

    scans = input_anatomical_scans(bids_dir)
    if not scans:
        problems.append(f"{bids_dir}: no anatomical scans found, nothing was checked")
    for scan in scans:
        if defaced_output_for(scan, output_dir) is None:
            problems.append(f"{scan}: no defaced image in {output_dir / scan.parent}")

    if reference_dir is not None:
        ours, theirs = nifti_files(output_dir), nifti_files(reference_dir)
        for missing in sorted(set(theirs) - set(ours)):
            problems.append(f"{missing}: written by the bare run, not by the container")
        for extra in sorted(set(ours) - set(theirs)):
            problems.append(f"{extra}: written by the container, not by the bare run")
        for relative in sorted(set(ours) & set(theirs)):
            difference = compare_images(output_dir / relative, reference_dir / relative)
            if difference:
                problems.append(f"{relative}: container and bare run differ: {difference}")
        print(f"check_outputs.py: compared {len(set(ours) & set(theirs))} NIfTI files with the bare run")

    if uid is not None:
        for path in output_dir.rglob("*"):
            if path.stat().st_uid != uid:
                problems.append(f"{path}: owned by uid {path.stat().st_uid}, expected {uid}")
    if validator is not None:
        errors = validator_errors(validator, output_dir)
        problems += [f"bids-validator-deno: {error}" for error in errors]
        print(f"check_outputs.py: bids-validator-deno: {len(errors)} errors in {output_dir}")
    print(f"check_outputs.py: {len(scans)} anatomical scans in the input, {len(problems)} problems")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bids_dir", type=pathlib.Path)
    parser.add_argument("output_dir", type=pathlib.Path)
    parser.add_argument("--reference", type=pathlib.Path, help="output folder of a bare deepdefacer run")
    parser.add_argument("--uid", type=int, help="uid that should own every output file")
    parser.add_argument("--container", help="container type GeneratedBy should name (docker)")
    parser.add_argument("--validator", help="path of bids-validator-deno, to validate the output")
    args = parser.parse_args(argv)
    problems = check(args.bids_dir, args.output_dir, args.reference, args.uid, args.container,
                     args.validator)
    for problem in problems:
        print("  " + problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
