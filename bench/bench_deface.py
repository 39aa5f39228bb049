"""Benchmark: Deepdefacer vs DeepDefacer 2.1.2 (2019) vs the pydeface method, side by side.

    .venv/bin/python -m bench.bench_deface [--model PATH] [--heads NAME ...] [--out-dir docs]
    .venv/bin/python -m bench.bench_deface --render-only     # docs/benchmark.md again from benchmark.json

Run it from the repository root.

One run, one machine, the same scans. Every method runs in its own subprocess (one per
method and scan); its peak memory is that process's ``ru_maxrss`` (``os.wait4``), i.e. the
whole Python process with its framework and model, not only the arrays.

- **ours**: ``load_predictor("cpu")`` once, then ``deface(img, d)`` on an image already read
  into memory (1 warm-up call, then ``--repeats`` timed calls; the median is reported), the
  model part ``d.predict(cube)`` alone (same count), and file to file (``nib.load`` of the
  .nii.gz, ``deface``, ``nib.save`` of the defaced image and the mask).
- **deepdefacer-2.1.2**: the PyPI package in its own virtualenv (created here if missing,
  ``build/venv-deepdefacer-2019``), run by ``bench/baselines/deepdefacer2019_runner.py`` with
  three run-time compatibility patches. Each call is the tool's own ``deface_3D_MRI()``: it
  loads its model every time (timed apart), reads, predicts, writes. ``--repeats-2019`` calls
  on the reference scan, 1 on the others.
- **pydeface-ants**: pydeface's method with antspyx for FLIRT
  (``bench/baselines/pydeface_ants.py``). ``--repeats-pydeface`` calls on the reference scan
  (default 1), 1 on the others.

Scans: a 256x256x176 1 mm T1w made from colin27_t1w_1mm by cropping/zero-padding whole voxels
(no resampling, see ``make_reference``), plus real heads from ../shared/data/heads. Masks are
scored with ``deepdefacer.train.evaluate.score`` against labels/<name>_{face,brain,landmarks}.
Writes benchmark.json, benchmark.md and benchmark.png into ``--out-dir``. The text of
benchmark.md is ``bench/templates/benchmark.md``: the prose lives there, and this script only
fills in the measured numbers and tables (``string.Template`` placeholders such as ``$date_utc``).
``--render-only`` rewrites benchmark.md (and benchmark.png, where matplotlib is installed) from
an existing benchmark.json without running anything.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = Path(__file__).resolve().parent / "templates" / "benchmark.md"
DATA = ROOT.parent / "shared" / "data"
VENV_2019 = ROOT / "build" / "venv-deepdefacer-2019"
WHEELHOUSE = ROOT / "build" / "wheelhouse"
# What DeepDefacer 2.1.2 really imports (defacer.py, defacer_utils.py): numpy, nibabel,
# SimpleITK, keras (+ a TensorFlow backend), termcolor. Its sklearn, nilearn, ipython and
# matplotlib requirements are never imported, so the package goes in with --no-deps.
REQUIREMENTS_2019 = ["tensorflow-cpu==2.21.0", "keras==3.15.1", "nibabel==5.4.2",
                     "numpy<2.5", "SimpleITK==2.5.7", "termcolor"]
REFERENCE = "colin27_t1w_256x256x176"
DEFAULT_HEADS = ["chris_t1w", "chris_pdw", "ixi002_t2_6mm", "t1w_head_ext2"]
TARGETS = {"deface_seconds": 5.0, "predict_seconds": 3.0, "peak_gb": 3.0, "speedup_vs_2019": 10.0}
OURS = ("ours", "ours-network")  # with the atlas guard (the default) and without it
METHODS = OURS + ("deepdefacer-2.1.2", "pydeface-ants")
BASELINES = ("deepdefacer-2.1.2", "pydeface-ants")  # the speed ratios are theirs / ours


# --------------------------------------------------------------------------- scans

def crop_or_pad(data: np.ndarray, affine: np.ndarray, starts, shape):
    """Take ``shape`` voxels from ``starts`` (negative = zero padding); world positions kept."""
    out = np.zeros(shape, dtype=data.dtype)
    src, dst = [], []
    for start, size, have in zip(starts, shape, data.shape):
        lo, hi = max(start, 0), min(start + size, have)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = data[tuple(src)]
    new_affine = affine.copy()
    new_affine[:3, 3] = affine[:3, :3] @ np.asarray(starts, float) + affine[:3, 3]
    return out, new_affine


# colin27_t1w_1mm is 181x217x181 at 1 mm (RAS). x: pad 37 + 38 -> 256; y: pad 19 + 20 -> 256;
# z: drop the lowest slice (neck) and the 4 top slices (all air, max < 10) -> 176.
REFERENCE_RECIPE = {"source": "colin27_t1w_1mm", "starts": (-37, -19, 1), "shape": (256, 256, 176)}


def make_reference(work: Path, labels_dir: Path) -> tuple[Path, Path | None, str]:
    import nibabel as nib

    scans, labels = work / "scans", work / "labels"
    scans.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    recipe = REFERENCE_RECIPE
    src = nib.load(DATA / "heads" / f"{recipe['source']}.nii.gz")
    out_path = scans / f"{REFERENCE}.nii.gz"
    data, affine = crop_or_pad(np.asanyarray(src.dataobj), src.affine, recipe["starts"], recipe["shape"])
    img = nib.Nifti1Image(data, affine, src.header)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    nib.save(img, out_path)
    have_labels = all((labels_dir / f"{recipe['source']}_{k}.nii.gz").is_file()
                      for k in ("face", "brain", "landmarks"))
    if have_labels:
        for kind in ("face", "brain", "landmarks"):
            lab = nib.load(labels_dir / f"{recipe['source']}_{kind}.nii.gz")
            arr, aff = crop_or_pad(np.asanyarray(lab.dataobj), lab.affine, recipe["starts"], recipe["shape"])
            nib.save(nib.Nifti1Image(arr.astype(np.uint8), aff), labels / f"{REFERENCE}_{kind}.nii.gz")
    how = (f"{recipe['source']}.nii.gz (181x217x181, 1 mm, RAS, uint8) cut/zero-padded by whole "
           f"voxels, no resampling: x padded 37+38, y padded 19+20, z slice 0 (neck) and the top "
           f"4 slices (air) dropped; affine translated so every voxel keeps its world position")
    return out_path, (labels if have_labels else None), how


def head_path(name: str) -> Path:
    for suffix in (".nii.gz", ".nii"):
        path = DATA / "heads" / f"{name}{suffix}"
        if path.is_file():
            return path
    raise SystemExit(f"no head {name} in {DATA / 'heads'}")


# --------------------------------------------------------------------------- 2019 venv

def ensure_venv_2019(log) -> Path:
    python = VENV_2019 / "bin" / "python"
    check = [str(python), "-I", "-c", "import importlib.metadata as m, SimpleITK, termcolor, tensorflow, keras, "
             "nibabel; assert m.version('deepdefacer') == '2.1.2'"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    log(f"creating {VENV_2019} (deepdefacer 2.1.2 and what it imports)")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(VENV_2019)], check=True)
    links = ["--find-links", str(WHEELHOUSE)] if WHEELHOUSE.is_dir() else []
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(pip + links + REQUIREMENTS_2019, check=True)
    subprocess.run(pip + ["--no-deps", "deepdefacer==2.1.2"], check=True)
    subprocess.run(check, check=True)
    return python


# --------------------------------------------------------------------------- subprocesses

def run_measured(cmd: list[str], log_path: Path, timeout_s: float, cwd: Path | None = None,
                 env: dict | None = None) -> dict:
    """Run ``cmd``; its wall time, exit code and peak RSS (this child only, via wait4)."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": proc.returncode, "wall_seconds": time.perf_counter() - start,
            "peak_rss_mb": usage.ru_maxrss / 1024, "log": str(log_path)}


