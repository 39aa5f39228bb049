"""What every output records about how it was made, and what a rerun compares to skip it.

The record names the version, the model file (and its sha256), the decision settings (the model
card's thresholds, the inference options and the atlas guard's), what the defacing found for this
scan, the inputs' sha256 and the face check's verdict. The up-to-date check compares the same
keys, read without TensorFlow: a resubmitted SLURM array over finished outputs costs seconds,
not a model load per task.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from deepdefacer import ears
from deepdefacer.atlas import BRAIN_GAIN as ATLAS_BRAIN_GAIN
from deepdefacer.atlas import REGISTRATION as ATLAS_REGISTRATION
from deepdefacer.errors import ModelLoadError
from deepdefacer.files import sha256_file
from deepdefacer.predictor import Thresholds, read_card, shipped_model_path


def version() -> str:
    """This installation's version (the source tree's ``version`` file when not installed)."""
    try:
        from importlib.metadata import version as installed_version

        return installed_version("deepdefacer")
    except Exception:  # running from a source tree that was never installed
        version_file = Path(__file__).resolve().parents[1] / "version"
        return version_file.read_text().strip() if version_file.exists() else "unknown"


def decision_record(thresholds: Thresholds, mirror_average: bool, atlas_guard: bool,
                    mode: str = "deface", remove_ears: bool = False) -> dict:
    """The post-processing settings as the provenance records them (and the up-to-date check
    compares them): a scan defaced in another mode, or with the ears removed or not, is redone."""
    return {"Mode": mode, "RemoveEars": remove_ears,
            **({"EarMarginMM": ears.MARGIN_MM, "EarBrainClearanceMM": ears.BRAIN_CLEARANCE_MM}
               if remove_ears else {}),
            "FaceThreshold": thresholds.face, "FaceGrowthMM": thresholds.face_dilate_mm,
            "BrainThreshold": thresholds.brain, "BrainMarginMM": thresholds.brain_margin_mm,
            "GrowthBrainMarginMM": thresholds.growth_margin_mm,
            "FieldOfViewEdgeMM": thresholds.edge_mm, "LeftRightMirrorAverage": mirror_average,
            # Only when on: outputs made without the guard keep their provenance (not redone).
            # Each key names a part of the guard that changes its outputs, so outputs made
            # without that part are redone: the gain on the registered brain, implausible
            # headers' voxel sizes fitted, a crown cut by the field of view placed from the fit,
            # and the registration itself (deepdefacer.registration).
            **({"AtlasBrainGuard": True, "AtlasBrainGain": ATLAS_BRAIN_GAIN,
                "AtlasHeaderFit": True, "AtlasCrown": True,
                "AtlasRegistration": ATLAS_REGISTRATION} if atlas_guard else {})}


@dataclass(frozen=True)
class ModelIdentity:
    """What the up-to-date check compares about the method: file name, sha256, decision."""

    name: str
    sha256: str
    decision: dict


_IDENTITIES: dict = {}


def method_identity(atlas_guard: bool = True, model_path: str | os.PathLike | None = None,
                    mode: str = "deface", remove_ears: bool = False) -> ModelIdentity:
    """The shipped model's (or ``model_path``'s) identity, read once per process without
    TensorFlow; an unreadable model or card is a ModelLoadError."""
    key = (atlas_guard, model_path, mode, remove_ears)
    if key not in _IDENTITIES:
        try:
            path = Path(model_path) if model_path else shipped_model_path()
            card = read_card(path)
            _IDENTITIES[key] = ModelIdentity(path.name, sha256_file(path), decision_record(
                Thresholds.from_card(card), bool(card.get("inference", {}).get("mirror_average", False)),
                atlas_guard, mode, remove_ears))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read the Deepdefacer model or its card: {exc}") from exc
    return _IDENTITIES[key]


def identity_of(defacer) -> ModelIdentity:
    """The identity of a loaded ``pipeline.Defacer``."""
    return ModelIdentity(defacer.predictor.model_name, defacer.predictor.model_sha256,
                         defacer.decision)


def record(defacer, details: dict, input_sha256, mask_source: str, mask_source_sha256: str,
           verified, seconds: float, command_line: str) -> dict:
    """The provenance of one output (``input_sha256``/``verified``: a scan's, or by scan for a
    mask that several scans share)."""
    return {
        "Version": version(),
        "Model": defacer.predictor.model_name,
        "ModelSHA256": defacer.predictor.model_sha256,
        "Decision": defacer.decision,
        **details,
        "InputSHA256": input_sha256,
        "MaskSource": mask_source,
        "MaskSourceSHA256": mask_source_sha256,
        "Verified": verified,
        "Device": str(defacer.predictor.device),
        "Seconds": round(seconds, 2),
        "CommandLine": command_line,
        "Date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def up_to_date_key(identity: ModelIdentity, input_sha256: str | None, mask_source: str,
                   mask_source_sha256: str) -> dict:
    """What must match for an output to count as done (same model, thresholds, inputs, and a
    face check that passed: an output written unverified, or before the check existed, is redone)."""
    return {"ModelSHA256": identity.sha256, "InputSHA256": input_sha256,
            "MaskSource": mask_source, "MaskSourceSHA256": mask_source_sha256, "Verified": True,
            "Decision": identity.decision}
