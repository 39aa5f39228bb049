#!/usr/bin/env python3
"""Print the OpenBLAS kernel family ("core") that NumPy's and SciPy's bundled OpenBLAS picked here.

    python containers/blas_core.py        # e.g. Haswell

OpenBLAS chooses its kernels at load time from the CPU features it detects (overridable with the
OPENBLAS_CORETYPE environment variable). Different kernels round dot products differently in the
last bit; the atlas guard's registration (scipy's L-BFGS-B) can carry such a bit into a few voxels
at the mask's edge. A container can detect other features than the host it runs on (measured on the
CI host: Haswell outside Docker, SkylakeX inside), so .ci/docker.sh pins the core it prints here for
both runs it compares. Prints nothing when no OpenBLAS core can be read (another BLAS, or none).
"""
import ctypes
import pathlib
import sys

import numpy
import scipy

NAMES = ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename64_",
         "openblas_get_corename")


def cores():
    found = set()
    for package in (numpy, scipy):
        site = pathlib.Path(package.__file__).resolve().parent.parent
        for library in sorted(site.glob(f"{package.__name__}.libs/*openblas*.so*")):
            handle = ctypes.CDLL(str(library))
            for name in NAMES:
                function = getattr(handle, name, None)
                if function is not None:
                    function.restype = ctypes.c_char_p
                    found.add(function().decode().strip())
                    break
    return found


def main():
    found = cores()
    if len(found) > 1:
        sys.exit(f"blas_core.py: NumPy and SciPy picked different OpenBLAS cores: {sorted(found)}")
    if found:
        print(found.pop())


if __name__ == "__main__":
    main()