def clean_env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["CUDA_VISIBLE_DEVICES"] = "-1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


# --------------------------------------------------------------------------- ours (worker)

def worker_ours(args) -> int:
    t_start = time.perf_counter()
    import nibabel as nib

    from deepdefacer import deface
    from deepdefacer.pipeline import Defacer
    from deepdefacer.predictor import load_predictor

    t_import = time.perf_counter() - t_start
    start = time.perf_counter()
    predictor = load_predictor("cpu", model_path=args.model)
    defacer = Defacer(predictor, args.atlas_guard)
    load_seconds = time.perf_counter() - start
    raw_bytes = nib.load(args.scan).to_bytes()  # the scan, decompressed, in memory

    def fresh():
        # A new image per call: nibabel caches get_fdata on an image object.
        return nib.Nifti1Image.from_bytes(raw_bytes)

    start = time.perf_counter()
    deface(fresh(), defacer)
    first_seconds = time.perf_counter() - start
    deface_seconds, mask_img = [], None
    for _ in range(args.repeats):
        img = fresh()
        start = time.perf_counter()
        _, mask_img = deface(img, defacer)
        deface_seconds.append(time.perf_counter() - start)
    # The model's input exactly as deface() builds it: catch the cube on its way in.
    captured = {}

    def spy(cube):
        captured["cube"] = cube
        return type(predictor).predict(predictor, cube)

    predictor.predict = spy
    deface(fresh(), defacer)
    del predictor.predict
    cube = captured["cube"]
    predict_seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        predictor.predict(cube)
        predict_seconds.append(time.perf_counter() - start)
    file_seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            start = time.perf_counter()
            defaced, mask = deface(nib.load(args.scan), defacer)
            nib.save(defaced, Path(tmp) / "defaced.nii.gz")
            nib.save(mask, Path(tmp) / "mask.nii.gz")
            file_seconds.append(time.perf_counter() - start)
    nib.save(mask_img, args.mask_out)
    result = {
        "method": "ours" if args.atlas_guard else "ours-network", "scan": str(args.scan), "repeats": args.repeats,
        "deface_seconds": deface_seconds, "first_deface_seconds": first_seconds,
        "predict_seconds": predict_seconds, "file_seconds": file_seconds,
        "import_seconds": t_import, "load_model_seconds": load_seconds,
        "cube_shape": list(cube.shape), "model": str(predictor.path), "model_sha256": predictor.model_sha256,
        "peak_rss_mb_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mask_removed": str(args.mask_out),
    }
    args.json.write_text(json.dumps(result, indent=1))
    return 0


