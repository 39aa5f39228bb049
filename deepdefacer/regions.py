"""Connected regions of a mask: the one helper every step that keeps "the head" or "the face"
uses, so that all of them break ties and count neighbours alike (scipy's default 6-connectivity)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected region of a boolean mask (the mask itself when it has at most one;
    of equal sizes, the first in label order)."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    return labels == (1 + int(np.argmax(sizes[1:])))
