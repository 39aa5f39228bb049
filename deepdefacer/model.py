"""The shipped face/brain model: find it in the installed package, load it once, predict.

A model is two files side by side in ``models/`` (installed as ``deepdefacer.models``):
``<name>.keras`` (graph + weights) and ``<name>.json`` (its model card: the canonical
grid it was trained on, thresholds, training data and metrics). Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from deepdefacer.atlas import BRAIN_GAIN as ATLAS_BRAIN_GAIN
from deepdefacer.atlas import REGISTRATION as ATLAS_REGISTRATION
from deepdefacer.conform import GridPlan

DEFAULT_MODEL = "deepdefacer_unet_v9"


def shipped_model_path(name: str = DEFAULT_MODEL) -> Path:
    path = Path(str(resources.files("deepdefacer.models").joinpath(f"{name}.keras")))
    if not path.is_file():
        raise FileNotFoundError(
            f"model file {path} is missing from the installed package; reinstall deepdefacer")
    return path


def sha256_of(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def configure_device(device: str = "auto") -> str:
    """Pick TensorFlow's device before any op runs; return what will be used."""
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be auto, cpu or gpu, not {device!r}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if device == "cpu":
        # Hiding the GPU must happen before TensorFlow initialises it.
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise RuntimeError("--device gpu was asked for but TensorFlow sees no GPU")
    return "gpu" if gpus and device != "cpu" else "cpu"