# --------------------------------------------------------------------------- scoring

def score_mask(scan: Path, removed: np.ndarray, labels_dir: Path | None, name: str) -> dict | None:
    import nibabel as nib

    from deepdefacer.train.evaluate import score

    if labels_dir is None:
        return None
    paths = {k: labels_dir / f"{name}_{k}.nii.gz" for k in ("face", "brain", "landmarks")}
    if not all(p.is_file() for p in paths.values()):
        return None
    data = nib.load(scan).get_fdata(dtype=np.float32).reshape(removed.shape)
    labels = {k: np.asarray(nib.load(p).dataobj).reshape(removed.shape) for k, p in paths.items()}
    return score(removed.astype(bool), data, labels["face"], labels["brain"], labels["landmarks"])


def load_removed(method: str, worker: dict, shape) -> np.ndarray:
    import nibabel as nib

    if method == "deepdefacer-2.1.2":
        keep = np.asarray(nib.load(worker["mask_keep"]).dataobj).reshape(shape)
        return keep < 0.5
    return np.asarray(nib.load(worker["mask_removed"]).dataobj).reshape(shape).astype(bool)


# --------------------------------------------------------------------------- run

def median(values) -> float | None:
    return float(statistics.median(values)) if values else None


def summarise(method: str, worker: dict, measured: dict) -> dict:
    """Comparable numbers: ``seconds`` = file in -> defaced file out, model loading excluded."""
    row = {"method": method, "repeats": worker["repeats"], "peak_rss_mb": round(measured["peak_rss_mb"], 1),
           "process_wall_seconds": round(measured["wall_seconds"], 2)}
    if method in OURS:
        row.update(seconds=median(worker["file_seconds"]), deface_seconds=median(worker["deface_seconds"]),
                   model_seconds=median(worker["predict_seconds"]),
                   first_deface_seconds=worker["first_deface_seconds"],
                   load_model_seconds=worker["load_model_seconds"])
    elif method == "deepdefacer-2.1.2":
        total = worker["seconds"]
        without_load = [s - lm for s, lm in zip(total, worker["load_model_seconds"])]
        row.update(seconds=median(without_load), seconds_with_model_load=median(total),
                   model_seconds=median(worker["predict_seconds"]),
                   load_model_seconds=median(worker["load_model_seconds"]),
                   all_seconds=total)
    else:
        row.update(seconds=median(worker["seconds"]), model_seconds=median(worker["registration_seconds"]),
                   all_seconds=worker["seconds"])
    for key, value in list(row.items()):
        if isinstance(value, float):
            row[key] = round(value, 3)
    return row


