"""How long a run over one participant of a 1,000-participant dataset takes before any defacing.

A SLURM array task of a large dataset selects one or a few participants; it should not pay for
indexing (pybids) or validating the others. The dataset: ``examples/ds-demo``'s sub-01 plus 1,000
placeholder participants (empty anatomical files, as the bids-examples datasets hold).
Measured, median of ``--repeats`` runs each, in one process:

* pybids' index and the selection: of the whole dataset (what every run did before), of the
  selected participant only (the default), and read back from a warm ``--bids-database-dir``;
* the BIDS validator over the selected participant only, against the whole dataset.

    python -m bench.selection_start --json docs/selection_start.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from deepdefacer.bids import select, validate

REPOSITORY = Path(__file__).resolve().parents[1]
DEMO = REPOSITORY / "examples" / "ds-demo"


def make_dataset(root: Path, participants: int) -> Path:
    shutil.copytree(DEMO, root, ignore=shutil.ignore_patterns("sub-02"))
    for number in range(participants):
        anat = root / f"sub-p{number:04d}" / "anat"
        anat.mkdir(parents=True)
        (anat / f"sub-p{number:04d}_T1w.nii.gz").touch()
        (anat / f"sub-p{number:04d}_T1w.json").write_text("{}")
    return root


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        dataset = make_dataset(Path(work) / "ds", args.participants)
        database = Path(work) / "pybids"

        def whole():
            return select.select_scans(select.open_layout(dataset), ["01"])

        def selected():
            return select.select_scans(select.open_layout(dataset, ["01"]), ["01"])

        def warm():
            return select.select_scans(select.open_layout(dataset, ["01"], database), ["01"])

        assert len(whole()) == len(selected()) == 3
        warm()  # builds the database once (a first task, or a job before the array)
        result = {
            "participants": args.participants + 1, "repeats": args.repeats,
            "index_whole_dataset_s": median_seconds(whole, args.repeats),
            "index_selected_participant_s": median_seconds(selected, args.repeats),
            "index_warm_database_s": median_seconds(warm, args.repeats),
            "validate_selected_participant_s": median_seconds(
                lambda: validate.validate_participants(dataset, ["01"]), args.repeats),
            "validate_whole_dataset_s": median_seconds(
                lambda: validate.validate_dataset(dataset), 1),
        }
    result["index_ratio_whole_to_selected"] = round(
        result["index_whole_dataset_s"] / result["index_selected_participant_s"], 1)
    text = json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()},
                      indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
