"""The shipped face/brain network: its weights and card, loaded once; cube in, probabilities out.

A model is two files side by side in ``models/`` (installed as ``deepdefacer.models``):
``<name>.keras`` (graph + weights) and ``<name>.json`` (its model card: the canonical grid it was
trained on, the decision thresholds, training data and metrics). Nothing is downloaded. The
predictor knows the network and its card only; what is done with its output is
``deepdefacer.pipeline``'s.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from deepdefacer.conform import GridPlan
from deepdefacer.errors import ModelLoadError
from deepdefacer.files import sha256_file

DEFAULT_MODEL = "deepdefacer_unet_v9"


def shipped_model_path(name: str = DEFAULT_MODEL) -> Path:
    path = Path(str(resources.files("deepdefacer.models").joinpath(f"{name}.keras")))
    if not path.is_file():
        raise FileNotFoundError(
            f"model file {path} is missing from the installed package; reinstall deepdefacer")
    return path


@dataclass(frozen=True)
class Thresholds:
    """How the probabilities become a mask (``deepdefacer.mask.face_mask``): the model card's
    ``thresholds``, which were chosen on the validation heads for this model's weights."""

    face: float  # face probability at which a voxel is face
    brain: float  # brain probability at which a voxel is guarded
    brain_margin_mm: float  # the face is kept this far from the brain
    face_dilate_mm: float  # the face region grows by this into its uncertain edges
    growth_margin_mm: float  # the growth is kept this far from the brain
    edge_mm: float  # the cube is held this far beyond its edge, and cut faces carried to the cut

    @classmethod
    def from_card(cls, card: dict, where: str = "model card") -> Thresholds:
        values = card.get("thresholds") or {}
        missing = [name for name in ("face", "brain", "brain_margin_mm") if name not in values]
        if missing:
            raise ValueError(f"{where}: no thresholds.{', thresholds.'.join(missing)}")
        margin = float(values["brain_margin_mm"])
        growth = values.get("growth_margin_mm")
        return cls(float(values["face"]), float(values["brain"]), margin,
                   float(values.get("face_dilate_mm", 0.0)),
                   margin if growth is None else float(growth), float(values.get("edge_mm", 0.0)))


def read_card(path: Path) -> dict:
    """The model card beside a ``.keras`` file; it must state the grid the model was trained on
    and its decision thresholds.

    A network's input shape gives the cube's size but not its voxel size; guessing one predicts
    faces at the wrong scale, so a model without its card is refused.
    """
    card_path = Path(path).with_suffix(".json")
    if not card_path.is_file():
        raise ValueError(f"{path}: no model card {card_path.name} beside it (it states the grid's "
                         "voxel size the model was trained on)")
    try:
        card = json.loads(card_path.read_text())
        float(card["grid"]["voxel_mm"])
        Thresholds.from_card(card, str(card_path))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{card_path}: not a model card with grid.voxel_mm and thresholds "
                         f"({exc})") from exc
    return card


# What TensorFlow's C++ side prints on every import, before Python's logging can be set: absl's
# notice that it has not been initialised, oneDNN's and the CPU features' banners. They broke the
# progress bar and filled every SLURM log; anything else it prints still reaches stderr.
STARTUP_NOISE = ("All log messages before absl::InitializeLog()", "] oneDNN custom operations are on",
                 "cpu_feature_guard.cc", "To enable the following instructions",
                 "rebuild TensorFlow with the appropriate compiler flags")


def import_tensorflow():
    """``import tensorflow``, with its start-up banners (C++ writes to file descriptor 2) held
    back; other lines are passed on, and all of them are shown if the import fails."""
    import sys
    import tempfile

    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        kept = [line for line in captured.read().decode("utf-8", "replace").splitlines(True)
                if not any(noise in line for noise in STARTUP_NOISE)]
    sys.stderr.write("".join(kept))
    return tf


# The network's threads on a CPU, whatever the machine or the number of parallel processes: how
# many threads share a convolution changes the order of its float sums, and with it a few voxels
# at the mask's edge. Fixed, a scan gets the same mask on a laptop, on a 64-core node and in any
# number of worker processes; the network sees a 48^3 cube, so one thread costs little
# (docs/throughput.md), and the run uses the other CPUs with parallel processes.
INFERENCE_THREADS = 1


def pin_cpu_threads(tf) -> None:
    """TensorFlow's intra- and inter-op threads: INFERENCE_THREADS and 1; before any op runs."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(INFERENCE_THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already started in this process (e.g. training code)
        if tf.config.threading.get_intra_op_parallelism_threads() != INFERENCE_THREADS:
            raise


def configure_device(device: str = "auto") -> str:
    """Pick TensorFlow's device before any op runs; return what will be used."""
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be auto, cpu or gpu, not {device!r}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if device == "cpu":
        # Hiding the GPU must happen before TensorFlow initialises it.
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    tf = import_tensorflow()
    pin_cpu_threads(tf)

    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise RuntimeError("--device gpu was asked for but TensorFlow sees no GPU")
    return "gpu" if gpus and device != "cpu" else "cpu"


@dataclass
class Predictor:
    """A loaded network with its card: the canonical grid, thresholds and inference options."""

    model: object
    path: Path
    plan: GridPlan
    thresholds: Thresholds
    mirror_average: bool
    device: str = "cpu"
    card: dict = field(default_factory=dict)
    _sha256: str | None = None

    @property
    def model_name(self) -> str:
        return self.path.name

    @property
    def model_sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = sha256_file(self.path)
        return self._sha256

    def predict(self, cube: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Face and brain probabilities on the canonical cube.

        With ``mirror_average`` the cube and its left-right mirror (axis 0 of the RAS cube; heads
        are nearly symmetric and training flips them) go through the network as one batch of two,
        and the mirror's output is flipped back and averaged in: a mask that depends less on where
        the grid's voxels happen to fall (v8, +-15 degree rotations: min Dice 0.980 -> 0.982).
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


def load_predictor(device: str = "auto", model_path: str | os.PathLike | None = None) -> Predictor:
    """Load the shipped model (or ``model_path``) once; reuse it for every scan."""
    used = configure_device(device)
    import keras

    path = Path(model_path) if model_path else shipped_model_path()
    card = read_card(path)
    grid = card["grid"]
    model = keras.models.load_model(path, compile=False)
    plan = GridPlan(size=int(model.input_shape[1]), voxel_mm=float(grid["voxel_mm"]),
                    top_margin_mm=float(grid.get("top_margin_mm", 12.0)))
    return Predictor(model=model, path=path, plan=plan, thresholds=Thresholds.from_card(card),
                     mirror_average=bool(card.get("inference", {}).get("mirror_average", False)),
                     device=used, card=card)


_LOADED: dict = {}


def shared_predictor(device: str = "auto") -> Predictor:
    """The shipped model on ``device``, loaded on first use and kept for the process; a failure
    is a ModelLoadError (nothing can be defaced: a run stops)."""
    if device not in _LOADED:
        try:
            _LOADED[device] = load_predictor(device=device)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the Deepdefacer model on device '{device}': "
                                 f"{type(exc).__name__}: {exc}") from exc
    return _LOADED[device]