def machine_state() -> dict:
    train = subprocess.run(["pgrep", "-af", "deepdefacer.train.train"], capture_output=True, text=True)
    busy = subprocess.run(["ps", "-eo", "pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True)
    lines = [ln[:160] for ln in busy.stdout.splitlines()[1:7]]
    return {"utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            "loadavg": os.getloadavg(), "training_running": [ln for ln in train.stdout.splitlines()
                                                             if "pgrep" not in ln],
            "top_cpu": lines}


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_gb, 1),
            "os": platform.platform(), "python": platform.python_version(), "gpu": "none (CUDA hidden)"}


def git_commit() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip()


def run(args) -> int:
    import nibabel as nib

    t_run = time.perf_counter()
    work = args.work.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "out").mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    state_before = machine_state()
    if state_before["training_running"]:
        log("WARNING: a training process is running; timings share the CPU with it")
    model = args.model
    if model is None:
        from deepdefacer.predictor import shipped_model_path

        model = str(shipped_model_path())
    python_2019 = ensure_venv_2019(log) if "deepdefacer-2.1.2" in args.methods else None

    ref_path, ref_labels, ref_how = make_reference(work, args.labels)
    scans = [(REFERENCE, ref_path, ref_labels, True)]
    for name in args.heads:
        scans.append((name, head_path(name), args.labels, False))

    env = clean_env()
    here = Path(__file__).resolve().parent
    results = []
    for name, path, labels_dir, is_reference in scans:
        img = nib.load(path)
        shape = img.shape[:3]
        zooms = [round(float(z), 2) for z in img.header.get_zooms()[:3]]
        for method in args.methods:
            tag = f"{name}.{method}"
            out_json = work / "out" / f"{tag}.json"
            out_json.unlink(missing_ok=True)
            if method in OURS:
                # As a module from the repository root, like this script: ``deepdefacer`` is then
                # the source tree's package.
                cmd = [sys.executable, "-m", "bench.bench_deface", "--worker", "ours", "--scan", str(path),
                       "--repeats", str(args.repeats), "--model", model,
                       "--mask-out", str(work / "out" / f"{tag}.mask.nii.gz"), "--json", str(out_json)]
                cmd += ["--no-atlas-guard"] if method == "ours-network" else []
                timeout = 1200
            elif method == "deepdefacer-2.1.2":
                reps = args.repeats_2019 if is_reference else 1
                cmd = [str(python_2019), str(here / "baselines" / "deepdefacer2019_runner.py"), "--scan", str(path),
                       "--repeats", str(reps), "--work", str(work / "out" / tag), "--json", str(out_json)]
                timeout = 300 * reps + 120
            else:
                reps = args.repeats_pydeface if is_reference else 1
                cmd = [sys.executable, str(here / "baselines" / "pydeface_ants.py"), "--scan", str(path),
                       "--repeats", str(reps), "--mask-out", str(work / "out" / f"{tag}.mask.nii.gz"),
                       "--json", str(out_json)]
                timeout = 600 * reps
            log(f"{name} [{shape}, {zooms} mm]: {method} ...")
            measured = run_measured(cmd, work / "logs" / f"{tag}.log", timeout,
                                    cwd=ROOT if method in OURS else work, env=env)
            row = {"scan": name, "shape": list(shape), "voxel_mm": zooms, "reference": is_reference}
            if measured["returncode"] != 0 or not out_json.is_file():
                row.update(method=method, error=f"exit {measured['returncode']}, see {measured['log']}")
                log(f"  FAILED: {row['error']}")
                results.append(row)
                continue
            worker = json.loads(out_json.read_text())
            row.update(summarise(method, worker, measured))
            row["versions"] = worker.get("versions")
            if method in OURS:
                row["model"] = worker["model"]
                row["model_sha256"] = worker["model_sha256"]
            removed = load_removed(method, worker, shape)
            row["removed_voxels"] = int(removed.sum())
            row["score"] = score_mask(path, removed, labels_dir, name)
            results.append(row)
            extra = f", face removed {row['score']['face_removed']:.3f}" if row["score"] else ""
            log(f"  {row['seconds']:.2f} s (median of {row['repeats']}), peak {row['peak_rss_mb']:.0f} MB{extra}")

    state_after = machine_state()
    report = {
        "date_utc": state_before["utc"], "finished_utc": state_after["utc"],
        "total_minutes": round((time.perf_counter() - t_run) / 60, 1),
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "-m", "bench.bench_deface"] + args.argv),
        "commit": git_commit(), "machine": machine_info(),
        "machine_state": {"before": state_before, "after": state_after},
        "reference_scan": {"name": REFERENCE, "how": ref_how, "labels": bool(ref_labels)},
        "targets": TARGETS, "results": results, "ratios": ratios(results), "notes": args.note,
    }
    report["acceptance"] = acceptance(report)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "benchmark.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.out_dir / "benchmark.png")
    (args.out_dir / "benchmark.md").write_text(markdown(report))
    log(f"wrote {args.out_dir}/benchmark.{{json,md,png}} in {report['total_minutes']} min")
    return 0


