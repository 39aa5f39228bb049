"""Group level: one self-contained HTML report over every scan, plus JSON and TSV.

    write_report(output_dir, expected, report_dir) -> GroupReport
    run_group(output_dir, fail_on_flag=False) -> exit code

The scans the report covers are those the group level selected from the input dataset
(`expected_scans`): each needs its outputs and the `*_desc-qc_verdict.json` that
`participant.qc_scan` wrote, and a scan without them is listed as incomplete, so an
interrupted participant level cannot pass for a complete one. Without `expected` (a library
call), every verdict under output_dir is collected. The report (images inlined as base64, no
scripts, no network), qc_summary.json and qc_summary.tsv go to report_dir (output_dir by
default).

The summary also says which identifying keys (deepdefacer.bids.deidentify.DEFAULT_KEYS) remain in
the JSON sidecars of the dataset that would be shared: the upload-ready copy itself, or, for
Deepdefacer's derivatives, the raw dataset they were made from; a warning line names them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from deepdefacer.files import atomic_output, split_extension
from deepdefacer.messages import REPORT_FLAGGED as EXIT_FLAGGED
from deepdefacer.messages import REPORT_INCOMPLETE as EXIT_INCOMPLETE
from deepdefacer.messages import REPORT_OK as EXIT_OK
from deepdefacer.qc.participant import VERDICT_SUFFIX
from deepdefacer.qc.report_html import render_html

REPORT_NAME = "qc_report.html"
SUMMARY_JSON = "qc_summary.json"
SUMMARY_TSV = "qc_summary.tsv"
TSV_COLUMNS = ("stem", "verdict", "face_present", "nose_length_mm", "removed_fraction", "removed_ml",
               "brain_removed_ml", "flags", "notes", "render", "slices", "source")
INCOMPLETE = "incomplete"

log = logging.getLogger("deepdefacer")


@dataclass(frozen=True)
class ExpectedScan:
    """What the participant level leaves for one selected scan."""

    source: str              # the scan's path in the input dataset
    stem: str                # its file name without extension, as the verdict records it
    outputs: tuple           # files that must exist (defaced image, sidecar, mask ...)
    verdict: Path | None     # the QC verdict; None where the layout has no per-scan QC


@dataclass
class GroupReport:
    verdicts: list = field(default_factory=list)     # verdict dicts, flagged first
    incomplete: list = field(default_factory=list)   # (scan or file, reason)
    unchecked: list = field(default_factory=list)    # complete scans of a layout without QC
    report_dir: Path | None = None
    identifying_metadata: dict = field(default_factory=dict)  # identifying_metadata()

    @property
    def flagged(self) -> list:
        return [v for v in self.verdicts if v.get("verdict") == "flag"]

    @property
    def report_path(self) -> Path:
        return Path(self.report_dir) / REPORT_NAME


def is_deepdefacer_derivatives(output_dir) -> bool:
    """Whether output_dir is a derivatives dataset of Deepdefacer, the one place the report may
    go: anywhere else (an upload-ready --layout bids copy) it would make the dataset invalid."""
    try:
        description = json.loads((Path(output_dir) / "dataset_description.json")
                                 .read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(description, dict) or description.get("DatasetType") != "derivative":
        return False
    generated_by = description.get("GeneratedBy")
    from deepdefacer.bids.outputs import SOFTWARE_NAME

    return isinstance(generated_by, list) and any(
        isinstance(entry, dict) and entry.get("Name") == SOFTWARE_NAME for entry in generated_by)


def expected_scans(scans, output_dir, derivatives: bool) -> list[ExpectedScan]:
    """The outputs (by the participant level's own naming) and verdict of each selected scan.

    derivatives: the derivatives layout, with a verdict per scan in sub-<label>/figures/; else
    the --layout bids copy, which has the defaced image under the source's name and no QC.
    """
    from deepdefacer.bids import jobs, outputs

    output_dir = Path(output_dir)
    layout = "derivatives" if derivatives else "bids"
    expected = []
    for job in jobs.plan_jobs(scans):
        for group_output in outputs.plan_outputs(job, output_dir, layout):
            for scan_output in group_output.scans:
                scan = scan_output.scan
                stem = split_extension(scan.path)[0]
                files = (scan_output.image, scan_output.sidecar, group_output.mask,
                         group_output.mask_sidecar)
                verdict = (output_dir / scan.relpath.split("/")[0] / "figures"
                           / f"{stem}{VERDICT_SUFFIX}") if derivatives else None
                expected.append(ExpectedScan(scan.relpath, stem,
                                             tuple(f for f in files if f is not None), verdict))
    return sorted(expected, key=lambda scan: scan.source)


def collect_verdicts(output_dir) -> list[dict]:
    """Every readable per-scan verdict under output_dir, flagged scans first, then by name."""
    return _gather(output_dir, None).verdicts


def _gather(output_dir, expected) -> GroupReport:
    output_dir = Path(output_dir)
    result = GroupReport()
    if expected is None:
        for path in sorted(output_dir.rglob(f"*{VERDICT_SUFFIX}")):
            if not path.name.startswith("."):  # another run's temporary
                _add_verdict(result, path, path.relative_to(output_dir).as_posix(), output_dir)
    else:
        for scan in expected:
            missing = [path for path in scan.outputs if not Path(path).is_file()]
            if missing:
                result.incomplete.append((scan.source, "missing output(s): " + ", ".join(
                    _relative(path, output_dir) for path in missing)))
            elif scan.verdict is None:
                result.unchecked.append(scan.source)
            elif not scan.verdict.is_file():
                result.incomplete.append((scan.source, f"no QC verdict "
                                          f"{_relative(scan.verdict, output_dir)} (the QC was "
                                          "interrupted, failed, or skipped with --skip-qc)"))
            else:
                _add_verdict(result, scan.verdict, scan.source, output_dir)
    result.verdicts.sort(key=lambda v: (v.get("verdict") != "flag", v.get("stem", "")))
    return result


def _add_verdict(result: GroupReport, path: Path, label: str, output_dir: Path) -> None:
    try:
        verdict = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(verdict, dict):
            raise ValueError(f"a JSON {type(verdict).__name__}, not an object")
        if verdict.get("verdict") not in ("pass", "flag"):
            raise ValueError(f"no pass or flag verdict (verdict: {verdict.get('verdict')!r})")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result.incomplete.append((label, f"unreadable QC verdict {_relative(path, output_dir)} "
                                         f"({type(exc).__name__}: {text})"))
        return
    verdict["_figures_dir"] = str(path.parent)
    result.verdicts.append(verdict)


def _relative(path, folder: Path) -> str:
    try:
        return Path(path).relative_to(folder).as_posix()
    except ValueError:
        return str(path)


def identifying_metadata(output_dir, sidecar_dir=None) -> dict:
    """Which identifying keys remain in the sidecars of ``sidecar_dir`` (default: output_dir, or
    for Deepdefacer's derivatives the raw dataset of their DatasetLinks, when it is a folder
    here): deidentify.identifying_keys_in's counts, plus the dataset read."""
    from deepdefacer.bids.deidentify import identifying_keys_in

    folder = Path(sidecar_dir) if sidecar_dir is not None else _shared_dataset(Path(output_dir))
    return {"dataset": str(folder), **identifying_keys_in(folder)}


def _shared_dataset(output_dir: Path) -> Path:
    if not is_deepdefacer_derivatives(output_dir):
        return output_dir
    try:
        from urllib.parse import unquote, urlparse

        description = json.loads((output_dir / "dataset_description.json").read_text("utf-8"))
        link = urlparse(description["DatasetLinks"]["raw"])
        raw = Path(unquote(link.path))
        return raw if link.scheme == "file" and raw.is_dir() else output_dir
    except (OSError, KeyError, TypeError, ValueError):
        return output_dir


def identifying_metadata_warning(found: dict) -> str | None:
    """One line naming the identifying keys left, or None when there are none."""
    keys = found.get("keys") or {}
    if not keys:
        return None
    return (f"identifying metadata left in the sidecars of {found.get('dataset')}: "
            + ", ".join(f"{key} ({count})" for key, count in keys.items())
            + " (--layout bids --deidentify-metadata removes them from an upload-ready copy)")


def write_report(output_dir, expected=None, report_dir=None, sidecar_dir=None) -> GroupReport:
    """Write the report and summaries of the expected scans (see the module docstring);
    ``sidecar_dir``: the dataset whose sidecars are checked for identifying keys."""
    output_dir = Path(output_dir)
    result = _gather(output_dir, expected)
    result.report_dir = Path(report_dir) if report_dir is not None else output_dir
    result.identifying_metadata = identifying_metadata(output_dir, sidecar_dir)
    warning = identifying_metadata_warning(result.identifying_metadata)
    if warning:
        log.warning(warning)
    flagged = result.flagged
    summary = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_scans": len(result.verdicts) + len(result.incomplete) + len(result.unchecked),
        "n_flagged": len(flagged),
        "n_pass": len(result.verdicts) - len(flagged),
        "n_incomplete": len(result.incomplete),
        "n_without_qc": len(result.unchecked),
        "n_face_present": sum(bool(v.get("face_after", {}).get("face_present"))
                              for v in result.verdicts),
        "incomplete": [{"source": source, "reason": reason}
                       for source, reason in result.incomplete],
        "without_qc": list(result.unchecked),
        "scans": [_public(v) for v in result.verdicts],
        "identifying_metadata": result.identifying_metadata,
    }
    _write_atomic(result.report_dir / SUMMARY_JSON, json.dumps(summary, indent=2) + "\n")
    _write_atomic(result.report_dir / SUMMARY_TSV, _tsv(result))
    _write_atomic(result.report_path, render_html(summary, result))
    return result


