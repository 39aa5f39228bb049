"""The BIDS App and `deepdeface` over a corpus of bad and odd inputs made from real heads.

tests/bad_inputs.py builds the corpus (one participant a case) with each case's expected
outcome. The BIDS App runs once over all of it (in this process: the model is loaded once),
`deepdeface` once a case. What must hold whatever the case: a failed scan writes no image, the
input is never modified, and no output reported as defaced still shows a face, judged by the
product's own face check (from every side) and by deepdefacer-check on the output folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io as text_io
import json
import os
import re

import nibabel as nib
import numpy as np
import pytest

from bad_inputs import DEFACED, FAILED, build_corpus, cases
from bids_app_helpers import DEMO, copy_read_only, make_writable, needs_shared_data, nifti_bytes
from deepdefacer.cli import check, deface_one
from deepdefacer.cli.run import main
from deepdefacer.qc.verify import verify_defacing

pytestmark = [needs_shared_data, pytest.mark.slow]

# Cases the product gets wrong today, each with why. Strict: once it is fixed the test says so.
KNOWN_PRODUCT_BUGS: dict = {
}


def case_params():
    return [pytest.param(case.label, id=case.label, marks=(
        [pytest.mark.xfail(strict=True, reason=KNOWN_PRODUCT_BUGS[case.label])]
        if case.label in KNOWN_PRODUCT_BUGS else [])) for case in cases()]


def failures(err: str) -> dict:
    return dict(re.findall(r"^  (\S+): (.+)$", err, flags=re.MULTILINE))


def derivative_paths(relpath: str):
    """(defaced image, mask) of a source T1w in the derivatives layout."""
    stem = relpath[: -len("_T1w.nii.gz")]
    return f"{stem}_desc-defaced_T1w.nii.gz", f"{stem}_mod-T1w_defacemask.nii.gz"


def input_state(folder) -> dict:
    """relpath -> what identifies each file's content, including the ones this user cannot read
    (their size, time and mode) and links (their target)."""
    state = {}
    for path in sorted(folder.rglob("*")):
        relpath = path.relative_to(folder).as_posix()
        info = os.lstat(path)
        if path.is_symlink():
            state[relpath] = "link:" + os.readlink(path)
        elif path.is_dir():
            state[relpath] = ("folder", info.st_mode)
        elif os.access(path, os.R_OK):
            state[relpath] = (hashlib.sha256(path.read_bytes()).hexdigest(), info.st_mode)
        else:
            state[relpath] = (info.st_size, info.st_mtime_ns, info.st_mode)
    return state


def run_captured(function, arguments):
    """(exit code, stdout, stderr) of a command-line entry point run in this process."""
    out, err = text_io.StringIO(), text_io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = function(arguments)
    return status, out.getvalue(), err.getvalue()


def assert_only_the_mask_changed(source, defaced, mask):
    """The header bytes are the source's; every voxel outside the mask is bit-identical."""
    source_img, defaced_img = nib.load(source), nib.load(defaced)
    offset = int(source_img.dataobj.offset)
    assert nifti_bytes(defaced)[:offset] == nifti_bytes(source)[:offset], "header bytes differ"
    raw_source = np.asanyarray(source_img.dataobj.get_unscaled())
    raw_defaced = np.asanyarray(defaced_img.dataobj.get_unscaled())
    outside = np.asanyarray(mask).reshape(raw_source.shape) == 0
    assert not outside.all(), "the mask removes nothing"
    np.testing.assert_array_equal(raw_defaced[outside], raw_source[outside])


# ---------------------------------------------------------------------------------------------
# One corpus; the BIDS App once over all of it; deepdeface once a case


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus") / "ds"
    built = {case.label: case for case in build_corpus(folder)}
    return folder, built, input_state(folder)


@pytest.fixture(scope="module")
def app(corpus, tmp_path_factory):
    folder, _, _ = corpus
    output = tmp_path_factory.mktemp("app") / "out"
    status, _, err = run_captured(main, [str(folder), str(output), "participant",
                                         "--skip-bids-validation", "--device", "cpu", "--quiet"])
    return {"status": status, "err": err, "failures": failures(err), "output": output}


@pytest.fixture(scope="module")
def one_by_one(corpus, tmp_path_factory):
    """deepdeface on every case: label -> (exit code, stderr, output path, mask path)."""
    _, built, _ = corpus
    folder = tmp_path_factory.mktemp("deepdeface")
    results = {}
    for label, case in built.items():
        output, mask = folder / f"{label}_defaced.nii.gz", folder / f"{label}_mask.nii.gz"
        status, _, err = run_captured(deface_one.main, [str(case.path), "-o", str(output),
                                                        "--mask-out", str(mask), "--device",
                                                        "cpu"])
        results[label] = (status, err, output, mask)
    return results


# ---------------------------------------------------------------------------------------------
# The BIDS App


@pytest.mark.parametrize("label", case_params())
def test_each_case_has_its_outcome_and_reason(label, corpus, app):
    _, built, _ = corpus
    case = built[label]
    image, mask = derivative_paths(case.relpath)
    if case.outcome == DEFACED:
        assert case.relpath not in app["failures"], app["failures"].get(case.relpath)
        assert (app["output"] / image).is_file() and (app["output"] / mask).is_file()
        sidecar = json.loads((app["output"] / image.replace(".nii.gz", ".json")).read_text())
        assert sidecar["Deepdefacer"]["Verified"] is True
    else:
        assert case.outcome == FAILED
        assert case.relpath in app["failures"], f"{label} was not reported as failed"
        assert re.match(case.reason, app["failures"][case.relpath]), app["failures"][case.relpath]