def rows_by(results, method):
    return {r["scan"]: r for r in results if r["method"] == method and "error" not in r}


def ratios(results) -> dict:
    """Per scan: baseline seconds / ours seconds (like for like: file to file, no model load)."""
    ours = rows_by(results, "ours")
    out = {}
    for method in BASELINES + ("ours-network",):
        for scan, row in rows_by(results, method).items():
            if scan in ours:
                entry = out.setdefault(scan, {})
                entry[method] = round(row["seconds"] / ours[scan]["seconds"], 1)
                if method == "deepdefacer-2.1.2":
                    # The acceptance reading: the 2019 tool's whole call vs our deface().
                    entry["deepdefacer-2.1.2 call / ours deface()"] = round(
                        row["seconds_with_model_load"] / ours[scan]["deface_seconds"], 1)
    return out


def acceptance(report) -> dict:
    ours = rows_by(report["results"], "ours").get(REFERENCE)
    old = rows_by(report["results"], "deepdefacer-2.1.2").get(REFERENCE)
    if not ours:
        return {}
    out = {
        "deface_seconds": {"value": ours["deface_seconds"], "target": TARGETS["deface_seconds"],
                           "pass": ours["deface_seconds"] <= TARGETS["deface_seconds"]},
        "predict_seconds": {"value": ours["model_seconds"], "target": TARGETS["predict_seconds"],
                            "pass": ours["model_seconds"] <= TARGETS["predict_seconds"]},
        "peak_gb": {"value": round(ours["peak_rss_mb"] / 1024, 2), "target": TARGETS["peak_gb"],
                    "pass": ours["peak_rss_mb"] / 1024 <= TARGETS["peak_gb"]},
    }
    network = rows_by(report["results"], "ours-network").get(REFERENCE)
    if network:  # the faster path without the atlas guard (--no-atlas-guard), for comparison
        out["deface_seconds_network"] = {"value": network["deface_seconds"], "target": TARGETS["deface_seconds"],
                                         "pass": network["deface_seconds"] <= TARGETS["deface_seconds"]}
    if old:
        value = round(old["seconds"] / ours["seconds"], 1)
        out["speedup_vs_2019"] = {"value": value, "target": TARGETS["speedup_vs_2019"],
                                  "pass": value >= TARGETS["speedup_vs_2019"],
                                  "how": "2.1.2 file-to-file without its model load / ours file-to-file"}
        if network:
            value = round(old["seconds"] / network["seconds"], 1)
            out["speedup_vs_2019_network"] = {"value": value, "target": TARGETS["speedup_vs_2019"],
                                              "pass": value >= TARGETS["speedup_vs_2019"],
                                              "how": "the same, ours with --no-atlas-guard"}
    return out


