"""Group selected scans into jobs: which scan the model runs on, which scans reuse its mask.

One mask per BIDS `_defacemask` name: the echoes, flip angles, inversions and magnitude/phase
parts of one acquisition share a mask (computed on its first magnitude image), so the images of
a collection stay consistent and a phase image is never given to the model. With --mask-from
SUFFIX, the mask computed on that suffix's first scan in a session is carried to every other
scan of the session, the way curators deface T2w and FLAIR with the T1w's mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deepdefacer.bids.names import COLLECTION_ENTITIES, BidsName
from deepdefacer.bids.select import Scan


@dataclass
class MaskGroup:
    """Scans that share one mask file."""

    mask_name: BidsName
    scans: list = field(default_factory=list)

    @property
    def folder(self) -> str:
        return self.scans[0].folder

    @property
    def mask_relpath(self) -> str:
        return f"{self.folder}/{self.mask_name}"

    @property
    def reference(self) -> Scan:
        magnitude = [scan for scan in self.scans if scan.name.entities.get("part") != "phase"]
        return (magnitude or self.scans)[0]


@dataclass
class Job:
    """One model prediction (on reference) and every scan that gets its mask."""

    groups: list  # the first group holds the reference scan
    note: str = ""

    @property
    def reference(self) -> Scan:
        return self.groups[0].reference

    @property
    def scans(self) -> list:
        return [scan for group in self.groups for scan in group.scans]

    @property
    def label(self) -> str:
        return self.reference.relpath


def mask_name_for(scan: Scan) -> BidsName:
    return (scan.name.without(COLLECTION_ENTITIES)
            .with_entities(mod=scan.suffix)
            .replace(suffix="defacemask", extension=".nii.gz"))


def group_by_mask(scans) -> list[MaskGroup]:
    groups: dict[str, MaskGroup] = {}
    for scan in sorted(scans, key=lambda scan: scan.relpath):
        mask_name = mask_name_for(scan)
        key = f"{scan.folder}/{mask_name}"
        groups.setdefault(key, MaskGroup(mask_name)).scans.append(scan)
    return list(groups.values())


def plan_jobs(scans, mask_from: str | None = None) -> list[Job]:
    groups = group_by_mask(scans)
    if not mask_from:
        return [Job([group]) for group in groups]

    by_session: dict[str, list[MaskGroup]] = {}
    for group in groups:
        by_session.setdefault(group.folder, []).append(group)
    jobs = []
    for folder, session_groups in by_session.items():
        references = [group for group in session_groups if group.reference.suffix == mask_from]
        if not references:
            jobs.extend(Job([group], note=f"no {mask_from} in {folder}: own mask")
                        for group in session_groups)
            continue
        reference = references[0]
        followers = [group for group in session_groups if group is not reference]
        jobs.append(Job([reference] + followers))
    return sorted(jobs, key=lambda job: job.label)
