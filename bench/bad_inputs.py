"""Peak memory and time of `deepdeface` on every case of the bad-input corpus.

    .venv/bin/python -m bench.bad_inputs [--repeats 3] [--cases LABEL ...] [--json OUT] [--md]

The corpus is tests/bad_inputs.py's (each case made from a real head in ../shared/data). Every
run is `deepdeface CASE -o OUT --device cpu` in a fresh process, so each peak includes Python,
TensorFlow and, for the files that get that far, the model: what a user's process costs, not
a difference from a warm one. The peak is the child's own maximum resident set size
(os.wait4's ru_maxrss), the time its wall clock; each is the median of ``--repeats`` runs,
which go round the corpus in turn so that a busy moment of the machine is shared out. The goal
is that no input, however hostile its header, makes the process peak over 2 GiB.

Writes docs/bad_inputs.json (the table, every run, the machine) and prints the table;
``--md`` prints it as the Markdown of docs/reliability.md. Exit 1 if a case peaks over the goal
or a case's outcome differs from the corpus's expectation.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_deface import machine_info as machine_description
from tests.bad_inputs import DEFACED, FAILED, SHARED_DATA, build_corpus, cases

ROOT = Path(__file__).resolve().parents[1]


def machine_info() -> dict:
    """The benchmark machine, as bench_deface describes it, and who ran this (root reads a
    mode-000 file)."""
    info = machine_description()
    info.pop("gpu", None)
    return {**info, "euid": os.geteuid(), "loadavg_at_start": os.getloadavg()}

GOAL_MIB = 2048


def run_once(case, output: Path, work: Path) -> dict:
    """One `deepdeface` in a fresh process: exit code, peak MiB, seconds, what it said."""
    output.unlink(missing_ok=True)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "deepdefacer.cli.deface_one", str(case.path), "-o",
               str(output), "--device", "cpu"]
    # Output goes to files, not pipes: communicate() would reap the child before wait4 could.
    with open(work / "stdout", "w+") as out, open(work / "stderr", "w+") as err:
        start = time.monotonic()
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.monotonic() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    return {"exit": child.returncode, "peak_mib": usage.ru_maxrss / 1024, "seconds": seconds,
            "message": message(case, output, stdout, stderr), "written": output.exists()}


def message(case, output: Path, stdout: str, stderr: str) -> str:
    """What deepdeface told the user about this file, without the path."""
    # A defaced file's line is on stdout; warnings on the way (implausible voxel sizes) are not
    # the outcome.
    for text, path in ((stdout, output), (stderr, case.path)):
        found = re.findall(rf"^(?:deepdeface: )?{re.escape(str(path))}: (.+)$", text, re.MULTILINE)
        if found:  # the seconds that end the defaced line vary from run to run
            return re.sub(r" \(\d+(\.\d+)? s\)$", "", found[0])
    lines = [line for line in stderr.splitlines() if line.startswith("deepdeface")]
    return lines[-1] if lines else (stderr.strip().splitlines() or ["(nothing)"])[-1]


def outcome(run: dict) -> str:
    if run["exit"] == 0 and run["written"]:
        return DEFACED
    return FAILED if run["exit"] == 1 and not run["written"] else f"exit {run['exit']}"


def summarise(case, runs: list) -> dict:
    outcomes = {outcome(run) for run in runs}
    got = outcomes.pop() if len(outcomes) == 1 else "varies: " + ", ".join(sorted(outcomes))
    expected_ok = got == case.outcome and (
        case.outcome == DEFACED or all(re.match(case.reason, run["message"]) for run in runs))
    return {
        "case": case.label, "description": case.description, "expected": case.outcome,
        "expected_reason": case.reason, "outcome": got, "as_expected": expected_ok,
        "message": runs[0]["message"],
        "peak_mib": round(statistics.median(run["peak_mib"] for run in runs), 1),
        "seconds": round(statistics.median(run["seconds"] for run in runs), 2),
        "runs": [{key: (round(value, 2) if isinstance(value, float) else value)
                  for key, value in run.items() if key != "message"} for run in runs],
    }


def markdown(rows: list) -> str:
    lines = ["| case | input | outcome | message | peak memory (MiB) | time (s) |",
             "|---|---|---|---|---:|---:|"]
    for row in rows:
        text = row["message"].replace("|", "\\|")
        lines.append(f"| `{row['case']}` | {row['description']} | {row['outcome']} | {text} | "
                     f"{row['peak_mib']:.0f} | {row['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs a case (median)")
    parser.add_argument("--cases", nargs="+", metavar="LABEL", help="only these cases")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "bad_inputs.json")
    parser.add_argument("--md", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    if not SHARED_DATA.is_dir():
        print(f"the corpus is made from {SHARED_DATA}, which is absent", file=sys.stderr)
        return 2
    known = {case.label for case in cases()}
    if args.cases and set(args.cases) - known:
        parser.error(f"unknown case(s) {sorted(set(args.cases) - known)}; known: {sorted(known)}")

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_bad_inputs_") as folder:
        work = Path(folder)
        corpus = build_corpus(work / "ds", selected=args.cases)
        (work / "out").mkdir()
        runs = {case.label: [] for case in corpus}
        for repeat in range(args.repeats):
            for case in corpus:
                run = run_once(case, work / "out" / f"{case.label}.nii.gz", work)
                runs[case.label].append(run)
                print(f"[{repeat + 1}/{args.repeats}] {case.label:14s} exit {run['exit']} "
                      f"{run['peak_mib']:7.0f} MiB {run['seconds']:6.1f} s", file=sys.stderr,
                      flush=True)
        rows = [summarise(case, runs[case.label]) for case in corpus]

    print(markdown(rows) if args.md else "\n".join(
        f"{row['case']:14s} {row['outcome']:8s} {row['peak_mib']:7.0f} MiB {row['seconds']:6.1f} s"
        f"  {row['message']}" for row in rows))
    over = [row["case"] for row in rows if row["peak_mib"] > GOAL_MIB]
    unexpected = [row["case"] for row in rows if not row["as_expected"]]
    worst = max(rows, key=lambda row: row["peak_mib"])
    print(f"\nhighest peak: {worst['case']} {worst['peak_mib']:.0f} MiB (goal: under {GOAL_MIB} "
          f"MiB); over the goal: {over or 'none'}; not as the corpus expects: "
          f"{unexpected or 'none'}")
    report = {
        "command": "python -m bench.bad_inputs " + " ".join(argv if argv is not None
                                                             else sys.argv[1:]),
        "what": "deepdeface CASE -o OUT --device cpu, one fresh process a run; peak = the "
                "child's ru_maxrss (os.wait4), median of the repeats",
        "utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_info(), "repeats": args.repeats, "goal_mib": GOAL_MIB,
        "total_minutes": round((time.monotonic() - started) / 60, 1),
        "over_goal": over, "not_as_expected": unexpected, "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 1 if over or unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