# --------------------------------------------------------------------------- outputs

LABELS = {"ours": "Deepdefacer (ours)", "ours-network": "ours with --no-atlas-guard",
          "deepdefacer-2.1.2": "DeepDefacer 2.1.2 (2019)",
          "pydeface-ants": "pydeface method (antspyx)"}
COLOURS = {"ours": "#1b9e77", "ours-network": "#66a61e", "deepdefacer-2.1.2": "#d95f02", "pydeface-ants": "#7570b3"}


def plot(report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scans = list(dict.fromkeys(r["scan"] for r in report["results"]))
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=110)
    methods = [m for m in METHODS if rows_by(report["results"], m)]
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        rows = rows_by(report["results"], method)
        xs = [j + (i - (len(methods) - 1) / 2) * width for j, s in enumerate(scans) if s in rows]
        ys = [rows[s]["seconds"] for s in scans if s in rows]
        bars = ax.bar(xs, ys, width, label=LABELS[method], color=COLOURS[method])
        for bar, y in zip(bars, ys):
            ax.text(bar.get_x() + bar.get_width() / 2, y * 1.08, f"{y:.1f}" if y < 10 else f"{y:.0f}",
                    ha="center", va="bottom", fontsize=7)
    ax.axhline(TARGETS["deface_seconds"], color="grey", ls="--", lw=0.8)
    ax.text(-0.48, TARGETS["deface_seconds"] * 1.08, "5 s", ha="left",
            va="bottom", fontsize=7, color="grey")
    ax.set_yscale("log")
    ax.set_xticks(range(len(scans)))
    ax.set_xticklabels([s.replace("_256x256x176", "\n256x256x176") for s in scans], fontsize=8)
    ax.set_ylabel("seconds per scan, file to file (log scale)")
    ax.set_title(f"Defacing time on {report['machine']['cores']} CPU cores, no GPU "
                 f"({report['date_utc'][:10]}); median over repeats, model loading excluded", fontsize=9)
    ax.legend(fontsize=8, loc="upper center", ncol=len(methods), bbox_to_anchor=(0.5, -0.13), frameon=False)
    ax.set_xlim(-0.5, len(scans) - 0.5)
    ax.set_ylim(top=ax.get_ylim()[1] * 2.5)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def fmt(value, digits=2, none="–"):
    if value is None:
        return none
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    return f"{value:.{digits}f}"