def run_group(output_dir, fail_on_flag: bool = False, expected=None, report_dir=None) -> int:
    """Write the group report and summaries; EXIT_INCOMPLETE when a scan lacks its QC, or
    EXIT_FLAGGED when asked to gate on flags."""
    result = write_report(output_dir, expected, report_dir)
    if result.incomplete:
        return EXIT_INCOMPLETE
    return EXIT_FLAGGED if (fail_on_flag and result.flagged) else EXIT_OK


def _public(verdict: dict) -> dict:
    return {k: v for k, v in verdict.items() if not k.startswith("_")}


def _row(verdict: dict) -> dict:
    mask = verdict.get("mask", {})
    figures = verdict.get("figures", {})
    return {
        "stem": verdict.get("stem", ""),
        "verdict": verdict.get("verdict", ""),
        "face_present": verdict.get("face_after", {}).get("face_present", ""),
        "nose_length_mm": verdict.get("face_after", {}).get("nose_length_mm", ""),
        "removed_fraction": mask.get("removed_fraction", ""),
        "removed_ml": mask.get("removed_ml", ""),
        "brain_removed_ml": mask.get("brain_removed_ml", ""),
        "flags": "; ".join(verdict.get("flags", [])),
        "notes": "; ".join(verdict.get("notes", [])),
        "render": figures.get("render", ""),
        "slices": figures.get("slices", ""),
        "source": verdict.get("source") or "",
    }


def _tsv(result: GroupReport) -> str:
    def cell(value) -> str:
        text = "n/a" if value is None or value == "" else str(value)
        return text.replace("\t", " ").replace("\n", " ")

    rows = [{"stem": split_extension(source)[0].rpartition("/")[2], "verdict": INCOMPLETE,
             "notes": reason, "source": source} for source, reason in result.incomplete]
    rows += [_row(verdict) for verdict in result.verdicts]
    rows += [{"stem": split_extension(source)[0].rpartition("/")[2], "verdict": "n/a",
              "notes": "no per-scan QC in this layout", "source": source}
             for source in result.unchecked]
    lines = ["\t".join(TSV_COLUMNS)]
    for row in rows:
        lines.append("\t".join(cell(row.get(column)) for column in TSV_COLUMNS))
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    """A killed run leaves no half-written report, only a hidden temporary."""
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
