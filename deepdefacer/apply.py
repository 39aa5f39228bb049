"""Applying a face mask in the scan's own encoding, and the mask image itself.

The defaced scan is the input with the masked voxels set to the air's value, nothing else: the
same header (extensions, qform/sform and their codes, dtype, byte order, scl_slope/scl_inter),
every voxel outside the mask with its exact stored bytes. nibabel resets the scaling and may
rescale when it saves an image built from an array, so the stored values are edited directly and
written behind the header as the file stored it.
"""

from __future__ import annotations

import io

import nibabel as nib
import numpy as np
from nibabel.volumeutils import array_to_file

from deepdefacer.files import atomic_output
from deepdefacer.gz import open_output
from deepdefacer.nifti import Volume, scaling


def raw_value(img, dtype, intensity: float = 0.0):
    """The stored (unscaled) value that reads back as ``intensity``, or closest to it."""
    return stored_values(img, dtype, np.array([intensity]))[0]


def stored_values(img, dtype, intensities: np.ndarray) -> np.ndarray:
    """Stored (unscaled) values that read back as ``intensities`` through the scan's scaling, or
    closest to them: rounded and clipped for an integer dtype."""
    slope, inter = scaling(img)
    values = (np.asarray(intensities, np.float64) - inter) / slope + 0.0  # + 0.0: no negative zero
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.round(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def defaced_raw(volume: Volume, mask: np.ndarray, fill_intensity: float = 0.0) -> np.ndarray:
    """The stored values with the masked voxels set to ``fill_intensity`` (the air's,
    ``conform.background_intensity``)."""
    raw = volume.raw.copy(order="K")  # nibabel's Fortran order kept: no transposing copy
    raw[np.asarray(mask, bool).reshape(raw.shape)] = raw_value(volume.img, raw.dtype, fill_intensity)
    return raw


def defaced_image(volume: Volume, raw: np.ndarray):
    """The defaced image in memory (``raw`` from ``defaced_raw``): it reads back the input's
    intensities through ``get_fdata``/``dataobj`` as the written file will."""
    img = volume.img
    out = img.__class__(raw.reshape(img.shape), img.affine, img.header.copy())
    # nibabel recomputes scaling for array images; pin the input's so raw values stay raw.
    if hasattr(img.dataobj, "slope"):
        out.header.set_slope_inter(img.dataobj.slope, img.dataobj.inter)
    out.set_qform(*img.get_qform(coded=True))
    out.set_sform(*img.get_sform(coded=True))
    if hasattr(img.dataobj, "slope") and (img.dataobj.slope, img.dataobj.inter) != (1.0, 0.0):
        # An array image reads its array as it is: scl_slope/scl_inter are applied only when a
        # file is read. Serialise once so the returned image reads back the input's intensities.
        out = _through_memory_files(out)
    return out


def _through_memory_files(img):
    """``img`` written to and read back from in-memory files (single-file or .hdr/.img pairs)."""
    file_map = img.make_file_map({kind: io.BytesIO() for kind, _ in img.files_types})
    img.to_file_map(file_map)
    return img.__class__.from_file_map(file_map)


def write_defaced(volume: Volume, raw: np.ndarray, final_path, edit_header=None) -> None:
    """Write ``raw`` (``defaced_raw``) behind the scan's header as stored, atomically;
    ``edit_header(header) -> header``: a changed copy of it (header text blanked for an upload
    copy made with --deidentify-metadata)."""
    header = volume.stored_header
    if header is None:  # an image from memory: its header, with the scaling it reads with
        header = volume.img.header.copy()
        if hasattr(volume.img.dataobj, "slope"):
            header.set_slope_inter(volume.img.dataobj.slope, volume.img.dataobj.inter)
    if edit_header is not None:
        header = edit_header(header)
    offset_bytes = int(header.get_data_offset())
    with atomic_output(final_path) as temporary:
        with open_output(temporary) as stream:
            header.write_to(stream)
            written = stream.tell()
            if written < offset_bytes:
                stream.write(b"\x00" * (offset_bytes - written))
            array_to_file(raw, stream, header.get_data_dtype(), offset=None, order="F")


def mask_image(mask: np.ndarray, img) -> nib.Nifti1Image:
    """A uint8 mask (1 = removed) on img's grid, with img's qform and sform and their codes."""
    mask_img = nib.Nifti1Image(np.asarray(mask).astype(np.uint8).reshape(img.shape[:3]),
                               img.affine)
    header = img.header
    mask_img.set_qform(header.get_qform(), int(header["qform_code"]))
    mask_img.set_sform(header.get_sform(), int(header["sform_code"]))
    mask_img.header.set_xyzt_units(*header.get_xyzt_units())
    mask_img.header.set_data_dtype(np.uint8)
    return mask_img


def write_image(img, final_path) -> None:
    """Write a new image (a mask) atomically, as nibabel does (gzip by ``deepdefacer.gz``)."""
    with atomic_output(final_path) as temporary:
        with open_output(temporary) as stream:
            img.to_file_map({"image": nib.FileHolder(fileobj=stream)})