REFERENCE_LABELS = {True: "Its labels are colin27_t1w_1mm's, cut the same way.",
                    False: "No labels for colin27_t1w_1mm existed at run time, so it is not scored."}


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def scans_table(res) -> str:
    rows = []
    for r in res:
        head = [r["scan"], f"{'×'.join(map(str, r['shape']))}, {'×'.join(f'{z:g}' for z in r['voxel_mm'])}",
                r["method"]]
        if "error" in r:
            rows.append(head + ["–", f"failed: {r['error']}"] + [""] * 7)
            continue
        if r["method"] in OURS:
            core = r["deface_seconds"]
        elif r["method"] == "deepdefacer-2.1.2":
            core = r["seconds_with_model_load"]
        else:
            core = r["seconds"]
        sc = r.get("score") or {}
        marks = [sc.get(k) for k in ("eye_left", "eye_right", "nose", "mouth")] if sc else []
        landmark = "/".join("–" if m is None else ("y" if m else "**n**") for m in marks) if marks else "–"
        rows.append(head + [r["repeats"], fmt(r["seconds"]), fmt(core), fmt(r.get("model_seconds")),
                            f"{r['peak_rss_mb']:.0f}", fmt(sc.get("face_removed"), 3),
                            sc.get("brain_removed_voxels", "–"), fmt(sc.get("dice"), 3), landmark])
    return table(["scan", "shape, mm", "method", "n", "seconds", "core s", "model s", "peak MB", "face removed",
                  "brain vox removed", "Dice", "eyes/nose/mouth removed"], rows)


def ratios_table(report) -> str:
    rows = [[scan, f"{fmt(entry.get('deepdefacer-2.1.2'), 1)}×",
             f"{fmt(entry.get('deepdefacer-2.1.2 call / ours deface()'), 1)}×",
             f"{fmt(entry.get('pydeface-ants'), 1)}×", f"{fmt(entry.get('ours-network'), 1)}×"]
            for scan, entry in report["ratios"].items()]
    return table(["scan", "2.1.2 ÷ ours", "2.1.2 call ÷ ours deface()", "pydeface-ants ÷ ours",
                  "ours without the atlas guard ÷ ours"], rows)


def one_off_table(res) -> str:
    ours, old = rows_by(res, "ours"), rows_by(res, "deepdefacer-2.1.2")
    rows = []
    for scan in dict.fromkeys(r["scan"] for r in res):
        o, d = ours.get(scan, {}), old.get(scan, {})
        rows.append([scan, f"{fmt(o.get('load_model_seconds'))} s", f"{fmt(o.get('first_deface_seconds'))} s",
                     f"{fmt(d.get('load_model_seconds'))} s",
                     ", ".join(f"{s:.1f}" for s in d.get("all_seconds", [])) or "–"])
    return table(["scan", "ours: load model", "ours: first deface() (graph tracing)", "2.1.2: model load per call",
                  "2.1.2: all calls (s)"], rows)


