"""Augmentation: one labelled head -> endless varied training cubes.

With one main site and a few contrasts, the model learns "any contrast, resolution and field
of view" from augmentation (in the spirit of SynthStrip's synthesis): the whole histogram
remapped (T1w can look like T2w, PDw or FLAIR), gamma, bias fields, noise, 8-bit quantisation,
anisotropic resolution, field-of-view crops, rotation/scale/flip/elastic geometry.

Each perturbation is a small transform with its probability and its parameters, in the
manner of TorchIO; a ``Compose`` chains them and its ``recipe()`` is what the model card
records. Transforms of the ``"scan"`` stage act on the head on its own grid, before it is
conformed; the head's pose is perturbed as a change of its affine. The scan is then
conformed by the very same ``deepdefacer.conform.conform`` that inference uses, and the
labels are resampled onto the cube it returns; transforms of the ``"cube"`` stage act on
that cube. Every draw comes from one ``numpy.random.Generator``: a sample is reproducible
from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import ClassVar

import numpy as np
from scipy import ndimage

from deepdefacer.conform import GridPlan, conform, normalise
from deepdefacer.resample import resample
from deepdefacer.train.perturbations import (anisotropic, bias_field, crop_field_of_view, elastic_fields,
                                             random_world_transform, remap_contrast)


@dataclass
class Head:
    """A training head: image, face and brain labels on its own grid, and its affine."""

    name: str
    image: np.ndarray
    face: np.ndarray
    brain: np.ndarray
    affine: np.ndarray


@dataclass
class Cubes:
    """A conformed training sample: the image cube, its face and brain label cubes (all on the
    canonical grid) and that grid's affine (voxel -> RAS mm)."""

    image: np.ndarray
    face: np.ndarray
    brain: np.ndarray
    affine_ras: np.ndarray


@dataclass(frozen=True)
class RandomTransform:
    """A perturbation applied with ``probability``, its draws from the generator it is given.

    ``stage``: ``"scan"`` (a ``Head`` on its own grid, before conform) or ``"cube"`` (the
    ``Cubes`` that conform made). A transform with probability 1 draws nothing to decide, so
    the pose, which is always drawn, takes the same numbers from a seed as it always has.
    """

    stage: ClassVar[str] = "cube"
    probability: float = 1.0

    def __call__(self, target, rng: np.random.Generator, plan: GridPlan):
        if self.probability < 1.0 and not rng.random() < self.probability:
            return target
        return self.apply(target, rng, plan)

    def apply(self, target, rng: np.random.Generator, plan: GridPlan):
        raise NotImplementedError

    def recipe(self) -> dict:
        """The class, the stage and every parameter: JSON-able (tuples become lists)."""
        parameters = {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                      for f in fields(self)}
        return {"transform": type(self).__name__, "stage": self.stage, **parameters}


@dataclass(frozen=True)
class RandomContrast(RandomTransform):
    """The whole histogram through a random piecewise-linear lookup (``remap_contrast``)."""

    stage: ClassVar[str] = "scan"
    probability: float = 0.6
    knots: int = 7
    level_range: tuple = (0.05, 1.0)
    dark_range: tuple = (0.05, 0.4)

    def apply(self, head: Head, rng, plan):
        return replace(head, image=remap_contrast(head.image, rng, self.knots, self.level_range,
                                                  self.dark_range))


@dataclass(frozen=True)
class RandomFieldOfView(RandomTransform):
    """One slab blanked: below the face, the crown, the back of the head or the neck, in mm
    (``crop_field_of_view``)."""

    stage: ClassVar[str] = "scan"
    probability: float = 0.4
    below_face_mm: float = 40.0
    crown_mm: tuple = (10.0, 60.0)
    back_mm: tuple = (20.0, 80.0)
    neck_mm: tuple = (0.0, 50.0)

    def apply(self, head: Head, rng, plan):
        return replace(head, image=crop_field_of_view(head.image, head.affine, head.face, rng,
                                                      self.below_face_mm, self.crown_mm,
                                                      self.back_mm, self.neck_mm))


