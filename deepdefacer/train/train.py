"""Train the face/brain U-Net: ``python -m deepdefacer.train.train`` (or ``deepdefacer-train``).

Seeded; Keras progress bar; a checkpoint (model + optimizer) after every epoch in
``--run-dir``; ``--resume`` continues from the last one. ``--export NAME`` writes the
shipped ``models/NAME.keras`` and its model card ``models/NAME.json``
(``deepdefacer.train.model_card``), which records the augmentation recipe.
``--smoke`` trains a tiny network for a few steps on two heads (CI, < 2 minutes).

The data flow: ``data`` (which heads) -> ``dataset`` (labelled heads -> augmented batches,
``augment``) -> ``network`` -> ``losses`` -> this fit loop -> ``model_card``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from deepdefacer.conform import GridPlan
from deepdefacer.train.augment import AugmentOptions, default_augmentation
from deepdefacer.train.data import DATA_ROOT, label_name, split
from deepdefacer.train.dataset import BRAIN_LABELS, load_heads, make_dataset
from deepdefacer.train.losses import BOUNDARY_TERMS, face_dice, make_loss
from deepdefacer.train.model_card import export, training_record

REPO = Path(__file__).resolve().parents[2]


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
    augmentation = default_augmentation(AugmentOptions(args.max_degrees, args.max_pitch_degrees,
                                                       args.gamma_log))
    data = make_dataset(heads, plan, args.batch_size, args.steps, args.seed, augment=True,
                        transforms=augmentation)
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
        card = training_record(
            args, "python -m deepdefacer.train.train " + " ".join(argv if argv is not None else sys.argv[1:]),
            minutes, int(json.loads(state_path.read_text())["epoch"]), history, train_paths,
            parts["validation"] + parts["heads"], augmentation.recipe())
        path = export(model, plan, args.models_dir, args.export, card)
        print(f"exported {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
