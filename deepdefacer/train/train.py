"""Train the face/brain U-Net: ``python -m deepdefacer.train.train`` (or ``deepdefacer-train``).

Seeded; Keras progress bar; a checkpoint (model + optimizer) after every epoch in
``--run-dir``; ``--resume`` continues from the last one. ``--export NAME`` writes the
shipped ``models/NAME.keras`` and its model card ``models/NAME.json``.
``--smoke`` trains a tiny network for a few steps on two heads (CI, < 2 minutes).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from deepdefacer.conform import GridPlan
from deepdefacer.train.augment import AugmentOptions, Head, sample
from deepdefacer.train.data import DATA_ROOT, split
from deepdefacer.train.labels import label_name

REPO = Path(__file__).resolve().parents[2]


# Brain target -> the brain label files it is made of (their union).
BRAIN_LABELS = {"affine": ("brain",), "syn": ("brainsyn",), "union": ("brain", "brainsyn")}


def label_paths(path: Path, label_dir: Path, brain_label: str = "affine") -> list[Path]:
    """The face label and the brain label(s) of one head."""
    name = label_name(path)
    return [label_dir / f"{name}_{kind}.nii.gz" for kind in ("face", *BRAIN_LABELS[brain_label])]


def load_heads(paths, label_dir: Path, brain_label: str = "affine") -> list[Head]:
    """Heads with all their labels; the brain target is the affine brain, the SyN brain or both.

    The SyN brain (``labels.py --deformable-brain``) follows one person's frontal pole
    where the affine map of an average brain overreaches into sinus and bone; their
    union keeps the affine overreach as a safety margin and adds what only SyN reaches.
    """
    heads, missing = [], []
    for path in paths:
        name = label_name(path)
        face_path, *brain_paths = label_paths(path, label_dir, brain_label)
        if not all(p.exists() for p in (face_path, *brain_paths)):
            missing.append(name)
            continue
        img = nib.load(path)
        heads.append(Head(name=name, image=img.get_fdata(dtype=np.float32),
                          face=np.asarray(nib.load(face_path).dataobj, dtype=np.float32),
                          brain=np.max([np.asarray(nib.load(p).dataobj, dtype=np.float32)
                                        for p in brain_paths], axis=0),
                          affine=img.affine))
    if missing:
        print(f"skipped {len(missing)} heads without {'/'.join(BRAIN_LABELS[brain_label])} labels: "
              + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""), flush=True)
    return heads


def make_dataset(heads, plan: GridPlan, batch_size: int, steps: int, seed: int, augment: bool,
                 options: AugmentOptions = AugmentOptions()):
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.epoch = 0

        def __len__(self):
            return steps

        def on_epoch_end(self):
            self.epoch += 1

        def __getitem__(self, index):
            # One generator per (epoch, batch): the same run draws the same samples.
            rng = np.random.default_rng([seed, self.epoch, index])
            chosen = rng.integers(len(heads), size=batch_size)
            pairs = [sample(heads[i], plan, rng, augment=augment, options=options) for i in chosen]
            return (np.stack([p[0] for p in pairs])[..., None], np.stack([p[1] for p in pairs]))

    return Batches()


def dice_bce_loss(y_true, y_pred):
    import keras.ops as ops

    eps = 1e-5
    bce = ops.mean(ops.binary_crossentropy(y_true, y_pred))
    axes = (1, 2, 3)
    intersection = ops.sum(y_true * y_pred, axis=axes)
    union = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    dice = ops.mean((2 * intersection + eps) / (union + eps))
    return bce + (1 - dice)


BOUNDARY_TERMS = ("creep", "short")


def boundary_penalty(y_true, y_pred, reach_voxels: int = 2, terms=BOUNDARY_TERMS):
    """Where a defacer would cut brain: the face/brain border, weighted on its own.

    The border is where face and brain both lie within ``reach_voxels``. Two terms,
    each a mean over its zone so that the thin border counts as much as the whole
    cube: face probability on the border's non-face voxels (face creeping onto the
    brain), and missing brain probability on its brain voxels (the brain guard
    falling short at the frontal base). Both are 0 for a prediction equal to binary targets.
    ``terms`` picks them: ("creep",) alone leaves the brain output free of the pull towards
    the face that made v6/v7's brain reach into the orbits.
    """
    import keras.ops as ops

    face_t, brain_t = y_true[..., 0:1], y_true[..., 1:2]
    face_p, brain_p = y_pred[..., 0:1], y_pred[..., 1:2]
    size = 2 * reach_voxels + 1
    border = ((ops.max_pool(face_t, size, strides=1, padding="same") > 0.5)
              & (ops.max_pool(brain_t, size, strides=1, padding="same") > 0.5))
    near_brain = ops.cast(border & (face_t < 0.5), "float32")
    near_face = ops.cast(border & (brain_t > 0.5), "float32")
    axes = (1, 2, 3, 4)
    total = 0.0
    if "creep" in terms:
        total = total + ops.sum(face_p * near_brain, axis=axes) / (ops.sum(near_brain, axis=axes) + 1.0)
    if "short" in terms:
        total = total + ops.sum((1 - brain_p) * near_face, axis=axes) / (ops.sum(near_face, axis=axes) + 1.0)
    return ops.mean(total)


def make_loss(boundary_weight: float = 0.0, boundary_terms=BOUNDARY_TERMS):
    """The training loss: Dice + BCE, plus ``boundary_weight`` x ``boundary_penalty``."""
    if not boundary_weight:
        return dice_bce_loss
    terms = tuple(boundary_terms)

    def dice_bce_boundary_loss(y_true, y_pred):
        return dice_bce_loss(y_true, y_pred) + boundary_weight * boundary_penalty(y_true, y_pred, terms=terms)

    return dice_bce_boundary_loss


def face_dice(y_true, y_pred):
    import keras.ops as ops

    t, p = y_true[..., 0], ops.cast(y_pred[..., 0] > 0.5, "float32")
    return ops.mean((2 * ops.sum(t * p, axis=(1, 2, 3)) + 1e-5)
                    / (ops.sum(t, axis=(1, 2, 3)) + ops.sum(p, axis=(1, 2, 3)) + 1e-5))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def export(model, plan: GridPlan, out_dir: Path, name: str, card_extra: dict) -> Path:
    """Write the inference model (no optimizer state) and its model card."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.keras"
    model.save(path, include_optimizer=False) if "include_optimizer" in model.save.__code__.co_varnames \
        else _save_without_optimizer(model, path)
    card = {
        "name": name,
        "file": path.name,
        "sha256": sha256_of(path),
        "grid": {"size": plan.size, "voxel_mm": plan.voxel_mm, "top_margin_mm": plan.top_margin_mm,
                 "axes": "RAS", "normalisation": "percentiles 2/98 of head, clipped to [0, 1.5]"},
        "outputs": ["face probability", "brain probability"],
        "thresholds": {"face": 0.5, "brain": 0.3, "brain_margin_mm": 4.0},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
    }
    card.update(card_extra)
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return path