@dataclass(frozen=True)
class RandomAffine(RandomTransform):
    """The head's pose in the scanner, as a change of its affine: rotation (pitch is about the
    left-right axis, chin down / up, where real heads vary most), size, left-right flip, shift
    (``random_world_transform``). The flip is drawn between the size and the shift."""

    stage: ClassVar[str] = "scan"
    probability: float = 1.0
    max_degrees: float = 20.0
    max_pitch_degrees: float = 20.0
    scale_range: tuple = (0.85, 1.15)
    flip_left_right_probability: float = 0.5
    max_shift_mm: float = 15.0

    def apply(self, head: Head, rng, plan):
        world = random_world_transform(rng, self.max_degrees, self.scale_range,
                                       flip_lr=self.flip_left_right_probability > 0,
                                       max_pitch_degrees=self.max_pitch_degrees,
                                       flip_probability=self.flip_left_right_probability,
                                       max_shift_mm=self.max_shift_mm)
        return replace(head, affine=world @ head.affine)


@dataclass(frozen=True)
class RandomElasticDeformation(RandomTransform):
    """A smooth random displacement of the cube and its labels (``elastic_fields``).

    The image is normalised again after it: tissue moves into and out of the cube, and the
    intensity transforms after this one expect the scale that conform gives.
    """

    probability: float = 0.4
    max_displacement_mm: float = 6.0
    control_points: int = 6

    def apply(self, cubes: Cubes, rng, plan):
        coords = elastic_fields(plan.shape, rng, self.max_displacement_mm, plan.voxel_mm,
                                self.control_points)
        image, face, brain = (ndimage.map_coordinates(v, coords, order=1)
                              for v in (cubes.image, cubes.face, cubes.brain))
        return replace(cubes, image=normalise(image), face=face, brain=brain)


@dataclass(frozen=True)
class RandomBiasField(RandomTransform):
    """A smooth multiplicative field, exp of a coarse normal grid of strength drawn from
    ``strength_range`` (``bias_field``)."""

    probability: float = 0.5
    strength_range: tuple = (0.1, 0.4)
    control_points: int = 4

    def apply(self, cubes: Cubes, rng, plan):
        strength = rng.uniform(*self.strength_range)
        return replace(cubes, image=cubes.image * bias_field(plan.shape, rng, strength,
                                                             self.control_points))


@dataclass(frozen=True)
class RandomAnisotropy(RandomTransform):
    """Thick slices along a random axis, thickness in cube voxels (``anisotropic``)."""

    probability: float = 0.3
    thickness_range: tuple = (1.0, 3.0)

    def apply(self, cubes: Cubes, rng, plan):
        return replace(cubes, image=anisotropic(cubes.image, rng, plan.voxel_mm, self.thickness_range))


@dataclass(frozen=True)
class RandomGamma(RandomTransform):
    """Intensity to the power exp(uniform(-log_gamma, log_gamma))."""

    probability: float = 0.5
    log_gamma: float = 0.4

    def apply(self, cubes: Cubes, rng, plan):
        gamma = np.exp(rng.uniform(-self.log_gamma, self.log_gamma))
        return replace(cubes, image=np.clip(cubes.image, 0, None) ** gamma)


@dataclass(frozen=True)
class RandomNoise(RandomTransform):
    """Rician-like noise: |cube + normal(0, std)|, std drawn from ``std_range``."""

    probability: float = 0.5
    std_range: tuple = (0.005, 0.08)

    def apply(self, cubes: Cubes, rng, plan):
        std = rng.uniform(*self.std_range)
        return replace(cubes, image=np.abs(cubes.image + rng.normal(0, std, cubes.image.shape)))


