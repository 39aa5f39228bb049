"""Per-scan QC (figures, verdicts) and the group report, on real heads."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from qc_helpers import HEADS, requires_heads, slab_deface

from deepdefacer.qc.participant import qc_scan
from deepdefacer.qc.report import EXIT_FLAGGED, EXIT_INCOMPLETE, EXIT_OK, run_group

pytestmark = requires_heads


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture(scope="module")
def qc_output(tmp_path_factory):
    """Three scans: one defaced properly, one 'defaced' with an empty mask (face left),
    one whose mask cuts deep into the frontal lobe."""
    out = tmp_path_factory.mktemp("qc_out")
    results = {}
    head = nib.load(HEADS / "colin27_t1w_2mm.nii")
    defaced, mask = slab_deface(head)
    results["good"] = qc_scan(head, defaced, mask, out, "sub-01_T1w", source="sub-01/anat/sub-01_T1w.nii")

    other = nib.load(HEADS / "t1w_mni_2mm.nii.gz")
    empty = nib.Nifti1Image(np.zeros(other.shape, np.uint8), other.affine)
    results["face_left"] = qc_scan(other, other, empty, out, "sub-02_T1w")

    deep_defaced, deep_mask = slab_deface(head, depth_mm=90.0, above_tip_mm=120.0)
    results["brain_cut"] = qc_scan(head, deep_defaced, deep_mask, out, "sub-03_T1w")

    return out, results


def test_scan_figures_and_verdict_files(qc_output):
    out, results = qc_output
    figures = out / "figures"
    for stem in ("sub-01_T1w", "sub-02_T1w", "sub-03_T1w"):
        render_width, render_height = png_size(figures / f"{stem}_desc-qc_render.png")
        slices_width, slices_height = png_size(figures / f"{stem}_desc-qc_slices.png")
        assert render_height >= 200 and render_width > 3 * render_height  # four views side by side
        assert slices_height >= 150 and slices_width > 2 * slices_height
        verdict = json.loads((figures / f"{stem}_desc-qc_verdict.json").read_text())
        assert verdict["verdict"] in ("pass", "flag")


def test_a_well_defaced_scan_passes(qc_output):
    good = qc_output[1]["good"]
    assert good["verdict"] == "pass", good["flags"]
    assert good["face_before"]["face_present"] and not good["face_after"]["face_present"]
    assert 0.005 < good["mask"]["removed_fraction"] < 0.3
    assert good["mask"]["brain_removed_ml"] <= 1.0


def test_a_scan_with_the_face_left_is_flagged_with_the_reason(qc_output):
    left = qc_output[1]["face_left"]
    assert left["verdict"] == "flag"
    assert any(flag.startswith("face still present") for flag in left["flags"])
    assert any("removes nothing" in flag for flag in left["flags"])


def test_a_defacing_that_keeps_the_nose_tip_is_flagged(qc_output, tmp_path):
    """The face cut 12-35 mm behind the nose tip: the front 12 mm (the tip) is left."""
    head = nib.load(HEADS / "t1w_head_ext2.nii.gz")
    data = np.asarray(head.dataobj)
    removed = np.asarray(slab_deface(head)[1].dataobj).astype(bool)
    removed &= ~np.asarray(slab_deface(head, depth_mm=12.0)[1].dataobj).astype(bool)
    defaced = nib.Nifti1Image(np.where(removed, 0, data), head.affine)
    left = qc_scan(head, defaced, nib.Nifti1Image(removed.astype(np.uint8), head.affine), tmp_path, "tip")
    assert left["verdict"] == "flag", left
    assert any("frontmost point" in flag for flag in left["flags"]), left["flags"]
    good = qc_output[1]["good"]
    assert not any("frontmost point" in flag for flag in good["flags"])


def test_a_mask_into_the_brain_is_flagged(qc_output):
    cut = qc_output[1]["brain_cut"]
    assert cut["verdict"] == "flag"
    assert any("reaches the brain" in flag for flag in cut["flags"]), cut["flags"]
    assert cut["mask"]["brain_removed_ml"] > 10


def test_group_summaries_failures_first_and_gate(qc_output):
    out, results = qc_output
    assert run_group(out) == EXIT_OK
    assert run_group(out, fail_on_flag=True) == EXIT_FLAGGED
    summary = json.loads((out / "qc_summary.json").read_text())
    assert summary["n_scans"] == 3 and summary["n_flagged"] == 2 and summary["n_pass"] == 1
    verdicts = [scan["verdict"] for scan in summary["scans"]]
    assert verdicts == ["flag", "flag", "pass"]
    rows = (out / "qc_summary.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    assert header[:2] == ["stem", "verdict"]
    assert [row.split("\t")[0] for row in rows[1:]] == [scan["stem"] for scan in summary["scans"]]
    assert all(len(row.split("\t")) == len(header) for row in rows)


def test_gate_passes_when_nothing_is_flagged(tmp_path):
    head = nib.load(HEADS / "t1w_head_ext2.nii.gz")
    defaced, mask = slab_deface(head)
    assert qc_scan(head, defaced, mask, tmp_path, "sub-01_T1w")["verdict"] == "pass"
    assert run_group(tmp_path, fail_on_flag=True) == EXIT_OK


def test_html_is_self_contained(qc_output):
    out, _ = qc_output
    run_group(out)
    page = (out / "qc_report.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources, "no images in the report"
    assert all(s.startswith(("data:", "#")) for s in sources), [s[:40] for s in sources]
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert page.count("data:image/png;base64,") == 6
    # Failures first: the flagged scans' sections come before the passing one.
    assert page.index('id="sub-02_T1w"') < page.index('id="sub-01_T1w"')
    assert page.index('id="sub-03_T1w"') < page.index('id="sub-01_T1w"')


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def open_in_chromium(page: Path, screenshot: Path, profile: Path) -> list[str]:
    """Load a page in headless Chromium, save a screenshot, return its console messages."""
    command = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-component-update", "--no-first-run",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
               "--window-size=1280,1600", f"--screenshot={screenshot}", page.resolve().as_uri()]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120,
                               env={**os.environ, "HOME": str(profile)})
    assert screenshot.is_file(), completed.stderr[-2000:]
    return [line for line in completed.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(chromium_binary() is None,
                    reason="headless browser test needs Debian's chromium (apt-get install chromium)")
@pytest.mark.slow
def test_report_opens_in_headless_chromium_without_console_errors(qc_output, tmp_path):
    out, _ = qc_output
    run_group(out)
    # The harness must see console errors when there are some, or its silence means nothing.
    broken = tmp_path / "broken.html"
    broken.write_text('<html><body><script>throw new Error("qc-broken-page")</script></body></html>')
    messages = open_in_chromium(broken, tmp_path / "broken.png", tmp_path / "profile-broken")
    assert any("qc-broken-page" in m for m in messages), messages

    screenshot = out / "qc_report_screenshot.png"
    messages = open_in_chromium(out / "qc_report.html", screenshot, tmp_path / "profile")
    assert messages == []
    assert png_size(screenshot) == (1280, 1600)
    # A blank page compresses to a few kB; the report with its renders does not.
    assert screenshot.stat().st_size > 10 * (tmp_path / "broken.png").stat().st_size


def test_a_corrupt_verdict_is_named_and_fails_the_group(qc_output, tmp_path):
    out = Path(shutil.copytree(qc_output[0], tmp_path / "out"))
    broken = out / "figures" / "sub-01_T1w_desc-qc_verdict.json"
    broken.write_text(broken.read_text()[:40])
    assert run_group(out) == EXIT_INCOMPLETE
    summary = json.loads((out / "qc_summary.json").read_text())
    assert summary["n_scans"] == 3 and summary["n_incomplete"] == 1
    [entry] = summary["incomplete"]
    assert entry["reason"].startswith(
        "unreadable QC verdict figures/sub-01_T1w_desc-qc_verdict.json (JSONDecodeError: ")
    assert [scan["stem"] for scan in summary["scans"]] == ["sub-02_T1w", "sub-03_T1w"]


def test_report_files_are_written_under_hidden_temporary_names(qc_output, tmp_path, monkeypatch):
    from deepdefacer import files

    out = Path(shutil.copytree(qc_output[0], tmp_path / "out"))
    renamed = []

    def interrupted_replace(source, target):
        renamed.append((Path(source).name, Path(target).name))
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", interrupted_replace)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(KeyboardInterrupt):
        run_group(out)
    assert renamed and renamed[0][0].startswith(".") and renamed[0][1] == "qc_summary.json"
    assert sorted(p.name for p in out.iterdir()) == before


def test_face_left_on_a_rescaled_output_is_flagged(tmp_path):
    """A 'defaced' file written with another intensity scale (here 5% of the original,
    as a defacer that renormalises would) with only the neck removed. At the original's
    head threshold almost nothing is head, so that view alone saw no face; the view at the
    defaced file's own threshold (what anyone rendering the shared file sees) does."""
    head = nib.load(HEADS / "colin27_t1w_2mm.nii")
    data = np.asanyarray(head.dataobj).astype(np.float32)
    mask = np.zeros(head.shape, np.uint8)
    mask[:, :, : head.shape[2] // 8] = 1  # the bottom slab only: the face stays
    scaled = np.where(mask > 0, 0, data * 0.05).astype(np.float32)
    defaced = nib.Nifti1Image(scaled, head.affine)
    verdict = qc_scan(head, defaced, nib.Nifti1Image(mask, head.affine), tmp_path, "sub-04_T1w")
    assert verdict["face_after_own_threshold"]["face_present"]
    assert verdict["face_after"]["face_present"]
    assert any(flag.startswith("face still present") for flag in verdict["flags"]), verdict["flags"]
    assert "own head threshold" in verdict["face_after"]["reason"]
