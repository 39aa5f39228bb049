"""The training data pipeline: labelled heads -> augmented batches for Keras.

A head is loaded once with its face and brain labels (``load_heads``); every batch is drawn
anew from them through the augmentation (``deepdefacer.train.augment``), from a generator
seeded by (run seed, epoch, batch), so the same run draws the same samples.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from deepdefacer.conform import GridPlan
from deepdefacer.train.augment import AugmentOptions, Compose, Head, default_augmentation, sample
from deepdefacer.train.data import label_name

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
                 options: AugmentOptions = AugmentOptions(), transforms: Compose | None = None):
    """A Keras dataset of ``steps`` batches an epoch (``transforms``: the augmentation recipe,
    by default ``default_augmentation(options)`` when ``augment``)."""
    import keras

    if transforms is None and augment:
        transforms = default_augmentation(options)

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
            pairs = [sample(heads[i], plan, rng, augment=augment, transforms=transforms) for i in chosen]
            return (np.stack([p[0] for p in pairs])[..., None], np.stack([p[1] for p in pairs]))

    return Batches()
