"""deface(img) -> (defaced image, mask image): the whole method, top to bottom.

read once -> find the head -> conform -> predict -> guard the brain (optional) -> back to the
input grid and clean up -> apply in the scan's own encoding. ``face_mask_of`` is the method on
one screen; the steps live in the modules named after them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from deepdefacer import atlas, atlas_fit, ears, reface
from deepdefacer.apply import defaced_image, defaced_raw, mask_image
from deepdefacer.conform import background_intensity, conform, head_box_ras, plausible_affine
from deepdefacer.mask import Prediction, face_mask, union_of_masks
from deepdefacer.mask_transfer import resample_mask
from deepdefacer.nifti import Volume, read_volume
from deepdefacer.predictor import Predictor, shared_predictor
from deepdefacer.provenance import decision_record


MODES = ("deface", "reface")  # the face's voxels take the air's value, or an average face


@dataclass(frozen=True)
class Defacer:
    """The method's settings: the network (weights + card), whether the atlas guard runs, what
    the face's voxels become (``mode``) and whether the ears go too (``remove_ears``)."""

    predictor: Predictor
    atlas_guard: bool = True  # also guard an average brain registered to the scan (deepdefacer.atlas)
    mode: str = "deface"
    remove_ears: bool = False  # deepdefacer.ears

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if (self.mode == "reface" or self.remove_ears) and not self.atlas_guard:
            raise ValueError("refacing and ear removal place what they change with the atlas "
                             "guard's registration: they cannot run with the atlas guard off")

    @property
    def decision(self) -> dict:
        """The post-processing settings (recorded in every output's provenance)."""
        return decision_record(self.predictor.thresholds, self.predictor.mirror_average,
                               self.atlas_guard, self.mode, self.remove_ears)

    def deface(self, img):
        return deface(img, self)

    def deface_volume(self, volume: Volume) -> Defaced:
        """The face removed from one scan (what the BIDS App and ``deepdeface`` call)."""
        mask, details, to_atlas, ears_mask = face_mask_of(volume.data, volume.affine, self, volume.name)
        return self.finish(apply_face_mask(volume, mask, details, to_atlas, ears_mask))

    def with_mask(self, volume: Volume, reference: Defaced) -> Defaced:
        """Another scan of the same session defaced with ``reference``'s mask (and ears) carried
        onto its grid, refaced with the reference's fit in reface mode."""
        def carried(mask):
            return resample_mask(mask, reference.volume.affine, volume.img.shape, volume.affine)

        ears_mask = None if reference.ears is None else carried(reference.ears)
        return self.finish(apply_face_mask(volume, carried(reference.mask), {},
                                           reference.scanner_to_atlas, ears_mask))

    def finish(self, defaced: Defaced) -> Defaced:
        """In reface mode, the written values of the masked voxels from the average face."""
        return refaced(defaced) if self.mode == "reface" else defaced

    def deface_with_details(self, img):
        return deface_with_details(img, self)


def load_defacer(device: str = "auto", atlas_guard: bool = True, mode: str = "deface",
                 remove_ears: bool = False) -> Defacer:
    """The shipped model (loaded once per process and device) with the atlas guard on or off."""
    if atlas_guard:
        atlas.require_atlas()
    if mode == "reface":
        reface.require_template()
    if remove_ears:
        ears.require_ears()
    return Defacer(shared_predictor(device), atlas_guard, mode, remove_ears)


@dataclass(frozen=True)
class Defaced:
    """One scan with its face removed: stored values, the mask (True = removed), the details.

    ``raw`` holds the air's value in the mask: the face check judges it. ``refaced_raw``, in
    reface mode, holds the average face there instead (the ears, ``ears``, stay air);
    ``written_raw`` is what is written."""

    volume: Volume
    raw: np.ndarray
    mask: np.ndarray
    details: dict
    scanner_to_atlas: np.ndarray | None = None  # the atlas guard's trusted fit (scanner -> atlas world)
    refaced_raw: np.ndarray | None = None
    ears: np.ndarray | None = None  # with --remove-ears: the mask's voxels that are ears

    @property
    def written_raw(self) -> np.ndarray:
        return self.raw if self.refaced_raw is None else self.refaced_raw

    @cached_property
    def image(self):
        """Built once: the face check and the QC both read it (a scaled scan is serialised once
        in memory to build it)."""
        return defaced_image(self.volume, self.raw)

    @cached_property
    def written_image(self):
        """The image as written (the refaced one in reface mode)."""
        return self.image if self.refaced_raw is None else defaced_image(self.volume, self.refaced_raw)

    @cached_property
    def mask_image(self):
        return mask_image(self.mask, self.volume.img)


