"""Hash what Deepdefacer writes for the 48 validation scans and the demo dataset.

A refactoring must keep every defaced image and mask bit-identical. This script runs the BIDS App
as a user does (``participant`` level, one process) over

* a dataset made of links to the 48 validation scans (``deepdefacer.train.data.split()``:
  the 36 IXI/NiChart validation heads and the 12 heads of ``../shared/data/heads``), and
* ``examples/ds-demo``,

and writes, for every NIfTI output, the sha256 of its header bytes and its stored voxel values
(decoded, so gzip's timestamp does not count). Sidecars are left out: their provenance names the
version. ``--compare`` checks a new run against an earlier one and exits 1 on any difference.

    python bench/output_hashes.py --out before.json
    ...change the code...
    python bench/output_hashes.py --out after.json --compare before.json

Scans the face check fails are still written (``--allow-unverified``), so they are compared too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
DEMO = REPOSITORY / "examples" / "ds-demo"

# What the shared data's file names say about the contrast; everything else is a T1w.
SUFFIXES = (("flair", "FLAIR"), ("_t2", "T2w"), ("_pd", "PDw"))


def validation_scans() -> list[Path]:
    sys.path.insert(0, str(REPOSITORY))
    from deepdefacer.train.data import split

    parts = split()
    return parts["validation"] + parts["heads"]


def suffix_for(path: Path) -> str:
    name = path.name.lower()
    return next((suffix for key, suffix in SUFFIXES if key in name), "T1w")


def make_dataset(scans: list[Path], root: Path) -> Path:
    """A BIDS dataset of links: sub-vNN holds the NN-th scan."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "validation scans", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    for number, scan in enumerate(scans, start=1):
        subject = f"v{number:02d}"
        extension = ".nii.gz" if scan.name.endswith(".gz") else ".nii"
        anat = root / f"sub-{subject}" / "anat"
        anat.mkdir(parents=True)
        (anat / f"sub-{subject}_{suffix_for(scan)}{extension}").symlink_to(scan.resolve())
    return root


def run_app(bids_dir: Path, out_dir: Path) -> None:
    command = [sys.executable, "-c", "import sys; from deepdefacer.cli.run import main; "
               "sys.exit(main(sys.argv[1:]))", str(bids_dir), str(out_dir), "participant",
               "--skip-bids-validation", "--allow-unverified", "--skip-qc", "--n-procs", "1",
               "--quiet"]
    done = subprocess.run(command)  # the deepdefacer importable from the current folder
    if done.returncode not in (0, 1):  # 1: a scan failed its face check (written anyway)
        raise SystemExit(f"the BIDS App exited {done.returncode} on {bids_dir}")


def image_hash(path: Path) -> str:
    img = nib.load(path)
    digest = hashlib.sha256(img.header.binaryblock)
    digest.update(np.ascontiguousarray(np.asanyarray(img.dataobj.get_unscaled())).tobytes())
    return digest.hexdigest()


def hashes(out_dir: Path) -> dict:
    return {str(path.relative_to(out_dir)): image_hash(path)
            for path in sorted(out_dir.rglob("*.nii*")) if not path.name.startswith(".")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file of the hashes")
    parser.add_argument("--compare", type=Path, help="an earlier --out to compare with")
    args = parser.parse_args(argv)
    scans = validation_scans()
    result = {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for name, bids_dir in (("validation", make_dataset(scans, work / "validation")),
                               ("ds-demo", DEMO)):
            run_app(bids_dir, work / f"out-{name}")
            result[name] = hashes(work / f"out-{name}")
    counts = {name: len(files) for name, files in result.items()}
    args.out.write_text(json.dumps({"scans": len(scans), "files": counts, "sha256": result},
                                   indent=1) + "\n")
    print(f"{sum(counts.values())} images and masks hashed: {counts}")
    if args.compare is None:
        return 0
    before = json.loads(args.compare.read_text())["sha256"]
    differ = [f"{name}/{path}" for name in set(before) | set(result)
              for path in set(before.get(name, {})) | set(result.get(name, {}))
              if before.get(name, {}).get(path) != result.get(name, {}).get(path)]
    for path in sorted(differ):
        print(f"differs: {path}")
    print("bit-identical" if not differ else f"{len(differ)} outputs differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
