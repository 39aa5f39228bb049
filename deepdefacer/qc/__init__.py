"""Quality control of defacing: surface renders, the face check, mask checks, the group report.

Participant level, per scan:  qc_scan(original_img, defaced_img, mask_img, out_dir, stem) -> dict
Group level, per output:      run_group(output_dir, fail_on_flag=False) -> exit code
Any dataset, face check only: deepdefacer-check BIDS_DIR (deepdefacer.cli.check)
"""

from deepdefacer.qc.participant import qc_scan
from deepdefacer.qc.report import run_group

__all__ = ["qc_scan", "run_group"]
