"""The exported model: the inference ``.keras`` (no optimizer state) and its model card beside it.

The card (``<name>.json``) travels with the weights: the canonical grid the model was trained
on, its decision thresholds, how it was trained (command, data with their sha256, the
augmentation recipe) and, once ``deepdefacer.train.evaluate --write-card`` has run, its metrics.
"""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

from deepdefacer.conform import GridPlan
from deepdefacer.files import sha256_file, write_json

REPO = Path(__file__).resolve().parents[2]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def data_file(path: Path) -> str:
    """A head's name in the card: its folder under shared/data and its file name."""
    return str(path.relative_to(path.parents[1]))


def training_record(args, command: str, minutes: float, epochs: int, history, train_paths,
                    validation_paths, augmentation: list[dict]) -> dict:
    """What the card says of the training run (``args``: the parsed training command)."""
    return {
        "command": command,
        "training_minutes": round(minutes, 1),
        "epochs": epochs,
        "steps_per_epoch": args.steps, "batch_size": args.batch_size, "seed": args.seed,
        "base_filters": args.base_filters, "brain_label": args.brain_label,
        "boundary_weight": args.boundary_weight, "boundary_terms": list(args.boundary_terms),
        **({"initialised_from": {"file": args.init_from.name, "sha256": sha256_file(args.init_from)}}
           if args.init_from else {}),
        "final_loss": {k: float(v[-1]) for k, v in history.history.items()} if history.history else {},
        "training_data": [{"file": data_file(path), "sha256": sha256_file(path)} for path in train_paths],
        "validation_data": [data_file(path) for path in validation_paths],
        "training": {"augmentation": augmentation},
    }


def export(model, plan: GridPlan, out_dir: Path, name: str, card_extra: dict) -> Path:
    """Write the inference model (no optimizer state) and its model card."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.keras"
    model.save(path, include_optimizer=False) if "include_optimizer" in model.save.__code__.co_varnames \
        else save_without_optimizer(model, path)
    card = {
        "name": name,
        "file": path.name,
        "sha256": sha256_file(path),
        "grid": {"size": plan.size, "voxel_mm": plan.voxel_mm, "top_margin_mm": plan.top_margin_mm,
                 "axes": "RAS", "normalisation": "percentiles 2/98 of head, clipped to [0, 1.5]"},
        "outputs": ["face probability", "brain probability"],
        "thresholds": {"face": 0.5, "brain": 0.3, "brain_margin_mm": 4.0},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
    }
    card.update(card_extra)
    write_json(card, path.with_suffix(".json"))
    return path


def save_without_optimizer(model, path: Path) -> None:
    import keras

    clean = keras.Model.from_config(model.get_config())
    clean.set_weights(model.get_weights())
    clean.save(path)
