"""`deepdeface INPUT [-o OUTPUT] [--mask-out MASK] [--applyto OTHER ...]`: one file, like pydeface.

--applyto carries INPUT's mask to co-registered scans of the same session (T2w, FLAIR), resampled
through the scanner affines; each gets OTHER_defaced.nii.gz next to it unless told otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from deepdefacer import messages
from deepdefacer.cli.parser import DEVICES
from deepdefacer.messages import EXIT_OK, EXIT_SCANS_FAILED, EXIT_USAGE
from deepdefacer.errors import InputError


def default_output(path: Path) -> Path:
    from deepdefacer.files import split_extension

    stem, _ = split_extension(path)
    return path.with_name(f"{stem}_defaced.nii.gz")


def output_problems(path: Path) -> list[str]:
    """Why path cannot be written as an image; a mistyped folder must not be created silently."""
    from deepdefacer.nifti import NIFTI_EXTENSIONS

    problems = []
    if not path.name.endswith(NIFTI_EXTENSIONS):
        problems.append(f"{path}: an output must end in .nii or .nii.gz")
    if not path.parent.is_dir():
        problems.append(f"{path}: the folder {path.parent} does not exist")
    return problems


def build_parser() -> argparse.ArgumentParser:
    from deepdefacer.provenance import version

    parser = argparse.ArgumentParser(
        prog="deepdeface", allow_abbrev=False,
        description="Remove the face from one MRI head scan (NIfTI) with Deepdefacer's model.",
        epilog="Exit codes: 0 done; 1 an image could not be defaced; 2 usage error.")
    parser.add_argument("input", type=Path, help="the scan to deface (.nii or .nii.gz)")
    parser.add_argument("-o", "--output", "--outfile", type=Path,
                        help="defaced image (default: INPUT_defaced.nii.gz next to INPUT)")
    parser.add_argument("--mask-out", "--outmask", type=Path, metavar="MASK",
                        help="also write the mask (uint8, 1 = removed) on INPUT's grid")
    parser.add_argument("--applyto", nargs="+", type=Path, default=[], metavar="OTHER",
                        help="co-registered scans of the same session to deface with INPUT's "
                             "mask; each becomes OTHER_defaced.nii.gz")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--atlas-guard", action=argparse.BooleanOptionalAction, default=True,
                        help="also keep everything near an average brain registered to the scan "
                             "(default: on; ~2-4 s on 2 cores). --no-atlas-guard: the network's "
                             "brain guard alone, ~4x faster")
    parser.add_argument("--mode", choices=("deface", "reface"), default="deface",
                        help="what the face's voxels become: the air's value (deface, the "
                             "default) or an average face matched to the scan's contrast (reface)")
    parser.add_argument("--remove-ears", action="store_true",
                        help="also remove the ears (pinnae), never within 12 mm of the brain; "
                             "fails when the atlas guard's registration cannot place them")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="also write an image whose face check fails (a face still found, "
                             "nothing to compare with, or nothing removed), for inspection; "
                             "the exit code is still 1")
    parser.add_argument("-f", "--force", "--overwrite", action="store_true",
                        help="replace existing output files")
    parser.add_argument("--verbose", action="store_true", help="tracebacks of unexpected errors")
    parser.add_argument("-v", "--version", action="version",
                        version=f"Deepdefacer {version()}")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    output = args.output or default_output(args.input)
    targets = [(args.input, output)] + [(other, default_output(other)) for other in args.applyto]
    written = [path for _, path in targets] + ([args.mask_out] if args.mask_out else [])
    inputs = {path.resolve() for path, _ in targets}
    named = [path for path in (args.output, args.mask_out) if path]  # the others sit by inputs
    problems = [problem for path in named for problem in output_problems(path)]
    problems += [f"{path} would overwrite an input" for path in written
                 if path.resolve() in inputs]
    if args.remove_ears and not args.atlas_guard:
        problems.append("--remove-ears places the ears with the atlas guard's registration: "
                        "it cannot be combined with --no-atlas-guard")
    if args.mode == "reface" and not args.atlas_guard:
        problems.append("--mode reface places the new face with the atlas guard's registration: "
                        "it cannot be combined with --no-atlas-guard")
    if len({path.resolve() for path in written}) != len(written):
        problems.append("two outputs have the same name")
    if not args.force:
        problems += [f"{path} exists (use --force to replace it)" for path in written
                     if path.exists()]
    if problems:
        parser.print_usage(sys.stderr)
        for problem in problems:
            print(f"deepdeface: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    from deepdefacer.cli.scratch import private_scratch_folder, terminate_as_interrupt

    try:
        # Caches and temporaries (TensorFlow, Keras) in one folder removed at exit, as the BIDS App.
        with terminate_as_interrupt(), private_scratch_folder():
            return deface_files(args.input, output, args.mask_out, targets[1:], args.device,
                                args.atlas_guard, args.allow_unverified, args.mode, args.remove_ears)
    except InputError as exc:
        print(f"deepdeface: {exc}", file=sys.stderr)
        return EXIT_SCANS_FAILED
    except KeyboardInterrupt:
        print("deepdeface: interrupted; no partial file was left", file=sys.stderr)
        return messages.EXIT_INTERRUPTED
    except Exception as exc:
        from deepdefacer.errors import ModelLoadError

        if isinstance(exc, ModelLoadError):  # e.g. an unreadable model or atlas
            print(f"deepdeface: {exc}", file=sys.stderr)
            return EXIT_SCANS_FAILED
        if args.verbose:
            raise
        print(f"deepdeface: {messages.unexpected(exc)} {messages.VERBOSE_HINT}", file=sys.stderr)
        return EXIT_SCANS_FAILED


def deface_files(input_path: Path, output: Path, mask_out, others, device: str,
                 atlas_guard: bool = True, allow_unverified: bool = False, mode: str = "deface",
                 remove_ears: bool = False) -> int:
    """Deface input_path, then every (other, output) pair with the same mask; each image is
    written only once its face check has passed (or with ``allow_unverified``)."""
    from deepdefacer.apply import write_defaced
    from deepdefacer.apply import write_image
    from deepdefacer.nifti import load_volume
    from deepdefacer.pipeline import load_defacer

    start = time.monotonic()
    defacer = load_defacer(device, atlas_guard, mode, remove_ears)
    reference = defacer.deface_volume(load_volume(input_path))
    if reference.details.get("RefaceFallback"):
        print(f"deepdeface: {input_path}: defaced, not refaced: {reference.details['RefaceFallback']}",
              file=sys.stderr)
    status = EXIT_OK
    if _checked(input_path, reference, allow_unverified):
        write_defaced(reference.volume, reference.written_raw, output)
        refaced = ", an average face put in" if reference.refaced_raw is not None else ""
        print(f"{output}: {100.0 * reference.mask.mean():.1f}% of voxels removed, no face left{refaced} "
              f"({time.monotonic() - start:.1f} s)")
    else:
        status = EXIT_SCANS_FAILED
        if allow_unverified:
            write_defaced(reference.volume, reference.written_raw, output)
    if mask_out:
        write_image(reference.mask_image, mask_out)
    for other_path, other_output in others:
        try:
            volume = load_volume(other_path)
            other = defacer.with_mask(volume, reference)
            verified = _checked(other_path, other, allow_unverified)
            if verified or allow_unverified:
                write_defaced(other.volume, other.written_raw, other_output)
            if not verified:
                status = EXIT_SCANS_FAILED
                continue
            print(f"{other_output}: {100.0 * other.mask.mean():.1f}% of voxels removed, no face "
                  f"left (mask of {input_path.name})")
        except InputError as exc:
            print(f"deepdeface: {exc}", file=sys.stderr)
            status = EXIT_SCANS_FAILED
    return status


def _checked(path: Path, defaced, allow_unverified: bool) -> bool:
    """The face check of one defaced scan (deepdefacer.qc.verify); says why it failed."""
    from deepdefacer.qc.verify import verify_defacing

    verification = verify_defacing(defaced.volume.in_memory(), defaced.image, defaced.mask)
    if not verification.verified:
        print(f"deepdeface: {path}: {messages.unverified(verification.reason, allow_unverified)}",
              file=sys.stderr)
    return verification.verified


if __name__ == "__main__":
    sys.exit(main())