@dataclass
class Defacer:
    """A loaded model with its canonical grid and decision thresholds."""

    model: object
    path: Path
    plan: GridPlan
    face_threshold: float = 0.5
    brain_threshold: float = 0.3
    brain_margin_mm: float = 4.0
    face_dilate_mm: float = 0.0
    growth_margin_mm: float | None = None
    edge_mm: float = 0.0
    mirror_average: bool = False
    atlas_guard: bool = True  # deepdefacer.atlas: on by default since stop 15
    device: str = "cpu"
    card: dict = field(default_factory=dict)
    _sha256: str | None = None

    @property
    def model_name(self) -> str:
        return self.path.name

    @property
    def decision(self) -> dict:
        """The post-processing parameters (recorded in every output's provenance)."""
        return decision_record(self.face_threshold, self.face_dilate_mm, self.brain_threshold,
                               self.brain_margin_mm, self.growth_margin_mm, self.edge_mm,
                               self.mirror_average, self.atlas_guard)

    @property
    def model_sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = sha256_of(self.path)
        return self._sha256

    def predict(self, cube: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Face and brain probabilities on the canonical cube.

        With ``mirror_average`` the cube and its left-right mirror (axis 0 of the RAS
        cube; heads are nearly symmetric and training flips them) go through the
        network as one batch of two, and the mirror's output is flipped back and
        averaged in: a mask that depends less on where the grid's voxels happen to fall
        (v8, +-15 degree rotations: min Dice 0.980 -> 0.982).
        """
        cube = np.asarray(cube, np.float32)
        if not self.mirror_average:
            out = np.asarray(self._forward(cube[None, ..., None]))[0]
            return out[..., 0], out[..., 1]
        batch = np.stack([cube, cube[::-1]])[..., None]
        out = np.asarray(self._forward(batch))
        mean = 0.5 * (out[0] + out[1][::-1])
        return mean[..., 0], mean[..., 1]

    def _forward(self, batch):
        if not hasattr(self, "_compiled"):
            import tensorflow as tf

            # One traced graph for the fixed cube shape: no retracing per call.
            self._compiled = tf.function(lambda x: self.model(x, training=False),
                                         reduce_retracing=True)
        return self._compiled(batch)

    def deface(self, img):
        from deepdefacer.pipeline import deface

        return deface(img, self)

    def deface_with_details(self, img):
        from deepdefacer.pipeline import deface_with_details

        return deface_with_details(img, self)


def decision_record(face_threshold, face_dilate_mm, brain_threshold, brain_margin_mm,
                    growth_margin_mm, edge_mm, mirror_average, atlas_guard) -> dict:
    """The post-processing parameters as the provenance records them (and the up-to-date check
    compares them)."""
    return {"FaceThreshold": face_threshold, "FaceGrowthMM": face_dilate_mm,
            "BrainThreshold": brain_threshold, "BrainMarginMM": brain_margin_mm,
            "GrowthBrainMarginMM": brain_margin_mm if growth_margin_mm is None else growth_margin_mm,
            "FieldOfViewEdgeMM": edge_mm, "LeftRightMirrorAverage": mirror_average,
            # Only when on: outputs made without it keep their provenance (not redone).
            # The gain changes outputs: guarded outputs made without it are redone.
            **({"AtlasBrainGuard": True, "AtlasBrainGain": ATLAS_BRAIN_GAIN,
                # Implausible headers' voxel sizes fitted, and a crown cut by the field of view
                # placed from the fit (only those scans change).
                "AtlasHeaderFit": True, "AtlasCrown": True,
                # The guard's own registration (deepdefacer.registration) replaced
                # antsRegistration; guarded outputs made before it are redone.
                "AtlasRegistration": ATLAS_REGISTRATION} if atlas_guard else {})}


def card_settings(card: dict) -> dict:
    """Defacer's decision settings from a model card's thresholds and inference options."""
    thresholds = card.get("thresholds", {})
    return {"face_threshold": float(thresholds.get("face", 0.5)),
            "brain_threshold": float(thresholds.get("brain", 0.3)),
            "brain_margin_mm": float(thresholds.get("brain_margin_mm", 4.0)),
            "face_dilate_mm": float(thresholds.get("face_dilate_mm", 0.0)),
            "growth_margin_mm": (float(thresholds["growth_margin_mm"])
                                 if thresholds.get("growth_margin_mm") is not None else None),
            "edge_mm": float(thresholds.get("edge_mm", 0.0)),
            "mirror_average": bool(card.get("inference", {}).get("mirror_average", False))}


@dataclass(frozen=True)
class ModelIdentity:
    """What the up-to-date check compares, read without TensorFlow: a rerun over finished
    outputs (a resubmitted SLURM array) then costs seconds, not a model load."""

    name: str
    sha256: str
    decision: dict


def model_identity(atlas_guard: bool = True,
                   model_path: str | os.PathLike | None = None) -> ModelIdentity:
    """The shipped model's (or ``model_path``'s) file name, sha256 and decision record."""
    path = Path(model_path) if model_path else shipped_model_path()
    settings = card_settings(read_card(path))
    return ModelIdentity(path.name, sha256_of(path), decision_record(
        settings["face_threshold"], settings["face_dilate_mm"], settings["brain_threshold"],
        settings["brain_margin_mm"], settings["growth_margin_mm"], settings["edge_mm"],
        settings["mirror_average"], atlas_guard))


def read_card(path: Path) -> dict:
    """The model card beside a ``.keras`` file; it must state the grid the model was trained on.

    A network's input shape gives the cube's size but not its voxel size; guessing one
    predicts faces at the wrong scale, so a model without its card is refused.
    """
    card_path = Path(path).with_suffix(".json")
    if not card_path.is_file():
        raise ValueError(f"{path}: no model card {card_path.name} beside it (it states the grid's "
                         "voxel size the model was trained on)")
    try:
        card = json.loads(card_path.read_text())
        float(card["grid"]["voxel_mm"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{card_path}: not a model card with grid.voxel_mm ({exc})") from exc
    return card


def load_defacer(device: str = "auto", model_path: str | os.PathLike | None = None) -> Defacer:
    """Load the shipped model (or ``model_path``) once; reuse it for every scan."""
    used = configure_device(device)
    import keras

    path = Path(model_path) if model_path else shipped_model_path()
    card = read_card(path)
    grid = card["grid"]
    model = keras.models.load_model(path, compile=False)
    size = int(model.input_shape[1])
    plan = GridPlan(size=size, voxel_mm=float(grid["voxel_mm"]),
                    top_margin_mm=float(grid.get("top_margin_mm", 12.0)))
    return Defacer(model=model, path=path, plan=plan, **card_settings(card), device=used,
                   card=card)


_DEFAULT: Defacer | None = None


def default_defacer() -> Defacer:
    """The shipped model, loaded on first use and kept for the process."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_defacer()
    return _DEFAULT
