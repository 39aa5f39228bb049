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
import math
import os
import uuid
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener
from nibabel.volumeutils import array_to_file

from deepdefacer.errors import InputError, OutputError

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


# Real scans stay far below this: 0.4 mm whole heads are ~512x512x400 (1.05e8 voxels) and 640^3
# (a 256 mm field of view at 0.4 mm on every axis) still fits. Above it a header is either lying or
# describes a volume whose float64 copy alone (2 GiB at the limit) and the model's working copies
# would not fit in a workstation's memory, so it is refused before anything is allocated.
MAX_VOXELS = 2**28

# A head is at least ~150 mm across (left-right) and anatomical slices are spaced at most ~6-8 mm,
# so every axis of a head scan has 19 voxels or more (the 6 mm heads in the test data have 28).
# Counted in voxels, not millimetres, because headers can lie about voxel sizes. Fewer voxels is a
# thumbnail, a localizer or noise, not a head the model could find a face in.
MIN_VOXELS_PER_AXIS = 16

GZIP_MAGIC = b"\x1f\x8b"
NIFTI2_HEADER_BYTES = 540


def load_image(path) -> nib.Nifti1Image:
    """Load and check one image so that everything the model needs is known to be readable.

    Returns a 3D NIfTI image whose voxel data is already read and cached (get_fdata), so a
    truncated file is found here and not half-way through the model. A 4D image with a single
    volume (x, y, z, 1), as some converters write, is returned as 3D. Everything the header
    promises is checked against the file before any voxel is read, so a hostile or damaged
    header costs a few bytes of memory, not what it claims.
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
    _check_nifti_header(path)
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises many types for bad files; all mean the same here
        raise InputError(path, f"not a readable NIfTI file ({_describe(exc, path)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, f"not a NIfTI image (read as {type(img).__name__})")

    shape = tuple(int(n) for n in img.shape)
    _check_shape(path, shape)
    _check_voxel_type(path, img.get_data_dtype())
    _check_stored_size(path, img)
    problem = orientation_problem(img)
    if problem:
        raise InputError(path, problem)
    try:
        data = img.get_fdata()
    except Exception as exc:
        raise InputError(path, f"corrupt voxel data ({_describe(exc, path)})") from None
    if not np.isfinite(data).all():
        count = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(path, f"image contains {count} NaN or infinite voxels")
    if data.min() == data.max():
        raise InputError(path, f"image is empty (every voxel is {data.min():g})")
    if len(shape) > 3:
        img = nib.Nifti1Image(data.reshape(shape[:3]), img.affine, img.header)
        img.get_fdata()
    return img


def orientation_problem(img) -> str | None:
    """Why an image's header cannot say which way the head faces, or None."""
    header = img.header
    if img.affine is None or ("qform_code" in header and int(header["qform_code"]) == 0
                              and int(header["sform_code"]) == 0):
        # nibabel then makes up an affine from the voxel sizes alone, and which way the head faces
        # is a guess: a real IXI head read that way lost 2.7% of its voxels from one side, and
        # kept its face.
        return ("the header has no orientation (qform_code and sform_code are both 0), so which "
                "way the head faces is unknown; set it (e.g. convert the DICOMs again with "
                "dcm2niix) before defacing")
    return None


def _check_nifti_header(path: Path) -> None:
    """Refuse what nibabel would refuse with a message that does not say why."""
    try:
        stream = open(path, "rb")
    except PermissionError:
        raise InputError(path, "permission denied (this user cannot read the file)") from None
    with stream:
        head = stream.read(NIFTI2_HEADER_BYTES)
        compressed = head.startswith(GZIP_MAGIC)
        if compressed:
            stream.seek(0)
            try:
                head = gzip.GzipFile(fileobj=stream).read(NIFTI2_HEADER_BYTES)
            except (OSError, EOFError, zlib.error) as exc:
                raise InputError(path, f"damaged gzip stream ({exc})") from None
    if head[344:347] not in (b"n+1", b"ni1") and head[4:7] not in (b"n+2", b"ni2"):
        raise InputError(path, "not a NIfTI file (no NIfTI-1/NIfTI-2 header: wrong magic)")
    # nibabel goes by the name, so a misnamed file would fail there as "not a gzipped file".
    if compressed and not path.name.endswith(".gz"):
        raise InputError(path, "gzip-compressed, although the name ends in .nii "
                               "(rename it to .nii.gz)")
    if not compressed and path.name.endswith(".gz"):
        raise InputError(path, "not gzip-compressed, although the name ends in .nii.gz "
                               "(rename it to .nii)")


