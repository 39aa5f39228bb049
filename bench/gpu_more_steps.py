"""Experiment, not the shipped recipe: would many more training steps close model v2's gap?

The shipped model must come out of training within 2 hours on the 2-core CPU machine, so
v2 saw ~920 continuation steps after v1. This script asks what ~8x more would give, on
a lent GPU machine (Keras' JAX backend; TensorFlow is too large to carry there), with
v2's recipe otherwise: v1's weights, Adam 5e-4 halved on plateaus, batches of 2, the
same augmentation (``deepdefacer.train.augment.sample``) on the same 154 heads.

Three arms, one run, the same data and machine, so they compare with each other:

* ``short``: v2's continuation (40 steps an epoch, 23 epochs = 920 steps);
* ``long``: the same for as many steps as ``--long-seconds`` allow (200 steps an epoch);
* ``long_boundary``: ``long`` with ``--boundary-weight`` (the face/brain border penalty).

To carry the data under the device's 64 MiB limit, ``pack`` stores every head and its
labels block-averaged to ~4 mm (``resample.block_reduce`` with a 6 mm target; inference
samples 2 mm scans without averaging; odd edge slices are trimmed, so a face cut by the
field of view loses up to ~20% of its label volume, e.g. the SPM templates), so only the
arms' comparison is meaningful, not their absolute scores against the shipped v2.
Each arm's weights come back as ``$OUT/<arm>.keras`` without the optimizer's state (6 MB:
the device returns files of at most 16 MB), with a card ``$OUT/<arm>.json`` stating v2's grid.
The whole call takes ~6 minutes on one H200.

Every arm starts from model v1's weights (``deepdefacer_unet_v1.keras``), which no longer ship:
only v9 does. Take v1 from the git history (``git log --all -- models/deepdefacer_unet_v1.keras``
names the commits that have it) and pass it with ``--init``. The arms' cards copy the grid,
outputs and thresholds of the shipped v9 card (the grid is the same for every model so far).
Run from the repository root:

    python -m bench.gpu_more_steps pack --out .gpu/heads.npz          # here
    KERAS_BACKEND=jax python -m bench.gpu_more_steps train --pack .gpu/heads.npz --init v1.keras --out $OUT
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from deepdefacer.conform import GridPlan
from deepdefacer.resample import block_reduce
from deepdefacer.train.augment import AugmentOptions, Head, sample

REPO = Path(__file__).resolve().parents[1]

PLAN = GridPlan(size=48, voxel_mm=5.3333)
_HEADS: list[Head] = []


def pack(out: Path, heads_file: Path, labels: Path) -> None:
    import nibabel as nib

    from deepdefacer.train.labels import label_name

    arrays = {}
    for k, path in enumerate(Path(line) for line in heads_file.read_text().split()):
        img = nib.load(path)
        raw = np.asarray(img.dataobj.get_unscaled(), dtype=np.float32)
        reduced, affine = block_reduce(raw, img.affine, 6.0)
        exact = reduced.min() >= 0 and reduced.max() <= 255
        arrays[f"{k}_image"] = np.round(reduced).astype(np.uint8) if exact else reduced.astype(np.float16)
        arrays[f"{k}_scale"] = np.array([img.dataobj.slope, img.dataobj.inter], np.float64)
        arrays[f"{k}_reduced_affine"] = affine
        arrays[f"{k}_name"] = np.array(label_name(path))
        for kind in ("face", "brain"):
            label = np.asarray(nib.load(labels / f"{label_name(path)}_{kind}.nii.gz").dataobj, np.float32)
            arrays[f"{k}_{kind}"] = np.round(block_reduce(label, img.affine, 6.0)[0] * 255).astype(np.uint8)
    np.savez_compressed(out, **arrays)


def load_pack(path: Path) -> list[Head]:
    z = np.load(path)
    heads, k = [], 0
    while f"{k}_image" in z:
        slope, inter = z[f"{k}_scale"]
        slope = slope if np.isfinite(slope) and slope != 0 else 1.0
        inter = inter if np.isfinite(inter) else 0.0
        heads.append(Head(name=str(z[f"{k}_name"]),
                          image=z[f"{k}_image"].astype(np.float32) * np.float32(slope) + np.float32(inter),
                          face=z[f"{k}_face"].astype(np.float32) / 255,
                          brain=z[f"{k}_brain"].astype(np.float32) / 255,
                          affine=z[f"{k}_reduced_affine"]))
        k += 1
    return heads


def _init_worker(path: str) -> None:
    global _HEADS
    _HEADS = load_pack(Path(path))


def _batch(task):
    seed, index, batch_size, options = task
    rng = np.random.default_rng([seed, index])
    chosen = rng.integers(len(_HEADS), size=batch_size)
    pairs = [sample(_HEADS[i], PLAN, rng, augment=True, options=options) for i in chosen]
    return np.stack([p[0] for p in pairs])[..., None], np.stack([p[1] for p in pairs])


def batches(pool, seed: int, count: int, batch_size: int, options: AugmentOptions = AugmentOptions(),
            window: int = 96):
    """Augmented batches made ahead by the worker pool, in order, at most ``window`` queued."""
    pending = collections.deque()
    for index in range(count):
        pending.append(pool.apply_async(_batch, ((seed, index, batch_size, options),)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def train_arm(pool, name: str, init: Path, out: Path, steps_per_epoch: int, epochs: int,
              seconds: float, boundary_weight: float, seed: int, learning_rate: float,
              boundary_terms=("creep", "short"), options: AugmentOptions = AugmentOptions()) -> dict:
    import keras

    from deepdefacer.train.train import _save_without_optimizer, make_loss

    keras.utils.set_random_seed(seed)
    model = keras.models.load_model(init, compile=False)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=make_loss(boundary_weight, boundary_terms))
    start = time.time()
    done = {"steps": 0}

    class Budget(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            done["steps"] += 1
            if time.time() - start > seconds:
                self.model.stop_training = True

    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=3, min_lr=1e-5)
    history = model.fit(batches(pool, seed, steps_per_epoch * epochs, 2, options), steps_per_epoch=steps_per_epoch,
                        epochs=epochs, callbacks=[Budget(), plateau], verbose=2)
    # Without the optimizer's state (6 MB, not 18): the device returns files of at most 16 MB.
    _save_without_optimizer(model, out / f"{name}.keras")
    # The card states the grid: deepdefacer.predictor refuses a model without one.
    card = json.loads((REPO / "models" / "deepdefacer_unet_v9.json").read_text())  # same grid as every arm
    (out / f"{name}.json").write_text(json.dumps({
        "name": name, "file": f"{name}.keras", "grid": card["grid"], "outputs": card["outputs"],
        "thresholds": card["thresholds"], "note": "bench/gpu_more_steps.py arm, not a shipped model"}, indent=2))
    result = {"arm": name, "steps": done["steps"], "seconds": round(time.time() - start, 1),
              "steps_per_epoch": steps_per_epoch, "boundary_weight": boundary_weight,
              "boundary_terms": list(boundary_terms), "augment": vars(options),
              "final_loss": float(history.history["loss"][-1]),
              "final_learning_rate": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))}
    print(json.dumps(result), flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--heads-file", type=Path, default=REPO / "train_runs" / "v2" / "training_heads.txt")
    p.add_argument("--labels", type=Path, default=REPO / "labels")
    t = sub.add_parser("train")
    t.add_argument("--pack", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--init", type=Path, required=True,
                   help="the starting weights: model v1's .keras (not shipped any more; from the git history)")
    t.add_argument("--arms", nargs="+", default=["short", "long", "long_boundary"])
    t.add_argument("--short-steps", type=int, default=920)
    t.add_argument("--long-seconds", type=float, default=200.0)
    t.add_argument("--boundary-weight", type=float, default=0.5)
    t.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    t.add_argument("--seed", type=int, default=2027)
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.out, args.heads_file, args.labels)
        return 0
    import multiprocessing

    # Fork the augmentation workers before JAX starts its threads.
    pool = multiprocessing.get_context("fork").Pool(args.workers, _init_worker, (str(args.pack),))
    args.out.mkdir(parents=True, exist_ok=True)
    both, creep = ("creep", "short"), ("creep",)
    wide = AugmentOptions(max_pitch_degrees=30.0, gamma_log=0.6)
    arms = {"short": (40, max(1, args.short_steps // 40), 1e9, 0.0, both, AugmentOptions()),
            "long": (200, 1000, args.long_seconds, 0.0, both, AugmentOptions()),
            "long_boundary": (200, 1000, args.long_seconds, args.boundary_weight, both, AugmentOptions()),
            # v9's recipe (the creep term alone at 0.4), and the same with pitch up to +-30 degrees
            # and gamma exp(+-0.6) (Subj7_T1's predicted brain grows when the scan is pitched chin-up or
            # brightened)
            "long_creep": (200, 1000, args.long_seconds, 0.4, creep, AugmentOptions()),
            "long_creep_wide": (200, 1000, args.long_seconds, 0.4, creep, wide)}
    results = []
    for name in args.arms:
        steps_per_epoch, epochs, seconds, weight, terms, options = arms[name]
        results.append(train_arm(pool, name, args.init, args.out, steps_per_epoch, epochs, seconds,
                                 weight, args.seed, 5e-4, terms, options))
        (args.out / "arms.json").write_text(json.dumps(results, indent=2) + "\n")
    pool.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
