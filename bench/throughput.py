"""Throughput as a user runs it: ``deepdefacer BIDS OUT participant``, then ``group``, on this machine.

Two datasets made from the IXI heads in ``../shared/data/ixi`` (T1w, 2 mm, uint8):

* **2 mm**: ``--scans-2mm`` heads as they are (120x120x90);
* **1 mm oblique**: ``--scans-1mm`` of them resampled to 1 mm int16 (240x240x180) on a grid turned
  by 6 degrees about the left-right axis, as a typical MPRAGE is stored.

Each dataset is defaced ``--repeats`` times from scratch by the command line a user types (a fresh
process each time, the model loaded once per run), then reported by ``group``, then the finished
dataset is run again (nothing to do). Reported: seconds a scan all in (wall time of the run / scans;
median over the repeats), the median of the per-scan times the run prints, the start-up (wall time
minus the scans' times), the group level, the finished rerun, and the time projected for 500 such
scans (start-up + 500 x the all-in time without start-up). In the same run DeepDefacer 2.1.2 (2019,
PyPI; ``bench/baselines/deepdefacer2019_runner.py`` in its own venv) defaces ``--baseline-scans`` of
the 1 mm scans, once each as its command does (model loaded per scan): the ratio is its median
seconds a scan over our steady seconds a scan (start-up apart, as a 500-scan run spends it), and
over our all-in seconds a scan of the measured run.

    .venv/bin/python -m bench.throughput [--scans-2mm 60] [--scans-1mm 40] [--repeats 3] \\
        [--baseline-scans 5] [--json docs/throughput.json] [--markdown docs/throughput.md]
    .venv/bin/python -m bench.throughput --render-only --json docs/throughput.json --markdown docs/throughput.md

Nothing else should run on the machine meanwhile (it measures wall time on all cores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from bench.bench_deface import clean_env, ensure_venv_2019, git_commit, machine_info, run_measured

REPOSITORY = Path(__file__).resolve().parents[1]
IXI = REPOSITORY.parent / "shared" / "data" / "ixi"
DEEPDEFACER = Path(sys.executable).parent / "deepdefacer"
RUNNER_2019 = REPOSITORY / "bench" / "baselines" / "deepdefacer2019_runner.py"
OBLIQUE_DEGREES = 6.0
SHAPE_1MM = (240, 240, 180)
GOAL_SECONDS_1MM = 2.4  # 500 scans in 20 min
GOAL_RATIO_2019 = 12.0
SCAN_LINE = re.compile(r"^\[\d+/\d+\] defaced .*\((?P<seconds>[\d.]+) s")
FAILED_LINE = re.compile(r"^\[\d+/\d+\] FAILED (?P<scan>\S+): (?P<reason>.*)")
EXIT_SCANS_FAILED = 1  # some scan failed (listed); the others are done


def ixi_heads(count: int) -> list[Path]:
    heads = sorted(IXI.glob("IXI*_T1.nii.gz"))
    if len(heads) < count:
        raise SystemExit(f"throughput.py: {count} IXI heads asked for, {len(heads)} in {IXI}")
    return heads[:count]


def oblique_1mm(path: Path) -> nib.Nifti1Image:
    """The head resampled (trilinear) to a 1 mm int16 grid turned by OBLIQUE_DEGREES, centred on it."""
    source = nib.load(path)
    data = np.asanyarray(source.dataobj).astype(np.float32)
    angle = np.deg2rad(OBLIQUE_DEGREES)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    centre_world = source.affine[:3, :3] @ ((np.array(data.shape) - 1) / 2) + source.affine[:3, 3]
    target = np.eye(4)
    target[:3, :3] = rotation  # RAS axes, 1 mm, turned about left-right
    target[:3, 3] = centre_world - rotation @ ((np.array(SHAPE_1MM) - 1) / 2)
    target_to_source = np.linalg.inv(source.affine) @ target
    values = ndimage.affine_transform(data, target_to_source[:3, :3], target_to_source[:3, 3],
                                      output_shape=SHAPE_1MM, order=1, mode="constant", cval=0.0)
    scaled = np.round(values * (1000.0 / max(float(data.max()), 1.0))).astype(np.int16)
    image = nib.Nifti1Image(scaled, target)
    image.set_qform(target, code=1)
    image.set_sform(target, code=1)
    return image


def make_dataset(root: Path, heads: list[Path], one_mm: bool) -> Path:
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": f"IXI T1w, {'1 mm oblique' if one_mm else '2 mm'} (throughput benchmark)",
         "BIDSVersion": "1.9.0", "License": "CC BY-SA 3.0"}, indent=2))
    (root / "participants.tsv").write_text("participant_id\n" + "".join(
        f"sub-{number:03d}\n" for number in range(1, len(heads) + 1)))
    for number, head in enumerate(heads, start=1):
        anat = root / f"sub-{number:03d}" / "anat"
        anat.mkdir(parents=True)
        target = anat / f"sub-{number:03d}_T1w.nii.gz"
        if one_mm:
            nib.save(oblique_1mm(head), target)
        else:
            shutil.copyfile(head, target)
        (anat / f"sub-{number:03d}_T1w.json").write_text('{"MagneticFieldStrength": 3}\n')
    return root


def run_app(arguments: list[str], log: Path, scans_failed: bool = False) -> dict:
    """Run the app; its wall time, peak RSS (the largest of its processes), and for each scan line
    the scan's own seconds and when the line came (seconds from the start)."""
    start = time.perf_counter()
    lines = []
    with open(log, "w") as stream:
        process = subprocess.Popen([str(DEEPDEFACER), *arguments], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env=clean_env())
        for line in process.stdout:
            lines.append((time.perf_counter() - start, line))
            stream.write(line)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    returncode = os.waitstatus_to_exitcode(status)
    failed = [(m.group("scan"), m.group("reason")) for m in (FAILED_LINE.match(line) for _, line in lines) if m]
    if returncode != 0 and not (returncode == EXIT_SCANS_FAILED and (failed or scans_failed)):
        raise SystemExit(f"throughput.py: deepdefacer {' '.join(arguments)} exited with "
                         f"{returncode} (log: {log})")
    scans = [(at, float(match.group("seconds"))) for at, match in
             ((at, SCAN_LINE.match(line)) for at, line in lines) if match]
    return {"wall_seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "log": str(log), "failed": failed,
            "scan_seconds": [seconds for _, seconds in scans], "scan_at": [at for at, _ in scans]}