def test_the_summary_counts_every_scan_once(corpus, app):
    _, built, _ = corpus
    assert app["status"] == 1  # the corpus is mostly failures
    assert "Traceback" not in app["err"] and "unexpected error" not in app["err"]
    counts = re.search(r"(\d+) scan\(s\): (\d+) defaced, 0 already up to date, (\d+) failed",
                       app["err"])
    assert counts, app["err"]
    total, defaced, failed = map(int, counts.groups())
    assert total == len(built) and defaced + failed == total
    assert failed == len(app["failures"])
    assert set(app["failures"]) <= {case.relpath for case in built.values()}


def test_a_failed_scan_writes_no_image(corpus, app):
    _, built, _ = corpus
    failed = set(app["failures"]) | {case.relpath for case in built.values()
                                     if case.outcome == FAILED}
    for relpath in failed:
        subject = app["output"] / relpath.split("/")[0]
        written = [p.name for p in subject.rglob("*.nii*")] if subject.exists() else []
        assert written == [], f"{relpath} failed, yet {written} were written"


def test_the_good_participant_is_defaced_with_only_its_face_changed(corpus, app):
    _, built, _ = corpus
    case = built["good"]
    image, mask = derivative_paths(case.relpath)
    assert case.relpath not in app["failures"]
    assert_only_the_mask_changed(case.path, app["output"] / image,
                                 np.asanyarray(nib.load(app["output"] / mask).dataobj))


def test_no_output_reported_as_defaced_shows_a_face(corpus, app, tmp_path):
    _, built, _ = corpus
    reported_defaced = [case for case in built.values() if case.relpath not in app["failures"]]
    assert reported_defaced, "nothing was defaced: the check below would check nothing"
    for case in reported_defaced:
        image, mask_path = derivative_paths(case.relpath)
        mask = np.asanyarray(nib.load(app["output"] / mask_path).dataobj)
        verification = verify_defacing(nib.load(case.path), nib.load(app["output"] / image), mask)
        assert verification.face_before.face_present, f"{case.label}: no face on the original"
        assert verification.verified, f"{case.label}: {verification.reason}"
    report = tmp_path / "check.json"
    status, _, _ = run_captured(check.main, [str(app["output"]), "--quiet", "--json", str(report)])
    checked = json.loads(report.read_text())
    assert checked["n_scans"] == len(reported_defaced)
    assert status == check.EXIT_NO_FACE, [s for s in checked["scans"] if s["status"] != "no_face"]


def test_the_input_is_not_modified(corpus, app, one_by_one):
    folder, _, before = corpus
    assert input_state(folder) == before


# ---------------------------------------------------------------------------------------------
# deepdeface, one file at a time


@pytest.mark.parametrize("label", case_params())
def test_deepdeface_exit_code_and_output(label, corpus, one_by_one):
    _, built, _ = corpus
    case = built[label]
    status, err, output, mask = one_by_one[label]
    assert "Traceback" not in err and "unexpected error" not in err, err
    if case.outcome == DEFACED:
        assert status == 0, err
        verification = verify_defacing(nib.load(case.path), nib.load(output),
                                       np.asanyarray(nib.load(mask).dataobj))
        assert verification.verified, verification.reason
    else:
        assert status == 1, err
        assert not output.exists(), f"{label} failed, yet {output.name} was written"
        reasons = re.findall(rf"^deepdeface: {re.escape(str(case.path))}: (.+)$", err,
                             flags=re.MULTILINE)
        assert any(re.match(case.reason, reason) for reason in reasons), err


# ---------------------------------------------------------------------------------------------
# An upload-ready copy never holds an image that was not defaced


@pytest.fixture(scope="module")
def upload_copy(tmp_path_factory):
    """--layout bids --suffix T2w on ds-demo, whose other anatomy (T1w, PDw) is not selected."""
    folder = tmp_path_factory.mktemp("upload")
    dataset = copy_read_only(DEMO, folder / "ds-demo")
    before = input_state(dataset)
    output = folder / "upload"
    try:
        status, _, err = run_captured(main, [str(dataset), str(output), "participant",
                                             "--layout", "bids", "--suffix", "T2w",
                                             "--skip-bids-validation", "--device", "cpu",
                                             "--quiet"])
        after = input_state(dataset)
    finally:
        make_writable(dataset)
    return {"dataset": dataset, "output": output, "status": status, "err": err,
            "unmodified": after == before}


def test_bids_layout_leaves_out_the_anatomy_not_selected(upload_copy):
    dataset, output = upload_copy["dataset"], upload_copy["output"]
    assert upload_copy["unmodified"], "the input dataset was modified"
    assert upload_copy["status"] == 1
    failed = failures(upload_copy["err"])
    others = sorted(p.relative_to(dataset).as_posix() for pattern in ("*_T1w.nii*", "*_PDw.nii*")
                    for p in dataset.rglob(pattern))
    assert len(others) >= 2
    for relpath in others:
        assert relpath in failed, f"{relpath} left out without being named"
        assert failed[relpath].startswith("anatomical image not selected for defacing")
        assert not (output / relpath).exists(), f"{relpath} copied with its face"
    t2w = sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*_T2w.nii*"))
    assert t2w and not set(t2w) & set(failed)
    for relpath in t2w:
        mask = output / (relpath.split("_T2w.nii")[0] + "_mod-T2w_defacemask.nii.gz")
        assert_only_the_mask_changed(dataset / relpath, output / relpath,
                                     np.asanyarray(nib.load(mask).dataobj))


def test_the_copy_without_them_is_still_a_valid_dataset(upload_copy):
    from deepdefacer.bids.validate import validate_dataset

    result = validate_dataset(upload_copy["output"])
    assert result.errors == [], result.summary()
