"""The training loss (Dice + BCE, and a penalty on the face/brain border) and its metric."""

from __future__ import annotations


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