def deface(img, defacer: Defacer | None = None):
    """Remove the face from a nibabel image.

    Returns the defaced image (the input's header, dtype, scaling and affine; voxels outside
    the mask bit-identical) and the mask (uint8, 1 = removed) on the input grid.
    """
    defaced, mask, _ = deface_with_details(img, defacer)
    return defaced, mask


def deface_with_details(img, defacer: Defacer | None = None):
    """``deface()``, plus what the provenance records about this image (``face_mask_of``)."""
    defacer = defacer or load_defacer()
    done = defacer.deface_volume(img if isinstance(img, Volume) else read_volume(img))
    return done.written_image, done.mask_image, done.details


def apply_face_mask(volume: Volume, mask: np.ndarray, details: dict | None = None,
                    scanner_to_atlas: np.ndarray | None = None, ears_mask: np.ndarray | None = None) -> Defaced:
    """The masked voxels take the air's value in the stored encoding; nothing else changes."""
    raw = defaced_raw(volume, mask, background_intensity(volume.data))
    shape = volume.raw.shape
    return Defaced(volume, raw, np.asarray(mask, bool).reshape(shape), details or {}, scanner_to_atlas,
                   ears=None if ears_mask is None else np.asarray(ears_mask, bool).reshape(shape))


def refaced(defaced: Defaced) -> Defaced:
    """``defaced`` with the average face written into its mask (``deepdefacer.reface``); without
    a trusted atlas fit, defaced as it is, and its details say why (the QC flags it)."""
    if defaced.scanner_to_atlas is None:
        reason = "the atlas guard's registration was not trusted for this scan"
        return replace(defaced, details={**defaced.details, "Mode": "deface", "RefaceFallback": reason})
    face = defaced.mask if defaced.ears is None else defaced.mask & ~defaced.ears
    values = reface.refaced_raw(defaced.volume, defaced.raw, face, defaced.scanner_to_atlas)
    return replace(defaced, refaced_raw=values, details={**defaced.details, "Mode": "reface"})


def face_mask_of(data: np.ndarray, affine: np.ndarray, defacer: Defacer, name: str = "<image>"):
    """The mask of the face on the input grid (bool), what the provenance records of it, the
    atlas guard's trusted fit (``scanner_to_atlas``, which places a new face; None without one),
    and with ``remove_ears`` the mask's voxels that the ears added (else None).

    The details are ``{"AtlasGuard": {"Used", "Reason", "FaceOverlapML", "Start"}}`` with the atlas
    guard on (whether its registration was trusted for this scan), else ``{}``; for a scan cut at
    the crown also ``"CrownFromAtlasMM"``, and for a scan whose header's voxel sizes are
    implausible ``"HeaderVoxelSizes"`` (``atlas_fit``); with ``remove_ears`` ``"Ears"``.
    """
    box = head_box_ras(data, affine)
    assumed_affine, scale = plausible_affine(data, affine, box)
    if scale != 1.0:
        return _face_mask_of_uncertain_size(data, affine, assumed_affine, scale, defacer, name)
    header_affine, affine, details = affine, assumed_affine, {}
    prediction, guard = predict_and_guard(data, affine, defacer, box, name)
    raised, raised_mm = atlas_fit.crown_box(guard, data, affine, box, name)
    if raised is not None:  # the same fit's brain on the raised cube: only the network runs again
        details["CrownFromAtlasMM"] = raised_mm
        prediction, raised_guard = predict_and_guard(data, affine, defacer, raised, name, guard.world)
        guard = replace(raised_guard, start=guard.start)  # the fit's own start, for the provenance
    t = defacer.predictor.thresholds
    mask = face_mask(prediction, t.face, t.brain, t.brain_margin_mm, t.face_dilate_mm,
                     t.growth_margin_mm, t.edge_mm)
    fit = scanner_to_atlas(guard, affine, header_affine)
    details = {**details, **guard_record(guard)}
    mask, details, ears_mask = with_ears(mask, details, fit, header_affine, [prediction], defacer, name)
    return mask, details, fit, ears_mask