@dataclass(frozen=True)
class RandomQuantisation(RandomTransform):
    """Storage in ``levels`` + 1 grey levels (8-bit scans)."""

    probability: float = 0.3
    levels: int = 255

    def apply(self, cubes: Cubes, rng, plan):
        scale = float(self.levels) / max(float(cubes.image.max()), 1e-6)
        return replace(cubes, image=np.round(cubes.image * scale) / scale)


class Compose:
    """Transforms applied in order: every ``"scan"`` one before conform, then the ``"cube"`` ones."""

    def __init__(self, transforms=()):
        self.transforms = tuple(transforms)
        stages = [t.stage for t in self.transforms]
        if stages != sorted(stages, key=("scan", "cube").index):
            raise ValueError(f"scan transforms must come before cube transforms: {stages}")
        self.before_conform = tuple(t for t in self.transforms if t.stage == "scan")
        self.after_conform = tuple(t for t in self.transforms if t.stage == "cube")

    def recipe(self) -> list[dict]:
        return [t.recipe() for t in self.transforms]

    def __repr__(self) -> str:
        return f"Compose({list(self.transforms)!r})"


IDENTITY = Compose()


@dataclass(frozen=True)
class AugmentOptions:
    """The ranges of the augmentations that a training command can widen.

    ``max_pitch_degrees``: rotation about the left-right axis (chin down / up), where
    real heads vary most (elderly people lying with the chin on the chest);
    ``max_degrees``: about the other two axes; ``gamma_log``: gamma drawn as
    exp(uniform(-gamma_log, gamma_log)).
    """

    max_degrees: float = 20.0
    max_pitch_degrees: float = 20.0
    gamma_log: float = 0.4


def default_augmentation(options: AugmentOptions = AugmentOptions()) -> Compose:
    """The training recipe, in the order its draws are taken from the generator."""
    return Compose([
        RandomContrast(),
        RandomFieldOfView(),
        RandomAffine(max_degrees=options.max_degrees, max_pitch_degrees=options.max_pitch_degrees),
        RandomElasticDeformation(),
        RandomBiasField(),
        RandomAnisotropy(),
        RandomGamma(log_gamma=options.gamma_log),
        RandomNoise(),
        RandomQuantisation(),
    ])


def conformed_sample(head: Head, plan: GridPlan, rng: np.random.Generator,
                     transforms: Compose = IDENTITY) -> Cubes:
    """The head perturbed, conformed as inference conforms a scan, and perturbed on the cube.

    The labels are resampled (trilinear) from the head's grid, under the same perturbed
    affine, onto the cube's grid that ``conform`` chose. After cube transforms the image is
    normalised again (they leave it off the scale the network is fed); with none, the image
    is ``conform``'s array as it is.
    """
    for transform in transforms.before_conform:
        head = transform(head, rng, plan)
    conformed = conform(head.image, head.affine, plan)
    face, brain = (resample(label, head.affine, conformed.affine_ras, plan.shape, order=1)
                   for label in (head.face, head.brain))
    cubes = Cubes(conformed.array, face, brain, conformed.affine_ras)
    for transform in transforms.after_conform:
        cubes = transform(cubes, rng, plan)
    if transforms.after_conform:
        cubes = replace(cubes, image=normalise(cubes.image.astype(np.float32)))
    return cubes


def sample(head: Head, plan: GridPlan, rng: np.random.Generator, augment: bool = True,
           options: AugmentOptions = AugmentOptions(), transforms: Compose | None = None):
    """One training cube and its (face, brain) targets on the canonical grid; ``transforms``:
    the recipe (default: ``default_augmentation(options)`` when ``augment``, else none)."""
    if transforms is None:
        transforms = default_augmentation(options) if augment else IDENTITY
    cubes = conformed_sample(head, plan, rng, transforms)
    targets = np.stack([cubes.face, cubes.brain], axis=-1).clip(0, 1).astype(np.float32)
    return cubes.image, targets
