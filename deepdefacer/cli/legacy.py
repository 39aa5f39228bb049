"""The Deepdefacer 2.x command line, kept as a compatibility form of the `deepdefacer` command.

The PyPI name ``deepdefacer`` was first the 2019 DeepDefacer (2.1.2), whose only command was

    deepdefacer --input_file IN [--defaced_output_path OUT] [--mask_output_path MASK]

and tools written for it still call it that way; BIDSonym runs exactly
``deepdefacer --input_file X --defaced_output_path Y --mask_output_path Z``. When `deepdefacer`
(deepdefacer.cli.run:main) is given any of these three options, it is this form: the one file is
defaced by 3.x's single-file command (`deepdeface IN -o OUT --mask-out MASK --force`,
deepdefacer.cli.deface_one) and a one-line note on standard error says so. Anything else is the
BIDS App's command line.

Where the files go, as in 2.x:

- ``--defaced_output_path`` omitted: ``<name>_defaced.nii.gz`` in the current folder (2.x's code;
  its README said "the same directory as the input file", but the code wrote to the current one).
- ``--mask_output_path`` omitted: no mask is written (2.x wrote one only when asked).
- An output path with no extension at all gets ``.nii`` appended, as nibabel did for 2.x (older
  BIDSonym releases passed a mask name without one); any other extension than .nii/.nii.gz is a
  usage error.
- ``--defaced_output_path`` may be the input itself (older BIDSonym releases defaced in place): the
  defaced image replaces the input only once it is complete and has passed the face check.
- Existing outputs are replaced, as 2.x did (3.x's --force).

What differs from 2.x, on purpose:

- The method is 3.x's: its model, its atlas guard, its face check (an image whose face check fails
  is not written, exit 1), voxels outside the mask keep their exact values and the file keeps the
  input's data type, removed voxels take the scan's background value.
- The mask is 3.x's: uint8 on the input's grid, 1 = removed (2.x wrote 1 = kept, the factor it
  multiplied the image by).
- Option names must be spelled out (2.x accepted abbreviations such as ``--input``).

Exit codes: 0 done; 1 the image could not be defaced (unreadable or not NIfTI, face check failed;
2.x also exited 1 for a file that is not .nii/.nii.gz); 2 usage error (argparse, as 2.x).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from deepdefacer.messages import EXIT_OK, EXIT_USAGE

LEGACY_OPTIONS = ("--input_file", "--defaced_output_path", "--mask_output_path")
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
NOTE = ("deepdefacer: the Deepdefacer 2.x command line (--input_file), kept for compatibility: "
        "defacing one file as `deepdeface {command}` does")


def is_legacy_call(argv) -> bool:
    """True when the arguments use any of 2.x's options (``--input_file`` ...)."""
    return any(argument.split("=", 1)[0] in LEGACY_OPTIONS
               for argument in argv if argument.startswith("--"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepdefacer", allow_abbrev=False,
        description="The Deepdefacer 2.x command line (compatibility form): remove the face from "
                    "one MRI scan. `deepdefacer --help` without --input_file shows the BIDS App; "
                    "`deepdeface --help` the 3.x single-file command.",
        epilog="Exit codes: 0 done; 1 the image could not be defaced; 2 usage error.")
    parser.add_argument("--input_file", type=Path, required=True,
                        help="(REQUIRED) the scan to deface (.nii or .nii.gz)")
    parser.add_argument("--defaced_output_path", type=Path,
                        help="the defaced image (default: <name>_defaced.nii.gz in the current "
                             "folder); may be the input itself")
    parser.add_argument("--mask_output_path", type=Path,
                        help="also write the mask (uint8, 1 = removed) on the input's grid "
                             "(default: no mask)")
    return parser


def default_output(input_path: Path) -> Path:
    """2.x's default: the input's name without .nii/.nii.gz, plus _defaced.nii.gz, here."""
    from deepdefacer.files import split_extension

    stem, _ = split_extension(input_path)
    return Path.cwd() / f"{stem}_defaced.nii.gz"


def as_2x_wrote_it(path: Path) -> Path:
    """nibabel (2.x's writer) appended .nii to a name without any extension."""
    if not path.name.endswith(NIFTI_EXTENSIONS) and path.suffix == "":
        return path.with_name(path.name + ".nii")
    return path


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2) and --help (0)
        return int(exc.code or 0)
    input_path = args.input_file
    output = as_2x_wrote_it(args.defaced_output_path or default_output(input_path))
    mask = as_2x_wrote_it(args.mask_output_path) if args.mask_output_path else None

    problems = []
    for path in [output] + ([mask] if mask else []):
        if not path.name.endswith(NIFTI_EXTENSIONS):
            problems.append(f"{path}: an output must end in .nii or .nii.gz")
        elif not path.parent.is_dir():
            problems.append(f"{path}: the folder {path.parent} does not exist")
    if mask and mask.resolve() == input_path.resolve():
        problems.append(f"{mask}: the mask would overwrite the input")
    if mask and mask.resolve() == output.resolve():
        problems.append(f"{mask}: the mask and the defaced image have the same name")
    if problems:
        parser.print_usage(sys.stderr)
        for problem in problems:
            print(f"deepdefacer: error: {problem}", file=sys.stderr)
        return EXIT_USAGE

    in_place = output.resolve() == input_path.resolve()
    # 3.x never writes over an input: in place, the defaced image goes to a temporary name beside
    # the input first and replaces it only once deface_one has written it (face check passed).
    written = (output.with_name(f".{output.name}.deepdefacer-2x-{os.getpid()}{_extension(output)}")
               if in_place else output)
    command = [str(input_path), "-o", str(written)]
    if mask:
        command += ["--mask-out", str(mask)]
    command.append("--force")
    shown = [str(input_path), "-o", str(output)] + command[3:]
    print(NOTE.format(command=" ".join(shown)), file=sys.stderr)

    from deepdefacer.cli import deface_one

    try:
        status = deface_one.main(command)
        if in_place and status == EXIT_OK:
            os.replace(written, output)
            print(f"{output}: replaced by its defaced image")
        return status
    finally:
        if in_place:
            written.unlink(missing_ok=True)


def _extension(path: Path) -> str:
    return ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"


if __name__ == "__main__":
    sys.exit(main())
