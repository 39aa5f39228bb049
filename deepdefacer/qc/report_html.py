"""The group report's HTML: one self-contained page (images inlined as base64, no scripts, no
network), so it can be opened from a cluster's file system or attached to a ticket."""

from __future__ import annotations

import base64
import html
from pathlib import Path

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


def render_html(summary: dict, result) -> str:
    verdicts = result.verdicts
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
        f'<div id="n-incomplete"><b>{summary["n_incomplete"]}</b>incomplete</div>',
        "</div>",
    ]
    if result.incomplete:
        parts.append('<section class="scan flag" id="incomplete"><h2><span class="badge">INCOMPLETE'
                     '</span> scans without their outputs or QC verdict</h2><ul class="reasons">')
        parts += [f"<li>{html.escape(source)}: {html.escape(reason)}</li>"
                  for source, reason in result.incomplete]
        parts.append("</ul><p>Run the participant level again for these scans.</p></section>")
    if result.unchecked:
        parts.append(f"<p>{len(result.unchecked)} scan(s) defaced without per-scan QC (an "
                     "upload-ready copy has none): " + html.escape(", ".join(result.unchecked))
                     + "</p>")
    identifying = summary.get("identifying_metadata", {})
    if identifying.get("keys"):
        parts.append('<p class="missing" id="identifying">Identifying keys left in the sidecars of '
                     f'{html.escape(str(identifying.get("dataset")))}: ' + html.escape(", ".join(
                         f"{key} ({count})" for key, count in identifying["keys"].items())) + "</p>")
    if not verdicts and not result.incomplete and not result.unchecked:
        parts.append("<p>No QC results found (no *_desc-qc_verdict.json under the output folder).</p>")
    elif verdicts:
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


def _ml(value) -> str:
    return "n/a" if value is None else f"{value} ml"