def _check_shape(path: Path, shape: tuple) -> None:
    if any(n < 1 for n in shape):
        raise InputError(path, f"invalid shape {shape} in the header: a dimension of "
                               f"{min(shape)} (each must be at least 1)")
    if len(shape) > 3 and any(n != 1 for n in shape[3:]):
        raise InputError(path, f"{len(shape)}D image of shape {shape}: Deepdefacer takes one 3D "
                               "volume (split the series or deface its first volume with "
                               "`deepdeface --applyto`)")
    spatial_shape = shape[:3]
    if len(spatial_shape) < 3 or sum(n > 1 for n in spatial_shape) < 3:
        raise InputError(path, f"{_dimensionality(spatial_shape)} image of shape {shape}: "
                               "a head scan needs three dimensions")
    if min(spatial_shape) < MIN_VOXELS_PER_AXIS:
        raise InputError(path, f"image of shape {shape} is too small to be a head scan (fewer "
                               f"than {MIN_VOXELS_PER_AXIS} voxels along an axis)")


def _check_voxel_type(path: Path, dtype: np.dtype) -> None:
    if dtype.names:  # RGB24 and RGBA32 are structured: one byte a channel
        raise InputError(path, f"{''.join(dtype.names)} colour image: a head scan has one value "
                               "a voxel")
    if np.issubdtype(dtype, np.complexfloating):
        raise InputError(path, f"complex-valued image ({dtype}): deface the magnitude image")


def _dimensionality(shape) -> str:
    return f"{max(1, sum(n > 1 for n in shape))}D"


def _check_stored_size(path: Path, img) -> None:
    """Refuse a header that promises more voxel data than the file holds, or too many voxels."""
    voxels = math.prod(int(n) for n in img.shape)  # Python ints: NIfTI-2 shapes overflow int64
    itemsize = img.get_data_dtype().itemsize
    offset = int(img.dataobj.offset)
    # Counting stops at the largest image accepted, so an over-large file is not read to its end.
    stop_at = offset + min(voxels, MAX_VOXELS + 1) * itemsize
    try:
        held = _stored_bytes(path, stop_at)
    except (OSError, zlib.error) as exc:
        raise InputError(path, f"damaged gzip stream ({exc})") from None
    if held < stop_at:
        raise InputError(path, f"truncated: the header promises {voxels * itemsize} bytes of "
                               f"voxel data ({'x'.join(map(str, img.shape))} "
                               f"{img.get_data_dtype()}), the file holds {max(held - offset, 0)}")
    if voxels > MAX_VOXELS:
        raise InputError(path, f"image of shape {img.shape} has {voxels} voxels, more than "
                               f"Deepdefacer's maximum of {MAX_VOXELS}")


def _stored_bytes(path: Path, stop_at: int, chunk_bytes: int = 1 << 20) -> int:
    """The file's (uncompressed) size in bytes, or stop_at if it holds at least that many.

    A .nii.gz is decompressed a chunk at a time and the chunks are only counted, so memory stays
    at one chunk whatever the header claims. A stream that breaks off counts as ending there.
    """
    if not path.name.endswith(".gz"):
        return min(path.stat().st_size, stop_at)
    held = 0
    with gzip.open(path, "rb") as stream:
        with contextlib.suppress(EOFError):
            while held < stop_at:
                chunk = stream.read1(min(chunk_bytes, stop_at - held))
                if not chunk:
                    break
                held += len(chunk)
    return held


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
    """Yield a temporary path; on success fsync it and rename it to final_path, else delete it.

    An OSError (a full disk, a read-only or vanished folder) becomes an OutputError naming
    final_path: the hidden temporary's name would mean nothing to the user.
    """
    final_path = Path(final_path)
    temporary = temporary_path(final_path)
    try:
        final_path.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        _fsync(temporary)
        os.replace(temporary, final_path)
    except OSError as exc:
        raise OutputError(final_path, f"{(exc.strerror or str(exc)).lower()} writing {final_path}") \
            from exc
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
