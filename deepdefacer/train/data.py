"""Which heads train the model and which validate it (a fixed, documented split).

* ``ixi/`` (150 adults) and ``nichart/`` (18 elderly, T1w + FLAIR): every fifth subject
  in sorted order (IXI) and four fixed subjects (NiChart, both contrasts) are validation
  and never trained on (20% and 22%).
* ``templates/``: average heads with faces (T1, T2, PD contrast) train the model too.
* ``heads/``: the most varied real scans; never trained on (second validation set).
"""

from __future__ import annotations

from pathlib import Path

# Training reads the shared data beside the repository; the product never does.
DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"

TEMPLATE_HEADS = (
    "spm_avg152T1.nii", "spm_avg152T2.nii", "spm_avg152PD.nii", "spm_avg305T1.nii",
    "fsl_MNI152_T1_2mm.nii.gz", "mridefacer_head_tmpl.nii.gz",
    "niivuedeface_MNI152_2009_SSW.nii.gz",
)
NICHART_VALIDATION = ("Subj1", "Subj13", "Subj19", "Subj7")
# Heads whose reference registration failed on review of the overlays: no label, neither
# trained on nor scored (see labels/README.md).
REJECTED = {
    "IXI260-HH-1805_T1": "face region registered onto the mouth and chin; brain too small and low",
    "IXI387-HH-2101_T1": "face region only a sliver in front of the lower face",
    "IXI451-HH-2212_T1": "face region shifted down: starts below the nose, eyes not covered",
}


def label_name(head_path: Path) -> str:
    """The stem of a head's label files in labels/: its file name without .nii(.gz)."""
    return head_path.name.replace(".nii.gz", "").replace(".nii", "")


def _subject(path: Path) -> str:
    return path.name.split("_")[0]


def ixi_heads() -> list[Path]:
    return sorted((DATA_ROOT / "ixi").glob("*.nii.gz"))


def nichart_heads() -> list[Path]:
    return sorted((DATA_ROOT / "nichart").glob("*.nii.gz"))


def validation_heads() -> list[Path]:
    """Real heads in shared/data/heads: never trained on."""
    return sorted(p for p in (DATA_ROOT / "heads").iterdir() if p.name.endswith((".nii", ".nii.gz")))


def _accepted(paths: list[Path]) -> list[Path]:
    return [p for p in paths if p.name.split(".nii")[0] not in REJECTED]


def split() -> dict[str, list[Path]]:
    ixi = ixi_heads()
    ixi_val = ixi[::5]
    nichart = nichart_heads()
    nichart_val = [p for p in nichart if _subject(p) in NICHART_VALIDATION]
    templates = [DATA_ROOT / "templates" / name for name in TEMPLATE_HEADS]
    train = [p for p in ixi if p not in ixi_val] + [p for p in nichart if p not in nichart_val] + templates
    return {"train": _accepted(train), "validation": _accepted(ixi_val + nichart_val),
            "heads": validation_heads()}


def training_heads(include_validation_heads: bool = False) -> list[Path]:
    """Every head that gets a reference label (train and validation)."""
    parts = split()
    heads = parts["train"] + parts["validation"]
    if include_validation_heads:
        heads += parts["heads"]
    return heads