def with_ears(mask: np.ndarray, details: dict, fit, header_affine, predictions, defacer: Defacer,
              name: str):
    """With ``remove_ears``: the mask with the ears added (``deepdefacer.ears``), the details
    with how much of them was removed, and the voxels the ears added; else the mask and the
    details as they are, and None."""
    if not defacer.remove_ears:
        return mask, details, None
    found = ears.ear_mask(fit, header_affine, mask.shape, predictions, defacer.predictor.thresholds, name)
    added = found & ~mask
    voxel_ml = abs(float(np.linalg.det(np.asarray(predictions[0].native_affine)[:3, :3]))) / 1000
    return mask | found, {**details, "Ears": {"Removed": True, "RegionML": round(float(found.sum()) * voxel_ml, 1)}}, added


def scanner_to_atlas(guard, affine: np.ndarray, header_affine: np.ndarray):
    """The guard's fit as a map of the scanner's world (the header's) to the atlas's, when it
    was trusted; its fit is of the scan on ``affine`` (the header's, or one with plausible voxel
    sizes)."""
    if guard is None or not guard.used or guard.world is None:
        return None
    return guard.world @ np.asarray(affine, float) @ np.linalg.inv(np.asarray(header_affine, float))


def _face_mask_of_uncertain_size(data, header_affine, assumed_affine, scale: float,
                                 defacer: Defacer, name: str):
    """A header whose voxel sizes are implausible for a head: the face removed under each size
    estimate, each with its own guard registration (two independent atlas brains, either of
    which keeps a voxel: one fit reused at both sizes lost a brain voxel of a 64^3 block)."""
    atlas_fit.log.warning("%s: the head's size is implausible with the header's voxel sizes; "
                          "assuming they are %.2fx what the header says", name, scale)
    details, affines = {}, [assumed_affine]
    if defacer.atlas_guard:
        affines, details["HeaderVoxelSizes"] = atlas_fit.size_estimates(
            data, header_affine, assumed_affine, defacer.predictor.plan, name)
    results = [predict_and_guard(data, a, defacer, None, name) for a in affines]
    predictions = [prediction for prediction, _ in results]
    t = defacer.predictor.thresholds
    masks = [face_mask(p, t.face, t.brain, t.brain_margin_mm, t.face_dilate_mm,
                       t.growth_margin_mm, t.edge_mm) for p in predictions]
    mask = masks[0] if len(masks) == 1 else union_of_masks(masks, predictions, t)
    # The provenance reports a guard that was not used, if any (flagged in QC), else the last.
    guards = [guard for _, guard in results]
    guard = next((g for g in guards if g is not None and not g.used), guards[-1])
    fits = [scanner_to_atlas(g, a, header_affine) for g, a in zip(guards, affines)]
    fit = next((f for f in fits if f is not None), None)  # the first trusted fit places a new face
    mask, details, ears_mask = with_ears(mask, {**details, **guard_record(guard)}, fit, header_affine,
                                         predictions, defacer, name)
    return mask, details, fit, ears_mask


def predict_and_guard(data: np.ndarray, affine: np.ndarray, defacer: Defacer, box=None,
                      name: str = "<image>", atlas_world=None):
    """Conform the scan, run the network, and with the atlas guard add the registered atlas
    brain to the network's (``atlas.guard_prediction``). Returns the prediction and the guard's
    result (None without the guard); ``atlas_world``: a fit of this scan made already."""
    prediction = predict(data, affine, defacer.predictor, box)
    if not defacer.atlas_guard:
        return prediction, None
    return atlas.guard_prediction(prediction, data, affine, defacer.predictor.plan, name,
                                  world=atlas_world)


def predict(data: np.ndarray, affine: np.ndarray, predictor: Predictor, box=None) -> Prediction:
    """Conform the scan and run the network (the only step that needs TensorFlow).

    ``box``: the head's RAS box on ``affine`` (``head_box_ras``) when the caller has it.
    """
    conformed = conform(data, affine, predictor.plan, box)
    face_cube, brain_cube = predictor.predict(conformed.array)
    return Prediction(face_cube, brain_cube, conformed.affine_ras, predictor.plan.voxel_mm,
                      affine, tuple(data.shape))


def guard_record(guard) -> dict:
    """What the provenance records of the atlas guard's decision for this scan."""
    if guard is None:
        return {}
    overlap = guard.face_overlap_ml
    return {"AtlasGuard": {"Used": guard.used, "Reason": guard.reason,
                           "FaceOverlapML": None if overlap is None else round(overlap, 1),
                           "Start": guard.start}}
