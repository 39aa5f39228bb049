"""Group level: one self-contained HTML report over every scan, plus JSON and TSV.

    run_group(output_dir, fail_on_flag=False) -> exit code

collects the `*_desc-qc_verdict.json` files that `participant.qc_scan` wrote
anywhere under output_dir, and writes output_dir/qc_report.html (images inlined
as base64, no scripts, no network), qc_summary.json and qc_summary.tsv.
"""

from __future__ import annotations

import base64
import html
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from deepdefacer.qc.participant import VERDICT_SUFFIX

REPORT_NAME = "qc_report.html"
SUMMARY_JSON = "qc_summary.json"
SUMMARY_TSV = "qc_summary.tsv"
EXIT_OK = 0
EXIT_FLAGGED = 1  # with fail_on_flag: at least one scan was flagged
TSV_COLUMNS = ("stem", "verdict", "face_present", "nose_length_mm", "removed_fraction", "removed_ml",
               "brain_removed_ml", "flags", "notes", "render", "slices", "source")


def collect_verdicts(output_dir) -> list[dict]:
    """Every per-scan verdict under output_dir, flagged scans first, then by name."""
    verdicts = []
    for path in sorted(Path(output_dir).rglob(f"*{VERDICT_SUFFIX}")):
        verdict = json.loads(path.read_text())
        verdict["_figures_dir"] = str(path.parent)
        verdicts.append(verdict)
    verdicts.sort(key=lambda v: (v.get("verdict") != "flag", v.get("stem", "")))
    return verdicts


def run_group(output_dir, fail_on_flag: bool = False) -> int:
    """Write the group report and summaries; return EXIT_FLAGGED when asked to gate."""
    output_dir = Path(output_dir)
    verdicts = collect_verdicts(output_dir)
    flagged = [v for v in verdicts if v.get("verdict") == "flag"]
    summary = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_scans": len(verdicts),
        "n_flagged": len(flagged),
        "n_pass": len(verdicts) - len(flagged),
        "n_face_present": sum(bool(v.get("face_after", {}).get("face_present")) for v in verdicts),
        "scans": [_public(v) for v in verdicts],
    }
    _write_atomic(output_dir / SUMMARY_JSON, json.dumps(summary, indent=2) + "\n")
    _write_atomic(output_dir / SUMMARY_TSV, _tsv(verdicts))
    _write_atomic(output_dir / REPORT_NAME, _html(summary, verdicts))
    return EXIT_FLAGGED if (fail_on_flag and flagged) else EXIT_OK


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


def _tsv(verdicts: list[dict]) -> str:
    def cell(value) -> str:
        text = "n/a" if value is None or value == "" else str(value)
        return text.replace("\t", " ").replace("\n", " ")

    lines = ["\t".join(TSV_COLUMNS)]
    for verdict in verdicts:
        row = _row(verdict)
        lines.append("\t".join(cell(row[column]) for column in TSV_COLUMNS))
    return "\n".join(lines) + "\n"


def _image_tag(figures_dir: str, name: str | None, alt: str) -> str:
    if not name:
        return ""
    path = Path(figures_dir) / name
    if not path.is_file():
        return f'<p class="missing">missing figure: {html.escape(name)}</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.4em;margin:0 0 .3em}
.summary{display:flex;gap:1em;margin:1em 0}
.summary div{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em 1em}
.summary b{display:block;font-size:1.6em}
table{border-collapse:collapse;background:#fff;margin:1em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;font-size:.9em}
.scan{background:#fff;border:1px solid #ddd;border-left:6px solid #2a2;border-radius:6px;margin:1em 0;padding:.8em 1em}
.scan.flag{border-left-color:#d22}
.badge{display:inline-block;padding:.1em .6em;border-radius:4px;color:#fff;background:#2a2;font-weight:bold}
.flag .badge{background:#d22}
.scan img{max-width:100%;display:block;margin:.4em 0;background:#000}
.reasons li{color:#a11}.notes li{color:#666}
.missing{color:#a11}
.caption{color:#666;font-size:.85em}
"""


def _html(summary: dict, verdicts: list[dict]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # An inline empty icon: the browser would otherwise request /favicon.ico.
        '<link rel="icon" href="data:,">',
        "<title>Deepdefacer QC report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Deepdefacer QC report</h1>",
        f'<p class="caption">Generated {html.escape(summary["generated"])}. Flagged scans first. '
        "Renders: before (front, side) then after (front, side); a red ring marks a face found after defacing. "
        "Slices: sagittal, coronal, axial of the original, removed region in red.</p>",
        '<div class="summary">',
        f'<div id="n-scans"><b>{summary["n_scans"]}</b>scans</div>',
        f'<div id="n-flagged"><b>{summary["n_flagged"]}</b>flagged</div>',
        f'<div id="n-face"><b>{summary["n_face_present"]}</b>with a face still present</div>',
        f'<div id="n-pass"><b>{summary["n_pass"]}</b>passed</div>',
        "</div>",
    ]
    if not verdicts:
        parts.append("<p>No QC results found (no *_desc-qc_verdict.json under the output folder).</p>")
    else:
        parts.append("<table><tr><th>scan</th><th>verdict</th><th>reasons</th></tr>")
        for verdict in verdicts:
            stem = html.escape(verdict.get("stem", ""))
            parts.append(f'<tr><td><a href="#{stem}">{stem}</a></td><td>{html.escape(verdict.get("verdict", ""))}'
                         f'</td><td>{html.escape("; ".join(verdict.get("flags", [])) or "-")}</td></tr>')
        parts.append("</table>")
    for verdict in verdicts:
        stem = verdict.get("stem", "")
        state = "flag" if verdict.get("verdict") == "flag" else "pass"
        figures = verdict.get("figures", {})
        parts.append(f'<section class="scan {state}" id="{html.escape(stem)}">')
        parts.append(f'<h2><span class="badge">{state.upper()}</span> {html.escape(stem)}</h2>')
        if verdict.get("source"):
            parts.append(f'<p class="caption">{html.escape(str(verdict["source"]))}</p>')
        if verdict.get("flags"):
            parts.append('<ul class="reasons">' + "".join(f"<li>{html.escape(f)}</li>" for f in verdict["flags"])
                         + "</ul>")
        else:
            parts.append(f'<p>{html.escape(verdict.get("face_after", {}).get("reason", ""))}</p>')
        if verdict.get("notes"):
            parts.append('<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in verdict["notes"])
                         + "</ul>")
        mask = verdict.get("mask", {})
        parts.append(f'<p class="caption">removed {_ml(mask.get("removed_ml"))} '
                     f'({100 * float(mask.get("removed_fraction") or 0):.1f}% of the head); '
                     f'removed in the brain zone: {_ml(mask.get("brain_removed_ml"))}</p>')
        parts.append(_image_tag(verdict["_figures_dir"], figures.get("render"), f"{stem} surface renders"))
        parts.append(_image_tag(verdict["_figures_dir"], figures.get("slices"), f"{stem} slices with mask"))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename: a killed run leaves no half-written report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp's 0600 would hide the report from the group
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _ml(value) -> str:
    return "n/a" if value is None else f"{value} ml"