def measure_dataset(name: str, dataset: Path, work: Path, repeats: int, extra: list[str], log) -> dict:
    scans = len(list(dataset.glob("sub-*/anat/*_T1w.nii.gz")))
    runs, failures = [], []
    for repeat in range(repeats):
        out = work / f"out-{name}-{repeat}"
        shutil.rmtree(out, ignore_errors=True)
        participant = run_app([str(dataset), str(out), "participant", *extra],
                              work / f"{name}-{repeat}-participant.log")
        if len(participant["scan_seconds"]) + len(participant["failed"]) != scans:
            raise SystemExit(f"throughput.py: {len(participant['scan_seconds'])} of {scans} scans "
                             f"defaced in {name} (log: {participant['log']})")
        for scan, reason in participant["failed"]:
            log(f"{name}: {scan} failed (counted in the times): {reason}")
        # A failed scan has no outputs: the group level then exits 1 too (it reports the others).
        failed_here = bool(participant["failed"])
        group = run_app([str(dataset), str(out), "group"], work / f"{name}-{repeat}-group.log", failed_here)
        rerun = run_app([str(dataset), str(out), "participant", *extra], work / f"{name}-{repeat}-rerun.log",
                        failed_here)
        failures.append(set(participant["failed"]))
        wall = participant["wall_seconds"]
        # Steady state: from the first scan's line to the end, a scan every `rate` seconds. The
        # start-up is what came before the first scan began: validation, the dataset's index,
        # TensorFlow and the model (first line's time less one steady-state scan).
        first = participant["scan_at"][0]
        rate = (wall - first) / (scans - 1)
        startup = max(first - statistics.median(participant["scan_seconds"]), 0.0)
        runs.append({"wall_seconds": wall, "all_in_seconds_a_scan": wall / scans,
                     "steady_seconds_a_scan": rate,
                     "median_scan_seconds": statistics.median(participant["scan_seconds"]),
                     "startup_seconds": startup, "group_seconds": group["wall_seconds"],
                     "rerun_seconds": rerun["wall_seconds"], "peak_rss_mb": participant["peak_rss_mb"],
                     "failed": len(participant["failed"]),
                     "projected_500_minutes": (first + 499 * rate) / 60})
        log(f"{name} run {repeat + 1}/{repeats}: {wall:.1f} s for {scans} scans, "
            f"{wall / scans:.2f} s a scan all in ({rate:.2f} s steady), start-up {startup:.1f} s, "
            f"group {group['wall_seconds']:.1f} s, rerun {rerun['wall_seconds']:.1f} s")
    summary = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return {"scans": scans, "arguments": extra, "runs": runs, "median": summary,
            "failed_scans": sorted({scan for scan, _ in set.intersection(*failures)}),
            "failure_reasons": sorted({reason for _, reason in set.intersection(*failures)})}


