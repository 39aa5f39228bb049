"""Reading and writing at the edges: load one image with clear errors, write outputs atomically.

Every output is written under a hidden temporary name in its final folder and then renamed with
os.replace, which is atomic on POSIX file systems: a run killed at any moment leaves either the old
file, the new file, or no file under the final name, never half of one. Hidden names (leading dot)
are ignored by the BIDS validator, and each scan removes its own stale temporaries before it starts.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import uuid
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener
from nibabel.volumeutils import array_to_file

from deepdefacer.errors import InputError

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
TEMPORARY_MARKER = ".deepdefacer-tmp-"


def split_extension(path) -> tuple[str, str]:
    """('sub-01_T1w', '.nii.gz') for 'sub-01_T1w.nii.gz'; the extension is '' when unknown."""
    name = Path(path).name
    for extension in (".nii.gz", ".nii", ".json", ".tsv", ".gz"):
        if name.endswith(extension):
            return name[: -len(extension)], extension
    stem, dot, extension = name.rpartition(".")
    return (stem, dot + extension) if dot else (name, "")


# ---------------------------------------------------------------------------------------------
# Loading


def load_image(path) -> nib.Nifti1Image:
    """Load and check one image so that everything the model needs is known to be readable.

    Returns a 3D NIfTI image whose voxel data is already read and cached (get_fdata), so a
    truncated file is found here and not half-way through the model. A 4D image with a single
    volume (x, y, z, 1), as some converters write, is returned as 3D.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise InputError(path, "broken symbolic link (in a git-annex/DataLad dataset, "
                               "fetch the content first, e.g. `datalad get`)")
    if not path.exists():
        raise InputError(path, "file does not exist")
    if not path.is_file():
        raise InputError(path, "not a regular file")
    size_bytes = path.stat().st_size
    if size_bytes == 0:
        raise InputError(path, "empty file (0 bytes)")
    if not path.name.endswith(NIFTI_EXTENSIONS):
        raise InputError(path, "not a NIfTI file name (expected .nii or .nii.gz)")
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises many types for bad files; all mean the same here
        raise InputError(path, f"not a readable NIfTI file ({_describe(exc, path)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, f"not a NIfTI image (read as {type(img).__name__})")

    shape = tuple(int(n) for n in img.shape)
    if len(shape) > 3 and any(n != 1 for n in shape[3:]):
        raise InputError(path, f"{len(shape)}D image of shape {shape}: Deepdefacer takes one 3D "
                               "volume (split the series or deface its first volume with "
                               "`deepdeface --applyto`)")
    spatial_shape = shape[:3]
    if len(spatial_shape) < 3 or sum(n > 1 for n in spatial_shape) < 3:
        raise InputError(path, f"{_dimensionality(spatial_shape)} image of shape {shape}: "
                               "a head scan needs three dimensions")
    try:
        data = img.get_fdata()
    except Exception as exc:
        raise InputError(path, _unreadable_data_reason(img, path, exc)) from None
    if not np.isfinite(data).all():
        count = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(path, f"image contains {count} NaN or infinite voxels")
    if data.min() == data.max():
        raise InputError(path, f"image is empty (every voxel is {data.min():g})")
    if len(shape) > 3:
        img = nib.Nifti1Image(data.reshape(spatial_shape), img.affine, img.header)
        img.get_fdata()
    return img


def _dimensionality(shape) -> str:
    return f"{max(1, sum(n > 1 for n in shape))}D"


def _unreadable_data_reason(img, path: Path, exc: BaseException) -> str:
    expected_bytes = int(np.prod(img.shape)) * img.get_data_dtype().itemsize
    offset_bytes = int(getattr(img.dataobj, "offset", 352))
    try:
        stored_bytes = _uncompressed_size(path) - offset_bytes
    except (OSError, EOFError, zlib.error):
        stored_bytes = None  # the compressed stream itself is damaged
    if stored_bytes is not None and stored_bytes < expected_bytes:
        return (f"truncated: the header promises {expected_bytes} bytes of voxel data "
                f"({'x'.join(map(str, img.shape))} {img.get_data_dtype()}), the file holds "
                f"{max(stored_bytes, 0)}")
    return f"corrupt voxel data ({_describe(exc, path)})"


def _uncompressed_size(path: Path, chunk_bytes: int = 1 << 20) -> int:
    if not path.name.endswith(".gz"):
        return path.stat().st_size
    size = 0
    with gzip.open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_bytes), b""):
            size += len(chunk)
    return size


def _describe(exc: BaseException, path=None) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if path is not None:
        text = text.replace(f" from {path}", "").replace(f"File {path} ", "").replace(str(path), "")
    return f"{type(exc).__name__}: {text.strip()}" if text else type(exc).__name__


def sha256_file(path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path) -> dict:
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


# ---------------------------------------------------------------------------------------------
# Atomic writing