def markdown(report, template: Path = TEMPLATE) -> str:
    """benchmark.md: ``template``'s text with this report's numbers and tables filled in."""
    res = report["results"]
    ms = report["machine_state"]
    ours = rows_by(res, "ours")
    old = rows_by(res, "deepdefacer-2.1.2")
    pyd = rows_by(res, "pydeface-ants")
    any_ours = next(iter(ours.values()), {})
    versions_old = next((r.get("versions") for r in old.values() if r.get("versions")), {}) or {}
    versions_pyd = next((r.get("versions") for r in pyd.values() if r.get("versions")), {}) or {}
    ref = report["reference_scan"]
    command = report["command"].split()
    # The run's own arguments, after the script's name (``bench/bench_deface.py`` or ``-m bench.bench_deface``).
    arguments = command[command.index(next(a for a in command if a.endswith("bench_deface")
                                           or a.endswith("bench_deface.py"))) + 1:]
    values = {
        "date_utc": report["date_utc"], "finished_utc": report["finished_utc"],
        "total_minutes": report["total_minutes"], "commit": report["commit"],
        "cpu": report["machine"]["cpu"], "cores": report["machine"]["cores"],
        "memory_gb": report["machine"]["memory_gb"], "python": report["machine"]["python"],
        "arguments": "".join(" " + a for a in arguments),
        "scans_table": scans_table(res), "ratios_table": ratios_table(report), "one_off_table": one_off_table(res),
        "reference_name": ref["name"], "reference_how": ref["how"], "reference_labels": REFERENCE_LABELS[ref["labels"]],
        "model_file": Path(any_ours.get("model", "?")).name,
        "model_sha256": str(any_ours.get("model_sha256", "?"))[:12],
        "versions_2019": ", ".join(f"{k} {v}" for k, v in versions_old.items()),
        "versions_pydeface": ", ".join(f"{k} {v}" for k, v in versions_pyd.items()),
        "repeats_ours": any_ours.get("repeats", "?"), "repeats_2019": old.get(REFERENCE, {}).get("repeats", "?"),
        "repeats_pydeface": pyd.get(REFERENCE, {}).get("repeats", "?"),
        "load_before": ", ".join(f"{x:.2f}" for x in ms["before"]["loadavg"]),
        "load_after": ", ".join(f"{x:.2f}" for x in ms["after"]["loadavg"]),
        "training_before": "yes" if ms["before"]["training_running"] else "no",
        "training_after": "yes" if ms["after"]["training_running"] else "no",
        "notes": "".join(["\n## Notes\n\n", *[f"- {n}\n" for n in report["notes"]]]) if report.get("notes") else "",
    }
    for key, target in report["targets"].items():
        values[f"target_{key}"] = f"{target:g}"
    acceptance = report.get("acceptance", {})
    for key in ("deface_seconds", "predict_seconds", "peak_gb", "deface_seconds_network", "speedup_vs_2019",
                "speedup_vs_2019_network"):
        entry = acceptance.get(key)
        values[key] = "–" if entry is None else entry["value"]
        values[f"{key}_pass"] = "–" if entry is None else fmt(entry["pass"])
    return string.Template(template.read_text()).substitute(values).rstrip("\n") + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a .keras model with its card (.json) beside it (default: the shipped one)")
    parser.add_argument("--heads", nargs="*", default=DEFAULT_HEADS, help="names in ../shared/data/heads")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats for ours (median)")
    parser.add_argument("--repeats-2019", type=int, default=3, help="2.1.2 repeats on the reference scan")
    parser.add_argument("--repeats-pydeface", type=int, default=1, help="pydeface-ants repeats, reference scan")
    parser.add_argument("--labels", type=Path, default=ROOT / "labels")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs")
    parser.add_argument("--note", action="append", default=[], help="a line for the Notes section")
    parser.add_argument("--render-only", action="store_true", help="only write benchmark.md again, from the --out-dir's benchmark.json")
    # internal: the per-scan worker for our method
    parser.add_argument("--worker", choices=["ours"], help=argparse.SUPPRESS)
    parser.add_argument("--scan", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mask-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--atlas-guard", action=argparse.BooleanOptionalAction, default=True,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.worker == "ours":
        return worker_ours(args)
    if args.render_only:
        # Nothing is measured: benchmark.md is rendered again from the recorded numbers (the
        # figure shows only numbers, so it stays as it is).
        report = json.loads((args.out_dir / "benchmark.json").read_text())
        if args.note:
            report["notes"] = report.get("notes", []) + args.note
            (args.out_dir / "benchmark.json").write_text(json.dumps(report, indent=1) + "\n")
        (args.out_dir / "benchmark.md").write_text(markdown(report))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