def measure_2019(heads: list[Path], work: Path, log) -> dict:
    python = ensure_venv_2019(log)
    seconds = []
    for number, head in enumerate(heads):
        folder = work / f"deepdefacer-2019-{number}"
        folder.mkdir()
        result = folder / "result.json"
        measured = run_measured([str(python), str(RUNNER_2019), "--scan", str(head), "--repeats", "1",
                                 "--work", str(folder), "--json", str(result)],
                                folder / "log.txt", timeout_s=1800, env=clean_env())
        if measured["returncode"] != 0:
            raise SystemExit(f"throughput.py: DeepDefacer 2.1.2 failed on {head} (log {folder / 'log.txt'})")
        seconds.append(measured["wall_seconds"])
        log(f"DeepDefacer 2.1.2 on {head.name}: {measured['wall_seconds']:.1f} s")
    return {"scans": len(heads), "seconds_a_scan": seconds, "median_seconds_a_scan": statistics.median(seconds)}


MARKDOWN = """# Throughput on one machine

Measured by `bench/throughput.py` ({command}) at commit `{commit}` on {cpu}, {cores} cores,
{memory_gb} GiB, no GPU. Each dataset is defaced {repeats} times from scratch by
`deepdefacer BIDS OUT participant{extra}` (a fresh process, the model loaded once per run), then
reported by `deepdefacer BIDS OUT group`, then run again when finished. Medians over the
{repeats} runs. *All in*: the run's wall time over its scans. *Steady*: the time between scans
once the first is done. *One scan in its process*: what each scan line reports (processes run side
by side). *Start-up*: before the first scan began (validation, the index, TensorFlow and the model).
*500 scans, projected*: the first scan's time plus 499 steady ones.

| dataset | scans | all in, a scan | steady, a scan | one scan in its process | start-up | 500 scans, projected | group | finished rerun |
|---|---|---|---|---|---|---|---|---|
{rows}

{compare}DeepDefacer 2.1.2 (2019), in the same run, on {baseline_scans} of the 1 mm oblique scans as its
command runs them (its start-up, a TensorFlow import and a model load, comes with every scan):
**{baseline:.1f} s a scan** (median), **{ratio:.1f}x** our steady time a 1 mm scan, the time each
further scan of a dataset costs (goal: {goal_ratio:g}x); {ratio_all_in:.1f}x our all-in time over
these {scans_1mm} scans, start-up included. Goal for 1 mm: 500 scans in 20 min, {goal_seconds:g} s a
scan all in: {verdict}.

{failures}The 1 mm scans are IXI T1w heads resampled to 1 mm int16 (240x240x180) on a grid turned by
{oblique:g} degrees about the left-right axis; the 2 mm scans are the IXI heads as they are
(120x120x90, uint8).
"""