def temporary_path(final_path) -> Path:
    """A hidden name next to final_path, keeping its extension so nibabel picks the format."""
    final_path = Path(final_path)
    stem, extension = split_extension(final_path)
    return final_path.with_name(f".{stem}{TEMPORARY_MARKER}{uuid.uuid4().hex[:12]}{extension}")


def remove_stale_temporaries(final_path) -> None:
    """Remove temporaries a killed run left for this output (each scan owns its own names)."""
    final_path = Path(final_path)
    stem, extension = split_extension(final_path)
    if final_path.parent.is_dir():
        for leftover in final_path.parent.glob(f".{stem}{TEMPORARY_MARKER}*{extension}"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


@contextlib.contextmanager
def atomic_output(final_path):
    """Yield a temporary path; on success fsync it and rename it to final_path, else delete it."""
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(final_path)
    try:
        yield temporary
        _fsync(temporary)
        os.replace(temporary, final_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(obj, final_path) -> None:
    with atomic_output(final_path) as temporary:
        temporary.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def create_json_exclusive(obj, final_path) -> bool:
    """Create final_path with obj unless it exists; True if this call created it."""
    return create_text_exclusive(json.dumps(obj, indent=2) + "\n", final_path)


def create_text_exclusive(text: str, final_path) -> bool:
    """Create final_path with text unless it exists; True if this call created it.

    Safe when several processes (SLURM array tasks) race: the complete file is written under a
    temporary name, then hard-linked to the final name, which fails if another process got there
    first. Readers never see a partial file.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(final_path)
    try:
        temporary.write_text(text, encoding="utf-8")
        _fsync(temporary)
        try:
            os.link(temporary, final_path)
        except FileExistsError:
            return False
        except OSError:
            # File systems without hard links: O_EXCL still guarantees a single creator.
            try:
                fd = os.open(final_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                stream.write(text)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def write_image(img: nib.Nifti1Image, final_path) -> None:
    """Write a new image (a mask) atomically with nibabel."""
    with atomic_output(final_path) as temporary:
        nib.save(img, temporary)


def write_in_source_encoding(source_path, scaled_data: np.ndarray, removed_mask: np.ndarray,
                              final_path) -> None:
    """Write a copy of the source file whose voxels in removed_mask take scaled_data's values.

    nibabel resets scl_slope/scl_inter and may rescale when it saves an image built from an
    array, so the output would not be the input with voxels removed. Instead the source header
    (with its extensions, qform/sform, dtype, byte order, slope and intercept) is written as is,
    voxels outside the mask keep their exact raw bytes, and the removed voxels are encoded back
    into the source's raw type.
    """
    source = nib.load(source_path)
    # The header as stored: nibabel's loaded header has slope/intercept moved to the dataobj.
    with ImageOpener(source_path, "rb") as stream:
        header = source.header_class.from_fileobj(stream)
    raw_source = np.asanyarray(source.dataobj.get_unscaled())
    raw_dtype = header.get_data_dtype()
    removed = np.asarray(removed_mask).reshape(raw_source.shape).astype(bool)
    scaled_data = np.asarray(scaled_data).reshape(raw_source.shape)

    slope, intercept = header.get_slope_inter()
    slope = 1.0 if slope is None else float(slope)
    intercept = 0.0 if intercept is None else float(intercept)
    raw_output = np.array(raw_source, copy=True)
    if np.any(removed):
        raw_output[removed] = encode_raw((scaled_data[removed] - intercept) / slope, raw_dtype)

    offset_bytes = int(header.get_data_offset())
    with atomic_output(final_path) as temporary:
        with ImageOpener(temporary, "wb") as stream:
            header.write_to(stream)
            written = stream.tell()
            if written < offset_bytes:
                stream.write(b"\x00" * (offset_bytes - written))
            array_to_file(raw_output, stream, raw_dtype, offset=None, order="F")


def encode_raw(values: np.ndarray, raw_dtype) -> np.ndarray:
    """Values in raw units to raw_dtype: rounded and clipped for integer types."""
    raw_dtype = np.dtype(raw_dtype)
    if np.issubdtype(raw_dtype, np.integer):
        limits = np.iinfo(raw_dtype)
        return np.clip(np.rint(values), limits.min, limits.max).astype(raw_dtype)
    return values.astype(raw_dtype)


def is_complete_nifti(path) -> bool:
    """Whether a NIfTI file can be read to its last voxel (used to check outputs)."""
    try:
        np.asanyarray(nib.load(path).dataobj)
        return True
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError):
        return False


def mask_image_like(mask: np.ndarray, img) -> nib.Nifti1Image:
    """A uint8 mask (1 = removed) on img's grid, with img's qform and sform and their codes."""
    mask_img = nib.Nifti1Image(np.asarray(mask).astype(np.uint8).reshape(img.shape[:3]),
                               img.affine)
    header = img.header
    mask_img.set_qform(header.get_qform(), int(header["qform_code"]))
    mask_img.set_sform(header.get_sform(), int(header["sform_code"]))
    mask_img.header.set_xyzt_units(*header.get_xyzt_units())
    mask_img.header.set_data_dtype(np.uint8)
    return mask_img
