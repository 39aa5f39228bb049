"""The settings of one participant-level run: filled once from the command line, read by every step.

Worker processes receive a copy (it pickles), so a run's behaviour is the same with one process
or many.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepdefacer.bids.deidentify import chosen_keys


@dataclass(frozen=True)
class Settings:
    """Configure how each job is run and where its outputs go."""

    output_dir: str
    layout: str = "derivatives"  # "derivatives" (a BIDS derivatives dataset) or "bids" (an upload-ready copy)
    overwrite: bool = False  # redo scans whose outputs are up to date
    device: str = "auto"  # TensorFlow's device: auto, cpu or gpu
    atlas_guard: bool = True  # also guard an average brain registered to each scan (--no-atlas-guard: off)
    mode: str = "deface"  # --mode: what the face's voxels become (deepdefacer.pipeline.MODES)
    remove_ears: bool = False  # --remove-ears: the ears too (deepdefacer.ears)
    command_line: str = ""  # recorded in the provenance
    qc: bool = True  # per-scan QC figures and verdict (derivatives layout)
    allow_unverified: bool = False  # write a scan whose face check fails (still a failed scan)
    deidentify_keys: tuple = ()  # --layout bids: sidecar keys removed, header text blanked

    @classmethod
    def from_args(cls, args, command_line: str) -> Settings:
        return cls(output_dir=str(args.output_dir), layout=args.layout, overwrite=args.overwrite,
                   device=args.device, atlas_guard=args.atlas_guard, mode=getattr(args, "mode", "deface"),
                   remove_ears=getattr(args, "remove_ears", False), command_line=command_line,
                   qc=not args.skip_qc, allow_unverified=args.allow_unverified,
                   deidentify_keys=chosen_keys(args.deidentify_metadata, args.deidentify_keys))
