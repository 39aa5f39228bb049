"""A corpus of bad and odd inputs, each made from a real head, laid out as a BIDS dataset.

    cases = build_corpus(folder)   # folder/sub-<case>/anat/sub-<case>_T1w.nii.gz, one per case

Every case is one participant whose T1w is the bad (or odd) file, plus ``good``: a real head as
stored. Each case carries what Deepdefacer must do with it: ``defaced`` (written, and its face
check passed) or ``failed`` with a regular expression that the reason a user sees must match
(``re.match``: from its start). The files are built from the shared test data
(``../shared/data``), so the corpus is only as available as that folder.

Used by tests/test_bad_input_corpus.py (the BIDS App and ``deepdeface`` over every case) and
bench/bad_inputs.py (peak memory and time of ``deepdeface`` on every case).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np

try:
    from shared_data import HEADS, IXI, REPO, SHARED_DATA  # noqa: F401
except ImportError:  # imported as tests.bad_inputs (bench/bad_inputs.py)
    from tests.shared_data import HEADS, IXI, REPO, SHARED_DATA  # noqa: F401

DEMO = REPO / "examples" / "ds-demo"

# 170x36x188 int16, 1 x 6 x 1 mm: the smallest real head, so most cases cost little to run.
SIX_MM_HEAD = HEADS / "ixi002_t1_6mm.nii.gz"
# 120x120x90 uint8, 2 mm isotropic, PSR: a whole head with a full face, for the geometry cases.
TWO_MM_HEAD = IXI / "IXI012-HH-1211_T1.nii.gz"

DEFACED, FAILED = "defaced", "failed"


@dataclass
class Case:
    """One participant of the corpus: ``label`` is its BIDS label (letters and digits only)."""

    label: str
    description: str
    make: Callable[[Path], None]  # writes the T1w file at the path it is given
    outcome: str  # DEFACED or FAILED
    reason: str | None = None  # for FAILED: a regular expression the reason must match
    path: Path | None = None  # where build_corpus wrote it

    @property
    def relpath(self) -> str:
        return f"sub-{self.label}/anat/sub-{self.label}_T1w.nii.gz"


def _raw_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def _real_header_and_bytes(path: Path = SIX_MM_HEAD):
    raw = _raw_bytes(path)
    return nib.Nifti1Header.from_fileobj(BytesIO(raw)), raw


def _write_gz(path: Path, raw: bytes) -> None:
    # mtime=0: the same corpus byte for byte on every build, so the bench's files are the test's.
    path.write_bytes(gzip.compress(raw, mtime=0))


def _stored(source) -> np.ndarray:
    """The voxels as stored (IXI's uint8 with its scale factor kept apart, not float64)."""
    return np.asanyarray(source.dataobj.get_unscaled())


def _like(source, data, affine=None, scaled: bool = True) -> nib.Nifti1Image:
    """A new image of stored values ``data`` with source's header (codes, units, scaling)."""
    affine = source.affine if affine is None else affine
    img = nib.Nifti1Image(data, affine, source.header.copy())
    img.set_data_dtype(data.dtype)
    img.set_qform(affine, code=max(1, int(source.header["qform_code"])))
    img.set_sform(affine, code=max(1, int(source.header["sform_code"])))
    if scaled:
        img.header.set_slope_inter(source.dataobj.slope, source.dataobj.inter)
    else:
        img.header.set_slope_inter(1.0, 0.0)
    return img


# ---------------------------------------------------------------------------------------------
# Damaged or misnamed files


def truncated_gz(path: Path) -> None:
    # A download cut short: a valid gzip start with the header, a quarter of the voxels.
    path.write_bytes(SIX_MM_HEAD.read_bytes()[:200_000])


def empty_file(path: Path) -> None:
    path.write_bytes(b"")


def text_file(path: Path) -> None:
    path.write_text("this is not an image: the converter wrote its log here\n")


def broken_symlink(path: Path) -> None:
    # A git-annex/DataLad dataset whose content was not fetched.
    path.symlink_to("../../.git/annex/objects/XX/YY/SHA256E-s853545--missing.nii.gz")


def mode_000(path: Path) -> None:
    shutil.copyfile(SIX_MM_HEAD, path)
    path.chmod(0)


def huge_header(path: Path) -> None:
    """A header alone, claiming 2000^3 int16 voxels (16 GB) in a file of under 200 bytes."""
    header, raw = _real_header_and_bytes()
    header.set_data_shape((2000, 2000, 2000))
    _write_gz(path, header.binaryblock + raw[348:352])


def negative_dimension(path: Path) -> None:
    header, raw = _real_header_and_bytes()
    header["dim"][2] = -36
    _write_gz(path, header.binaryblock + raw[348:])


# ---------------------------------------------------------------------------------------------
# Voxel values and shapes that are not one 3D head


def nan_voxel(path: Path) -> None:
    head = nib.load(SIX_MM_HEAD)
    data = head.get_fdata().astype(np.float32)
    data[0, 0, 0] = np.nan
    nib.save(_like(head, data, scaled=False), path)


def two_volumes(path: Path) -> None:
    head = nib.load(SIX_MM_HEAD)
    data = _stored(head)
    nib.save(_like(head, np.stack([data, data], axis=-1)), path)


def two_d(path: Path) -> None:
    head = nib.load(SIX_MM_HEAD)
    nib.save(_like(head, np.ascontiguousarray(_stored(head)[:, 18, :])), path)


def rgb(path: Path) -> None:
    head = nib.load(SIX_MM_HEAD)
    grey = np.asanyarray(head.dataobj)
    colour = np.zeros(grey.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    for channel in "RGB":
        colour[channel] = np.clip(grey // 8, 0, 255)
    nib.save(nib.Nifti1Image(colour, head.affine), path)


def complex64(path: Path) -> None:
    head = nib.load(SIX_MM_HEAD)
    phase = np.exp(1j * np.linspace(0, np.pi, head.shape[2]))
    nib.save(nib.Nifti1Image((head.get_fdata() * phase).astype(np.complex64), head.affine), path)


def noise_cube(path: Path) -> None:
    noise = np.random.default_rng(0).normal(100, 20, (5, 5, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(noise, np.diag([40.0, 40.0, 40.0, 1.0])), path)  # claims 200 mm


def int8_negative_background(path: Path) -> None:
    """The 2 mm head shifted into int8 (-128..127): its air is -128, not 0, and nothing says so."""
    head = nib.load(TWO_MM_HEAD)
    shifted = (_stored(head).astype(np.int16) - 128).astype(np.int8)
    nib.save(_like(head, shifted, scaled=False), path)


# ---------------------------------------------------------------------------------------------
# Geometry: headers that say nothing or lie, and heads stored in other ways


def no_orientation_codes(path: Path) -> None:
    head = nib.load(TWO_MM_HEAD)
    header = head.header.copy()
    header["qform_code"] = 0
    header["sform_code"] = 0
    img = nib.Nifti1Image(_stored(head), None, header)
    img.header.set_slope_inter(head.dataobj.slope, head.dataobj.inter)
    nib.save(img, path)


def pixdim_zero(path: Path) -> None:
    """No orientation codes and voxel sizes of 0: the header holds no geometry at all.

    Written as bytes: nibabel would replace the zero voxel sizes on saving.
    """
    header, raw = _real_header_and_bytes(TWO_MM_HEAD)
    header["qform_code"] = 0
    header["sform_code"] = 0
    header["pixdim"][1:4] = 0
    _write_gz(path, header.binaryblock + raw[348:])


def _stated_voxel_size(factor: float) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        head = nib.load(TWO_MM_HEAD)
        affine = head.affine.copy()
        affine[:3, :3] *= factor
        nib.save(_like(head, _stored(head), affine), path)
    return make


def other_axis_order(path: Path) -> None:
    """The same head in the same place, its array stored LIA instead of PSR (every axis moved,
    one flipped): array and affine changed together, as a converter would write it."""
    head = nib.load(TWO_MM_HEAD)
    transform = nib.orientations.ornt_transform(nib.io_orientation(head.affine),
                                                nib.orientations.axcodes2ornt(("L", "I", "A")))
    turned = nib.orientations.apply_orientation(_stored(head), transform)
    affine = head.affine @ nib.orientations.inv_ornt_aff(transform, head.shape)
    nib.save(_like(head, np.ascontiguousarray(turned), affine), path)


def oblique(path: Path, degrees: float = 20.0) -> None:
    """The head pitched by 20 degrees (nose down) about its centre: an oblique acquisition."""
    head = nib.load(TWO_MM_HEAD)
    angle = np.deg2rad(degrees)
    rotation = np.eye(4)
    rotation[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    centre = head.affine @ np.r_[(np.array(head.shape) - 1) / 2.0, 1.0]
    to_centre, back = np.eye(4), np.eye(4)
    to_centre[:3, 3], back[:3, 3] = -centre[:3], centre[:3]
    nib.save(_like(head, _stored(head), back @ rotation @ to_centre @ head.affine), path)


def good(path: Path) -> None:
    shutil.copyfile(SIX_MM_HEAD, path)


# ---------------------------------------------------------------------------------------------


def cases() -> list[Case]:
    """Every case with its expected outcome (the mode-000 one depends on who runs it)."""
    as_root = os.geteuid() == 0
    return [
        Case("good", "a real 6 mm head, as stored", good, DEFACED),
        Case("truncated", "a .nii.gz cut off at 200 kB (of 854 kB)", truncated_gz, FAILED,
             r"truncated: the header promises 2301120 bytes of voxel data"),
        Case("empty", "an empty file (0 bytes)", empty_file, FAILED, r"empty file \(0 bytes\)$"),
        Case("textfile", "a text file named .nii.gz", text_file, FAILED,
             r"not a NIfTI file \(no NIfTI-1/NIfTI-2 header: wrong magic\)$"),
        Case("nanvoxel", "a real head with one NaN voxel (float32)", nan_voxel, FAILED,
             r"image contains 1 NaN or infinite voxels$"),
        Case("fourd", "a 4D image with two volumes", two_volumes, FAILED,
             r"4D image of shape \(170, 36, 188, 2\): Deepdefacer takes one 3D volume"),
        Case("twod", "one slice of a head (2D)", two_d, FAILED,
             r"2D image of shape \(170, 188\): a head scan needs three dimensions$"),
        Case("brokenlink", "a broken symbolic link (unfetched git-annex content)",
             broken_symlink, FAILED, r"broken symbolic link"),
        # Root reads any file whatever its mode: the scan is then an ordinary head.
        Case("mode000", "a real head with mode 000 (unreadable to a non-root user)", mode_000,
             DEFACED if as_root else FAILED,
             None if as_root else r"permission denied \(this user cannot read the file\)$"),
        Case("hugeheader", "a .nii.gz of under 200 bytes whose header claims 2000^3 int16",
             huge_header, FAILED,
             r"truncated: the header promises 16000000000 bytes of voxel data "
             r"\(2000x2000x2000 int16\), the file holds 0$"),
        Case("negativedim", "a header with a dimension of -36", negative_dimension, FAILED,
             r"invalid shape \(170, -36, 188\) in the header: a dimension of -36"),
        Case("rgb", "an RGB colour image of a head", rgb, FAILED,
             r"RGB colour image: a head scan has one value a voxel$"),
        Case("complex64", "a complex64 image of a head", complex64, FAILED,
             r"complex-valued image \(complex64\): deface the magnitude image$"),
        Case("noise5", "5x5x5 voxels of noise claiming 200 mm", noise_cube, FAILED,
             r"image of shape \(5, 5, 5\) is too small to be a head scan"),
        Case("int8negative", "a real 2 mm head stored as int8, its background at -128",
             int8_negative_background, DEFACED),
        Case("noorientation", "a real 2 mm head with qform_code = sform_code = 0",
             no_orientation_codes, FAILED,
             r"the header has no orientation \(qform_code and sform_code are both 0\)"),
        Case("pixdimzero", "a real 2 mm head with voxel sizes 0 and no orientation codes",
             pixdim_zero, FAILED,
             r"the header has no orientation \(qform_code and sform_code are both 0\)"),
        Case("stated1mm", "a 2 mm head whose header says 1 mm", _stated_voxel_size(0.5), DEFACED),
        Case("stated4mm", "a 2 mm head whose header says 4 mm", _stated_voxel_size(2.0), DEFACED),
        Case("axisorder", "a 2 mm head stored LIA instead of PSR (array and affine together)",
             other_axis_order, DEFACED),
        Case("oblique", "a 2 mm head whose affine is rotated by 20 degrees", oblique, DEFACED),
    ]


def build_corpus(folder: Path, selected=None) -> list[Case]:
    """Write the corpus as a BIDS dataset in folder (created); returns its cases, each with its
    path. ``selected``: the labels to build (default: all)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    description = json.loads((DEMO / "dataset_description.json").read_text())
    description["Name"] = "Deepdefacer bad-input corpus"
    (folder / "dataset_description.json").write_text(json.dumps(description, indent=2) + "\n")
    built = [case for case in cases() if selected is None or case.label in selected]
    rows = ["participant_id\tcase"] + [f"sub-{case.label}\t{case.description}" for case in built]
    (folder / "participants.tsv").write_text("\n".join(rows) + "\n")
    (folder / "README").write_text("Bad and odd inputs made from real heads "
                                   "(tests/bad_inputs.py).\n")
    for case in built:
        case.path = folder / case.relpath
        case.path.parent.mkdir(parents=True, exist_ok=True)
        case.make(case.path)
    return built
