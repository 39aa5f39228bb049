"""Validate a dataset with the BIDS validator (bids-validator-deno from PyPI runs offline)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

VALIDATOR_COMMAND = "bids-validator-deno"


class ValidatorMissing(RuntimeError):
    pass


@dataclass
class ValidationResult:
    errors: list  # one dict per issue: code, location, message
    warnings: list

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self, limit: int = 10) -> str:
        lines = []
        for issue in self.errors[:limit]:
            location = issue.get("location") or ""
            lines.append(f"  {issue.get('code')}: {location}".rstrip())
        if len(self.errors) > limit:
            lines.append(f"  ... and {len(self.errors) - limit} more")
        return "\n".join(lines)


def find_validator() -> str:
    """The validator: on PATH, or next to this Python (a virtual environment not activated)."""
    found = shutil.which(VALIDATOR_COMMAND)
    beside_python = Path(sys.executable).parent / VALIDATOR_COMMAND
    if found is None and beside_python.exists():
        found = str(beside_python)
    if found is None:
        raise ValidatorMissing(
            f"{VALIDATOR_COMMAND} is not installed: `pip install bids-validator-deno`, "
            "or pass --skip-bids-validation")
    return found


def validate_dataset(path, timeout_seconds: float = 3600) -> ValidationResult:
    command = [find_validator(), str(path), "--format", "json"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_seconds)
    try:
        report = json.loads(completed.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"{VALIDATOR_COMMAND} failed (exit {completed.returncode}): "
                           f"{completed.stderr.strip()[-500:]}") from None
    issues = report.get("issues", {}).get("issues", [])
    errors = [issue for issue in issues if issue.get("severity") == "error"]
    warnings = [issue for issue in issues if issue.get("severity") == "warning"]
    return ValidationResult(errors, warnings)


def validate_participants(bids_dir, participants=None, timeout_seconds: float = 3600) -> ValidationResult:
    """Validate the dataset, or only ``participants`` (labels) of it, as fMRIPrep does: the
    validator sees a view of the dataset (links to its top-level files and to the selected
    sub-<label> folders), so one bad participant elsewhere does not stop every task of a SLURM
    array, and a task does not validate a thousand participants it will not touch."""
    bids_dir = Path(bids_dir)
    if not participants:
        return validate_dataset(bids_dir, timeout_seconds)
    selected = {f"sub-{label}" for label in participants}
    with tempfile.TemporaryDirectory(prefix="deepdefacer-validate-") as view:
        for entry in bids_dir.iterdir():
            if entry.name.startswith("sub-") and entry.name not in selected:
                continue
            (Path(view) / entry.name).symlink_to(entry.absolute())
        result = validate_dataset(view, timeout_seconds)
    for issue in result.errors + result.warnings:  # locations as in the real dataset
        if isinstance(issue.get("location"), str) and issue["location"].startswith(view):
            issue["location"] = issue["location"][len(view):]
    return result
