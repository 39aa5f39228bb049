"""render.write_png: a valid PNG, written under a hidden temporary name and renamed."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from qc_helpers import HEADS, requires_heads

from deepdefacer import files
from deepdefacer.qc import render
from deepdefacer.qc.volume import ras_volume

pytestmark = requires_heads


def decode_png(data: bytes) -> np.ndarray:
    """The pixels of an 8-bit grey or RGB PNG without filters, as write_png writes it."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks = 8, {}
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        crc = struct.unpack(">I", data[position + 8 + length:position + 12 + length])[0]
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks.setdefault(kind, b"")
        chunks[kind] += body
        position += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    channels = {0: 1, 2: 3}[colour]
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8)
    rows = raw.reshape(height, 1 + width * channels)
    assert (rows[:, 0] == 0).all()
    pixels = rows[:, 1:].reshape(height, width, channels)
    return pixels[..., 0] if channels == 1 else pixels


@pytest.fixture(scope="module")
def render_image():
    volume = ras_volume(nib.load(HEADS / "colin27_t1w_2mm.nii"))
    return render.shade(render.depth_map(volume, "front"), volume.voxel_mm)


def test_png_round_trip_and_no_temporary_left(render_image, tmp_path):
    assert render_image.std() > 0  # a real render, not a blank
    rgb = render.mark(render_image, 40, 40)
    for name, image in (("grey.png", render_image), ("rgb.png", rgb)):
        path = render.write_png(tmp_path / "figures" / name, image)
        np.testing.assert_array_equal(decode_png(path.read_bytes()), image)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["grey.png", "rgb.png"]


def test_an_interrupted_write_leaves_nothing_and_only_hidden_names_are_used(
        render_image, tmp_path, monkeypatch):
    target = tmp_path / "sub-01_desc-qc_render.png"
    renamed = []

    def interrupted_replace(source, destination):
        renamed.append(Path(source).name)
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        render.write_png(target, render_image)
    assert len(renamed) == 1 and renamed[0].startswith(".")
    assert list(tmp_path.iterdir()) == []


def test_the_next_write_removes_what_a_killed_one_left(render_image, tmp_path):
    target = tmp_path / "sub-01_desc-qc_render.png"
    leftover = files.temporary_path(target)  # as a kill -9 before the rename leaves it
    leftover.write_bytes(b"\x89PNG half")
    other = tmp_path / "sub-02_desc-qc_render.png"
    render.write_png(other, render_image)
    render.write_png(target, render_image)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, other.name])