def _save_without_optimizer(model, path: Path) -> None:
    import keras

    clean = keras.Model.from_config(model.get_config())
    clean.set_weights(model.get_weights())
    clean.save(path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train the Deepdefacer face/brain U-Net.")
    parser.add_argument("--labels", type=Path, default=REPO / "labels")
    parser.add_argument("--run-dir", type=Path, default=REPO / "train_runs" / "default")
    parser.add_argument("--size", type=int, default=64, help="cube size in voxels")
    parser.add_argument("--voxel-mm", type=float, default=4.0)
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--epochs", type=int, help="total epochs (default 30; smoke 2)")
    parser.add_argument("--steps", type=int, default=100, help="batches per epoch")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--max-minutes", type=float, default=110.0,
                        help="stop after the epoch that crosses this wall time")
    parser.add_argument("--max-heads", type=int, help="train on the first N labelled heads")
    parser.add_argument("--heads-file", type=Path,
                        help="train on these heads (paths relative to shared/data, one a line)")
    parser.add_argument("--brain-label", choices=sorted(BRAIN_LABELS), default="affine",
                        help="brain target: the affine brain label, the deformable (SyN) one made "
                             "by `deepdefacer.train.labels --deformable-brain`, or their union")
    parser.add_argument("--boundary-weight", type=float, default=0.0,
                        help="weight of the face/brain border penalty added to the loss (0: none)")
    parser.add_argument("--boundary-terms", nargs="+", choices=BOUNDARY_TERMS, default=list(BOUNDARY_TERMS),
                        help="which border terms: face creeping onto the brain, brain falling short")
    defaults = AugmentOptions()
    parser.add_argument("--max-degrees", type=float, default=defaults.max_degrees,
                        help="random rotation about the front-back and up-down axes (degrees)")
    parser.add_argument("--max-pitch-degrees", type=float, default=defaults.max_pitch_degrees,
                        help="random rotation about the left-right axis, chin down/up (degrees)")
    parser.add_argument("--gamma-log", type=float, default=defaults.gamma_log,
                        help="gamma = exp(uniform(-G, G)) on half the cubes")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--init-from", type=Path, metavar="KERAS",
                        help="start from this model's weights (same cube and network), e.g. to "
                             "continue a shipped model on more labelled heads")
    parser.add_argument("--export", metavar="NAME", help="write models/NAME.keras and its card")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--smoke", action="store_true", help="tiny network, few steps (CI)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    if args.smoke:
        args.size, args.voxel_mm, args.base_filters = 32, 8.0, 4
        args.steps, args.batch_size = 2, 1
    if args.epochs is None:
        args.epochs = 2 if args.smoke else 30
    keras.utils.set_random_seed(args.seed)
    plan = GridPlan(size=args.size, voxel_mm=args.voxel_mm)
    parts = split()
    train_paths = [p for p in parts["train"] if (args.labels / f"{label_name(p)}_face.nii.gz").exists()]
    previous = args.run_dir / "training_heads.txt"
    if args.heads_file:  # reproduce a run: exactly the heads its model card lists
        train_paths = [DATA_ROOT / line for line in args.heads_file.read_text().split()]
    elif args.resume and previous.exists():  # the same heads as the interrupted run
        train_paths = [Path(line) for line in previous.read_text().split()]
    elif args.smoke:
        train_paths = train_paths[:2]
    elif args.max_heads:
        train_paths = train_paths[: args.max_heads]
    heads = load_heads(train_paths, args.labels, args.brain_label)
    loaded = {head.name for head in heads}  # the card lists only the heads trained on
    train_paths = [p for p in train_paths if label_name(p) in loaded]
    if not heads:
        raise SystemExit(f"no labelled training heads in {args.labels}: run deepdefacer.train.labels")
    print(f"training on {len(heads)} heads, cube {plan.size}^3 at {plan.voxel_mm} mm", flush=True)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.run_dir / "last.keras"
    state_path = args.run_dir / "state.json"
    initial_epoch = 0
    if args.resume and checkpoint.exists():
        loss = make_loss(args.boundary_weight, args.boundary_terms)
        model = keras.models.load_model(checkpoint, custom_objects={
            loss.__name__: loss, "face_dice": face_dice})
        initial_epoch = json.loads(state_path.read_text())["epoch"]
        print(f"resumed from {checkpoint} after epoch {initial_epoch}")
    else:
        from deepdefacer.train.network import build_unet

        model = build_unet(size=plan.size, base_filters=args.base_filters)
        if args.init_from:
            model.set_weights(keras.models.load_model(args.init_from, compile=False).get_weights())
            print(f"initialised from {args.init_from}", flush=True)
        model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                      loss=make_loss(args.boundary_weight, args.boundary_terms), metrics=[face_dice])
    options = AugmentOptions(args.max_degrees, args.max_pitch_degrees, args.gamma_log)
    data = make_dataset(heads, plan, args.batch_size, args.steps, args.seed, augment=True, options=options)
    start = time.time()

    class Checkpoint(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.save(checkpoint)
            state_path.write_text(json.dumps({"epoch": epoch + 1, "logs": logs}, default=float))
            if (time.time() - start) / 60 > args.max_minutes:
                print(f"time budget of {args.max_minutes} min reached after epoch {epoch + 1}")
                self.model.stop_training = True

    (args.run_dir / "training_heads.txt").write_text("\n".join(str(p) for p in train_paths) + "\n")
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=3, min_lr=1e-5)
    history = model.fit(data, epochs=args.epochs, initial_epoch=initial_epoch,
                        callbacks=[Checkpoint(), plateau], verbose=1 if sys.stdout.isatty() else 2)
    minutes = (time.time() - start) / 60
    print(f"trained {minutes:.1f} min", flush=True)
    if args.export:
        card = {
            "command": "python -m deepdefacer.train.train " + " ".join(argv if argv is not None else sys.argv[1:]),
            "training_minutes": round(minutes, 1),
            "epochs": int(json.loads(state_path.read_text())["epoch"]),
            "steps_per_epoch": args.steps, "batch_size": args.batch_size, "seed": args.seed,
            "base_filters": args.base_filters, "brain_label": args.brain_label,
            "boundary_weight": args.boundary_weight, "boundary_terms": list(args.boundary_terms),
            **({"initialised_from": {"file": args.init_from.name, "sha256": sha256_of(args.init_from)}}
               if args.init_from else {}),
            "final_loss": {k: float(v[-1]) for k, v in history.history.items()} if history.history else {},
            "training_data": [{"file": str(h_path.relative_to(h_path.parents[1])), "sha256": sha256_of(h_path)}
                              for h_path in train_paths],
            "validation_data": [str(p.relative_to(p.parents[1])) for p in parts["validation"] + parts["heads"]],
        }
        path = export(model, plan, args.models_dir, args.export, card)
        print(f"exported {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
