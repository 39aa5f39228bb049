#!/usr/bin/env python3
"""Print the runtime requirements of Deepdefacer, read from setup.cfg, one per line.

setup.cfg stays the single list of dependencies: the container build installs these lines in a layer of
their own (before the code, so that editing the code does not reinstall TensorFlow), and
containers/make-wheelhouse.sh downloads the same lines for offline builds.

    python3 containers/requirements.py [--setup-cfg setup.cfg] [--variant cpu|gpu] [--extras validate,qc]

--variant gpu swaps the TensorFlow requirement(s) for ``tensorflow[and-cuda]`` with the same version
bounds: the CUDA libraries then come as pip wheels, and only the NVIDIA driver comes from the host.
Standard library only: it runs with the bare python3 of a base image.
"""
import argparse
import configparser
import re
import sys

TENSORFLOW_NAME = re.compile(r"^\s*(tensorflow-cpu|tensorflow)(?![\w.-])\s*(?P<versions>[^;\[]*)", re.IGNORECASE)


def requirement_lines(text):
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def read_requirements(setup_cfg_path, extras):
    config = configparser.ConfigParser()
    if not config.read(setup_cfg_path):
        raise SystemExit(f"requirements.py: cannot read {setup_cfg_path}")
    requirements = requirement_lines(config.get("options", "install_requires", fallback=""))
    for extra in extras:
        if not config.has_option("options.extras_require", extra):
            raise SystemExit(f"requirements.py: no extra named {extra!r} in {setup_cfg_path}")
        requirements += requirement_lines(config.get("options.extras_require", extra))
    return requirements


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
        raise SystemExit("requirements.py: no tensorflow requirement in setup.cfg to make a GPU variant of")
    return [f"tensorflow[and-cuda]{versions}"] + gpu_requirements


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup-cfg", default="setup.cfg")
    parser.add_argument("--variant", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--extras", default="", help="comma-separated extras from setup.cfg, e.g. validate")
    args = parser.parse_args(argv)
    extras = [extra.strip() for extra in args.extras.split(",") if extra.strip()]
    requirements = read_requirements(args.setup_cfg, extras)
    if args.variant == "gpu":
        requirements = for_gpu(requirements)
    sys.stdout.write("".join(line + "\n" for line in requirements))


if __name__ == "__main__":
    main()
