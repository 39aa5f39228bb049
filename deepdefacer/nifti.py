"""Reading a scan: one NIfTI file, checked and read once, with a clear error for what is wrong.

Everything the header promises is checked against the file before any voxel is read, so a hostile
or damaged header costs a few bytes of memory, not what it claims. The stored values are then read
once; the model sees the intensities (scl_slope/scl_inter applied, float32), and writing the
defaced scan (``deepdefacer.apply``) starts again from the stored values and the stored header.
"""

from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from deepdefacer import gz
from deepdefacer.errors import InputError

NIFTI_EXTENSIONS = (".nii.gz", ".nii")

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


@dataclass(frozen=True)
class Volume:
    """One scan, read once: its image (header, affine), stored values and intensities."""

    img: nib.spatialimages.SpatialImage  # 3D (a 4D file with one volume is returned as 3D)
    raw: np.ndarray  # the stored values exactly as in the file, 3D
    data: np.ndarray  # the intensities (stored values scaled), float32, 3D
    stored_header: object | None = None  # the header as in the file (scaling kept), for writing

    @property
    def name(self) -> str:
        return self.img.get_filename() or "<image>"

    @property
    def affine(self) -> np.ndarray:
        return self.img.affine

    def in_memory(self):
        """The image reading its voxels from ``raw`` when they read back unscaled, so that the
        face check does not decompress the file a second time; else the image itself."""
        if not hasattr(self.img.dataobj, "slope") or scaling(self.img) != (1.0, 0.0):
            return self.img
        return self.img.__class__(self.raw, self.img.affine, self.img.header)


def load_volume(path) -> Volume:
    """Load and check one scan so that everything the model needs is known to be readable."""
    path = Path(path)
    img, stored = _open_checked(path)
    with (io.BytesIO(stored) if stored is not None else ImageOpener(path, "rb")) as stream:
        stored_header = img.header_class.from_fileobj(stream)
    return _volume(img, path, stored_header, stored)


def load_image(path) -> nib.spatialimages.SpatialImage:
    """``load_volume(path).img``: the checked image, for callers that need no stored values."""
    return load_volume(path).img


def read_volume(img) -> Volume:
    """A Volume of an image already in memory (the Python API: ``deepdefacer.deface(img)``)."""
    name = img.get_filename() or "<image>"
    _check_shape(name, tuple(int(n) for n in img.shape))
    _check_voxel_type(name, img.get_data_dtype())
    return _volume(img, name, None)


def _volume(img, name, stored_header, stored: bytearray | None = None) -> Volume:
    """``stored``: the file's decompressed bytes when they were read already (a .nii.gz)."""
    problem = orientation_problem(img)
    if problem:
        raise InputError(name, problem)
    if not np.all(np.isfinite(img.affine)) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-9:
        raise InputError(name, "the image affine is not a valid voxel-to-world transform")
    shape = tuple(int(n) for n in img.shape[:3])
    try:
        raw = (raw_array(img) if stored is None else _array_in(stored, img)).reshape(shape)
    except Exception as exc:  # truncated or corrupt streams surface here
        raise InputError(name, f"corrupt voxel data ({_describe(exc, name)})") from None
    slope, inter = scaling(img)
    data = raw.astype(np.float32)
    if slope != 1.0 or inter != 0.0:
        data = data * np.float32(slope) + np.float32(inter)
    if not np.isfinite(data).all():
        count = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(name, f"image contains {count} NaN or infinite voxels")
    if data.min() == data.max():
        raise InputError(name, f"image is empty (every voxel is {data.min():g})")
    if len(img.shape) > 3:
        img = img.slicer[:, :, :, 0]
    return Volume(img, raw, data, stored_header)


def _open_checked(path: Path):
    """The nibabel image of path, once the file and its header are known to be sound, and for
    a .nii.gz the file's decompressed bytes (checking their length decompresses them anyway)."""
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
    return img, _check_stored_size(path, img)


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
                with gz.open_read(stream) as decompressed:
                    head = decompressed.read(NIFTI2_HEADER_BYTES)
            except gz.ERRORS as exc:
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


def _check_stored_size(path: Path, img) -> bytearray | None:
    """Refuse a header that promises more voxel data than the file holds, or too many voxels.
    Returns a .nii.gz's decompressed bytes up to its last voxel (None for a .nii)."""
    voxels = math.prod(int(n) for n in img.shape)  # Python ints: NIfTI-2 shapes overflow int64
    itemsize = img.get_data_dtype().itemsize
    offset = int(img.dataobj.offset)
    # Counting stops at the largest image accepted, so an over-large file is not read to its end.
    stop_at = offset + min(voxels, MAX_VOXELS + 1) * itemsize
    try:
        held, stored = ((min(path.stat().st_size, stop_at), None) if not path.name.endswith(".gz")
                        else gz.read_at_most(path, stop_at, keep=voxels <= MAX_VOXELS))
    except gz.ERRORS as exc:
        raise InputError(path, f"damaged gzip stream ({exc})") from None
    if held < stop_at:
        raise InputError(path, f"truncated: the header promises {voxels * itemsize} bytes of "
                               f"voxel data ({'x'.join(map(str, img.shape))} "
                               f"{img.get_data_dtype()}), the file holds {max(held - offset, 0)}")
    if voxels > MAX_VOXELS:
        raise InputError(path, f"image of shape {img.shape} has {voxels} voxels, more than "
                               f"Deepdefacer's maximum of {MAX_VOXELS}")
    return stored


def _array_in(stored: bytearray, img) -> np.ndarray:
    """The stored values in a file's decompressed bytes, as nibabel reads them (the header's
    dtype and byte order, Fortran order)."""
    shape = tuple(int(n) for n in img.shape)
    return np.ndarray(shape, img.get_data_dtype(), buffer=stored, offset=int(img.dataobj.offset),
                      order="F")


def _describe(exc: BaseException, path=None) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if path is not None:
        text = text.replace(f" from {path}", "").replace(f"File {path} ", "").replace(str(path), "")
    return f"{type(exc).__name__}: {text.strip()}" if text else type(exc).__name__



def scaling(img) -> tuple[float, float]:
    """(slope, intercept) that turn stored values into intensities."""
    slope, inter = (img.dataobj.slope, img.dataobj.inter) if hasattr(img.dataobj, "slope") else (1.0, 0.0)
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return slope, inter


def raw_array(img) -> np.ndarray:
    """The stored values exactly as in the file (no scaling applied)."""
    proxy = img.dataobj
    if hasattr(proxy, "get_unscaled"):
        return np.asarray(proxy.get_unscaled())
    return np.asarray(proxy)


def is_complete_nifti(path) -> bool:
    """Whether a NIfTI file can be read to its last voxel (used to check outputs)."""
    try:
        np.asanyarray(nib.load(path).dataobj)
        return True
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError):
        return False

