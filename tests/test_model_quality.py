"""The shipped model on scans it never saw: every real head, 48 axis orders, rotations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
from shared_data import SHARED_DATA, needs_shared_data

from deepdefacer.train.data import validation_heads
from deepdefacer.train.evaluate import (LANDMARK_NAMES, evaluate_head, main, orientation_consistency,
                                        passes, rotation_consistency)
from deepdefacer.train.labels import label_name

REPO = Path(__file__).resolve().parents[1]
SHARED = SHARED_DATA
LABELS = REPO / "labels"
pytestmark = [needs_shared_data, pytest.mark.slow]


# Heads on which model v9 with the atlas guard (the default) does not meet the acceptance (95% of
# the face removed, no brain, every landmark), as strict expected failures (the suite turns red
# the day one starts passing, and the list must be updated). Empty: the cropped block
# ndd_example4_crop_psr kept its right eye until its voxel sizes were fitted
# (tests/test_header_fit.py). Without the guard (--no-atlas-guard) Subj7_T1, ixi002_t2_6mm and
# t1w_mni_2mm lose brain.
BELOW_ACCEPTANCE: set = set()


def _heads():
    if not SHARED.is_dir():
        return []
    return [pytest.param(p, marks=pytest.mark.xfail(strict=True, reason="below acceptance"))
            if label_name(p) in BELOW_ACCEPTANCE else p for p in validation_heads()]


@pytest.mark.parametrize("path", _heads(), ids=lambda p: label_name(p) if isinstance(p, Path) else str(p))
def test_every_real_head_loses_its_face_and_keeps_its_brain(defacer, path):
    row = evaluate_head(path, LABELS, defacer)
    detail = {k: row[k] for k in ("face_removed", "brain_removed_voxels", *LANDMARK_NAMES)}
    assert passes(row), detail


def test_same_mask_for_all_48_axis_orders(defacer):
    img = nib.load(SHARED / "heads" / "t1w_head_ext2.nii.gz")
    scores = orientation_consistency(img, defacer)
    assert len(scores) == 48
    worst = min(scores, key=scores.get)
    assert scores[worst] >= 0.98, (worst, scores[worst])


def test_same_mask_under_rotations_up_to_15_degrees(defacer):
    img = nib.load(SHARED / "heads" / "t1w_head_ext2.nii.gz")
    scores = rotation_consistency(img, defacer)
    worst = min(scores, key=scores.get)
    assert scores[worst] >= 0.98, (worst, scores[worst])


def test_python_m_deepdefacer_train_evaluate_prints_and_writes_each_heads_scores(tmp_path):
    out = tmp_path / "eval.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-m", "deepdefacer.train.evaluate", "--sets", "heads", "--only",
                             "colin27_t1w_2mm", "--no-atlas-guard", "--json", str(out)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    header, row_line = [line for line in result.stdout.splitlines() if "\t" in line][:2]
    columns = dict(zip(header.split("\t"), row_line.split("\t")))
    assert columns["head"] == "colin27_t1w_2mm" and columns["pass"] == "True"
    assert float(columns["face_removed"]) >= 0.95 and int(columns["brain_removed"]) == 0
    assert float(columns["seconds"]) > 0 and float(columns["peak_numpy_mb"]) > 1
    rows = json.loads(out.read_text())["rows"]
    assert [r["head"] for r in rows] == ["colin27_t1w_2mm"]
    assert rows[0]["face_removed"] == pytest.approx(float(columns["face_removed"]), abs=1e-3)


def test_evaluate_refuses_heads_not_in_its_sets(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--sets", "heads", "--only", "colin27_t1w_2mm", "IXI012-HH-1211_T1"])
    assert stop.value.code == 2
    assert "not in --sets heads: IXI012-HH-1211_T1" in capsys.readouterr().err
