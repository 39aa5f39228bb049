"""Run the original DeepDefacer 2.1.2 (PyPI, 2019) on one scan; time it; write JSON.

Runs inside its own virtualenv (see bench/bench_deface.py, which creates it):

    build/venv-deepdefacer-2019/bin/python bench/baselines/deepdefacer2019_runner.py \
        --scan head.nii.gz --repeats 3 --work DIR --json out.json

The package is installed unmodified (``pip install --no-deps deepdefacer==2.1.2``). It was
written for Python <= 3.6, nibabel 2, SimpleITK 1 and Keras 2; three compatibility patches
are applied here at run time, nothing in site-packages is edited:

1. nibabel: ``img.get_data()`` (removed in nibabel 5) -> ``img.get_fdata()``.
2. SimpleITK: ``sitk.Transform(t).AddTransform(t2)`` (SimpleITK 1 turned a generic Transform
   into a composite on AddTransform; SimpleITK 2 removed that). Its code builds
   "affine, then add a centring translation"; the SimpleITK 2 equivalent is a
   ``CompositeTransform`` holding the affine, to which the translation is added (composites
   apply their transforms in reverse order of addition in both versions, so the point
   mapping is the same). Only the ``sitk`` name inside ``deepdefacer.defacer_utils`` is
   given the shim; SimpleITK itself is untouched.
3. Keras: the 2019 model file's training config builds its optimizer with ``lr=``; Keras 3
   only knows ``learning_rate=``. Optimizer configs are renamed on the way in.

Each repeat calls the tool's own entry point ``deface_3D_MRI()`` (as its ``deepdefacer``
command does: it loads the model, preprocesses, predicts, resamples the mask, writes the
mask and the defaced image). Loading the model and ``predict`` are timed separately by
wrapping them. The first repeat also pays TensorFlow's one-off start-up inside the call.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import types
from pathlib import Path

T_PROCESS = time.perf_counter()

TIMES: dict[str, list[float]] = {"load_model": [], "predict": []}


def patch_nibabel():
    import nibabel as nib
    from nibabel.dataobj_images import DataobjImage

    def get_data(self, caching="fill"):
        return self.get_fdata(caching=caching)

    DataobjImage.get_data = get_data
    return nib.__version__


def sitk_shim():
    """A stand-in for the ``sitk`` module name in defacer_utils: Transform() -> composite."""
    import SimpleITK as sitk

    shim = types.ModuleType("SimpleITK_shim")
    shim.__dict__.update({k: getattr(sitk, k) for k in dir(sitk) if not k.startswith("__")})

    def Transform(*args):  # noqa: N802 (SimpleITK's name)
        # SimpleITK 1: Transform(t) copied t into a generic transform that became a
        # composite on AddTransform. SimpleITK 2: say "composite" up front.
        if len(args) == 1 and isinstance(args[0], sitk.Transform):
            return sitk.CompositeTransform([args[0]])
        return sitk.Transform(*args)

    shim.Transform = Transform
    return shim, sitk.Version_VersionString()


def patch_keras_lr():
    """Optimizer configs saved by Keras 2.2 say ``lr``; Keras 3 wants ``learning_rate``."""
    import keras
    from keras.src.optimizers import base_optimizer

    original = base_optimizer.BaseOptimizer.from_config.__func__

    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if "lr" in config:
            config["learning_rate"] = config.pop("lr")
        # Keras 2's "decay" has no meaning in Keras 3 optimizers (they take schedules).
        if config.get("decay", None) in (0, 0.0):
            config.pop("decay")
        return original(cls, config, custom_objects=custom_objects)

    base_optimizer.BaseOptimizer.from_config = classmethod(from_config)
    return keras.__version__


def instrument(defacer_module):
    """Time load_model and predict inside the tool, without changing what they do."""
    original_load = defacer_module.load_model

    def load_model(*args, **kwargs):
        start = time.perf_counter()
        model = original_load(*args, **kwargs)
        TIMES["load_model"].append(time.perf_counter() - start)
        original_predict = model.predict

        def predict(*pargs, **pkwargs):
            start_p = time.perf_counter()
            out = original_predict(*pargs, **pkwargs)
            TIMES["predict"].append(time.perf_counter() - start_p)
            return out

        model.predict = predict
        return model

    defacer_module.load_model = load_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", required=True, type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", required=True, type=Path, help="folder for outputs and cwd")
    parser.add_argument("--json", required=True, type=Path)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    scan = args.scan.resolve()
    # The tool writes "mask_intermediate.nii.gz" into the current directory.
    os.chdir(args.work)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    versions = {"python": sys.version.split()[0], "nibabel": patch_nibabel()}
    start_import = time.perf_counter()
    import tensorflow as tf

    versions["tensorflow"] = tf.__version__
    versions["keras"] = patch_keras_lr()
    from deepdefacer import defacer_utils  # the 2019 package, in this virtualenv

    shim, versions["SimpleITK"] = sitk_shim()
    defacer_utils.sitk = shim
    from deepdefacer import defacer

    instrument(defacer)
    import_seconds = time.perf_counter() - start_import
    from importlib.metadata import version

    versions["deepdefacer"] = version("deepdefacer")

    defaced = args.work / "defaced.nii.gz"
    mask = args.work / "mask.nii.gz"
    seconds = []
    for _ in range(args.repeats):
        sys.argv = ["deepdefacer", "--input_file", str(scan), "--defaced_output_path", str(defaced),
                    "--mask_output_path", str(mask)]
        start = time.perf_counter()
        defacer.deface_3D_MRI()
        seconds.append(time.perf_counter() - start)
    result = {
        "method": "deepdefacer-2.1.2",
        "scan": str(scan),
        "repeats": args.repeats,
        "seconds": seconds,
        "load_model_seconds": TIMES["load_model"],
        "predict_seconds": TIMES["predict"],
        "import_seconds": import_seconds,
        "process_seconds": time.perf_counter() - T_PROCESS,
        "peak_rss_mb_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mask_keep": str(mask),
        "defaced": str(defaced),
        "versions": versions,
    }
    args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
