#!/usr/bin/env python3
"""Print the runtime requirements of Deepdefacer, read from pyproject.toml, one per line.

pyproject.toml stays the single list of dependencies: the container build installs these lines in a
layer of their own (before the code, so that editing the code does not reinstall TensorFlow), and
containers/make-wheelhouse.sh downloads the same lines for offline builds.

    python3 containers/requirements.py [--pyproject pyproject.toml] [--variant cpu|gpu] [--extras validate]

--variant gpu swaps the TensorFlow requirement(s) for ``tensorflow[and-cuda]`` with the same version
bounds: the CUDA libraries then come as pip wheels, and only the NVIDIA driver comes from the host.
Standard library only (tomllib: Python 3.11 or later): it runs with the bare python3 of a base image.
"""
import argparse
import re
import sys

try:
    import tomllib
except ImportError:  # Python < 3.11
    raise SystemExit("requirements.py: needs Python 3.11 or later (tomllib) to read pyproject.toml")

TENSORFLOW_NAME = re.compile(r"^\s*(tensorflow-cpu|tensorflow)(?![\w.-])\s*(?P<versions>[^;\[]*)", re.IGNORECASE)


def read_requirements(pyproject_path, extras):
    try:
        with open(pyproject_path, "rb") as stream:
            project = tomllib.load(stream).get("project", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SystemExit(f"requirements.py: cannot read {pyproject_path}: {exc}")
    requirements = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"requirements.py: no extra named {extra!r} in {pyproject_path}")
        requirements += optional[extra]
    return [requirement.strip() for requirement in requirements]


def for_gpu(requirements):
    """Replace tensorflow-cpu/tensorflow (whatever their platform markers) by one tensorflow[and-cuda]."""
    gpu_requirements, versions = [], None
    for requirement in requirements:
        match = TENSORFLOW_NAME.match(requirement)
        if match is None:
            gpu_requirements.append(requirement)
        elif versions is None:
            versions = match.group("versions").strip()
    if versions is None:
        raise SystemExit("requirements.py: no tensorflow requirement in pyproject.toml to make a GPU variant of")
    return [f"tensorflow[and-cuda]{versions}"] + gpu_requirements


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", default="pyproject.toml")
    parser.add_argument("--variant", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--extras", default="", help="comma-separated extras from pyproject.toml, e.g. validate")
    args = parser.parse_args(argv)
    extras = [extra.strip() for extra in args.extras.split(",") if extra.strip()]
    requirements = read_requirements(args.pyproject, extras)
    if args.variant == "gpu":
        requirements = for_gpu(requirements)
    sys.stdout.write("".join(line + "\n" for line in requirements))


if __name__ == "__main__":
    main()