def render(result: dict) -> str:
    rows = []
    labels = [("1mm", "1 mm oblique, int16"), ("1mm-compare", "1 mm oblique, int16, `{compare}`"),
              ("2mm", "2 mm, uint8")]
    for name, label in labels:
        if name not in result["datasets"]:
            continue
        entry = result["datasets"][name]
        label = label.format(compare=" ".join(entry["arguments"][len(result["arguments"]):]))
        m = entry["median"]
        rows.append(f"| {label} | {entry['scans']} | {m['all_in_seconds_a_scan']:.2f} s | "
                    f"{m['steady_seconds_a_scan']:.2f} s | {m['median_scan_seconds']:.2f} s | {m['startup_seconds']:.1f} s | "
                    f"{m['projected_500_minutes']:.1f} min | {m['group_seconds']:.1f} s | "
                    f"{m['rerun_seconds']:.1f} s |")
    one_mm = result["datasets"].get("1mm", {}).get("median", {})
    seconds = one_mm.get("all_in_seconds_a_scan", float("nan"))
    baseline = result.get("deepdefacer_2019", {}).get("median_seconds_a_scan", float("nan"))
    met = seconds <= GOAL_SECONDS_1MM
    verdict = (f"{'met' if met else 'not met'} ({seconds:.2f} s a scan, "
               f"{one_mm.get('projected_500_minutes', float('nan')):.1f} min projected)")
    extra = "".join(" " + argument for argument in result["arguments"])
    compare = result["datasets"].get("1mm-compare", {}).get("median", {})
    compare_text = (f"The default (a process a CPU) against `{' '.join(result['datasets']['1mm-compare']['arguments'])}`"
                    f" on the 1 mm scans: {compare['all_in_seconds_a_scan'] / seconds:.2f}x the scans a "
                    f"minute.\n\n" if compare else "")
    failures = "".join(
        f"In the {name} dataset {len(entry['failed_scans'])} scan(s) failed the face check in every "
        f"run ({', '.join(entry['failed_scans'])}: {'; '.join(entry['failure_reasons'])}); they are "
        f"counted in the times, as a user's run spends them (the finished rerun tries them again).\n\n"
        for name, entry in result["datasets"].items() if entry.get("failed_scans"))
    return MARKDOWN.format(failures=failures, compare=compare_text, command=result["command"], commit=result["commit"], repeats=result["repeats"],
                           extra=extra, rows="\n".join(rows), baseline_scans=result.get(
                               "deepdefacer_2019", {}).get("scans", 0), baseline=baseline,
                           ratio=baseline / one_mm.get("steady_seconds_a_scan", float("nan")),
                           ratio_all_in=baseline / seconds,
                           scans_1mm=result["datasets"].get("1mm", {}).get("scans", 0),
                           goal_ratio=GOAL_RATIO_2019,
                           goal_seconds=GOAL_SECONDS_1MM, verdict=verdict, oblique=OBLIQUE_DEGREES,
                           **result["machine"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans-2mm", type=int, default=60)
    parser.add_argument("--scans-1mm", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-scans", type=int, default=5, help="1 mm scans for DeepDefacer 2.1.2 (0: none)")
    parser.add_argument("--app-args", default="", help="extra arguments for the participant level")
    parser.add_argument("--compare-args", default="--n-procs 1",
                        help="a second setting measured on the 1 mm dataset, for the ratio (empty: none)")
    parser.add_argument("--work", type=Path, help="keep the datasets and outputs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--render-only", action="store_true",
                        help="write --markdown from an earlier --json, measuring nothing")
    args = parser.parse_args(argv)
    if args.render_only:
        text = render(json.loads(args.json.read_text()))
        if args.markdown:
            args.markdown.write_text(text)
        print(text)
        return 0
    extra = args.app_args.split()

    def log(message):
        print(f"throughput.py: {message}", flush=True)

    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        datasets = {}
        started = time.perf_counter()
        for name, count, one_mm in (("1mm", args.scans_1mm, True), ("2mm", args.scans_2mm, False)):
            if count:
                dataset = work / f"ds-{name}"
                if not dataset.exists():
                    make_dataset(dataset, ixi_heads(count), one_mm)
                datasets[name] = measure_dataset(name, dataset, work, args.repeats, extra, log)
                if one_mm and args.compare_args.split():
                    datasets["1mm-compare"] = measure_dataset("1mm-compare", dataset, work, args.repeats,
                                                              extra + args.compare_args.split(), log)
        result = {"command": " ".join(["python -m bench.throughput", *(argv or sys.argv[1:])]),
                  "commit": git_commit(), "machine": machine_info(), "repeats": args.repeats,
                  "arguments": extra, "datasets": datasets}
        if args.baseline_scans and args.scans_1mm:
            heads = sorted((work / "ds-1mm").glob("sub-*/anat/*_T1w.nii.gz"))[:args.baseline_scans]
            result["deepdefacer_2019"] = measure_2019(heads, work, log)
        result["benchmark_seconds"] = time.perf_counter() - started
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    text = render(result)
    if args.markdown:
        args.markdown.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
