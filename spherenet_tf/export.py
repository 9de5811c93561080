"""Export a trained SphereNet for serving: SavedModel, LiteRT (TFLite) or ONNX.

    python -m spherenet_tf.export net.keras --format savedmodel --output net_savedmodel
    python -m spherenet_tf.export models/ --format tflite --output net.tflite [--quantize dynamic]
    python -m spherenet_tf.export net.keras --format onnx --output net.onnx [--batch 1]

SOURCE is a `.keras` file (e.g. from `convert_tf1_checkpoint.py`, which reads the
original wy1iu/SphereNet's checkpoints) or a training run's `model_file` folder, whose
final model `final.keras` is taken.  The exported model takes what the Keras model takes
(float32 NHWC images 0..255, as the data pipeline yields them) and returns its eval-mode
logits ("Deep Hyperspherical Learning", Liu et al., NIPS 2017, arXiv:1711.03189).
After writing, the command runs the file in its own runtime on generated images and
checks its logits against the Keras model's; the file appears at OUTPUT only then
(written beside it first, then renamed).  docs/deploying.md has the formats, the
tolerances, file sizes and latencies.
"""

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

# (the package's __init__, run before this module, registers the port's layers for loading)
from . import export_formats  # noqa: E402
from .export_formats import FORMATS, NEEDS  # noqa: E402
from .export_graph import float32_model  # noqa: E402
from .fixtures import rel_err  # noqa: E402
from .messages import closest, first_line  # noqa: E402
from .training.checkpoints import FINAL_MODEL  # noqa: E402  (what a run names its final model)

QUANTIZE = ("dynamic",)
EXTRA = "pip install 'spherenet-tf[export]'  (in the repository: pip install -e '.[export]')"
#: Largest relative error (to the largest logit) the command accepts between the written
#: file and the Keras model on its check images: the acceptance tolerance against the
#: original's logits; the formats agree to 1.2e-5 or better (docs/deploying.md).
CHECK_TOLERANCE = 1e-4
CHECK_IMAGES = 4


class ExportError(Exception):
    """Bad input to the export command: the one line to print."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m spherenet_tf.export",
        description=__doc__.split("\n")[0],
        epilog="docs/deploying.md has the formats, the tolerances, sizes and latencies.",
    )
    parser.add_argument("source", help="a .keras file, or a training run's model_file folder "
                        f"(its final model, {FINAL_MODEL})")
    parser.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--output", required=True, help="the file (tflite, onnx) or folder "
                        "(savedmodel) to write; an existing one is replaced only on success")
    parser.add_argument("--batch", type=int, default=None,
                        help="a fixed batch size (default: dynamic)")
    parser.add_argument("--quantize", default=None,
                        help="'dynamic': int8 weights (tflite only; default: float32)")
    return parser.parse_args(argv)


def check_options(args):
    """Raise ExportError for a format, quantisation or batch that is not allowed."""
    if args.format not in FORMATS:
        match = closest(args.format, FORMATS)
        raise ExportError(f"unknown --format {args.format!r}: allowed are {', '.join(FORMATS)}"
                          + (f" (did you mean {match!r}?)" if match else "") + ".")
    if args.quantize is not None:
        if args.quantize not in QUANTIZE:
            raise ExportError(f"unknown --quantize {args.quantize!r}: the one allowed value is "
                              "'dynamic' (int8 weights); leave it out for float32.")
        if args.format != "tflite":
            raise ExportError(f"--quantize dynamic is for --format tflite; received --format "
                              f"{args.format}: leave --quantize out.")
    if args.batch is not None and args.batch < 1:
        raise ExportError(f"--batch must be a positive number of images; received {args.batch}. "
                          "Leave it out for a dynamic batch.")


def missing_modules(fmt):
    """The Python modules format `fmt` needs that are not installed."""
    return [name for name in NEEDS[fmt] if importlib.util.find_spec(name) is None]


def resolve_source(source):
    """The .keras file SOURCE names: itself, or a run folder's final model."""
    if not os.path.exists(source):
        raise ExportError(f"SOURCE {source!r} does not exist: give a .keras file or a training "
                          f"run's model_file folder.")
    if os.path.isdir(source):
        final = os.path.join(source, FINAL_MODEL)
        if not os.path.isfile(final):
            raise ExportError(
                f"SOURCE folder {source!r} has no final model ({FINAL_MODEL}): a run writes it "
                "when it finishes. Give a finished run's model_file, or a .keras file "
                "(convert_tf1_checkpoint.py makes one from a snapshot).")
        return final
    if not source.endswith(".keras"):
        raise ExportError(f"SOURCE {source!r} is not a .keras file or a run folder: give a "
                          "model saved with model.save('name.keras'), or convert a TF1 "
                          "checkpoint with convert_tf1_checkpoint.py.")
    return source


def load_source(path):
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # zip, JSON, unknown layer, missing weights: all one line
        raise ExportError(f"SOURCE {path!r} could not be loaded as a Keras model: "
                          f"{first_line(error)}") from None


def temporary_sibling(output, fmt):
    """A new empty temporary path beside `output` (same file system: the final rename is
    atomic for a file); ExportError when the folder cannot be written."""
    folder = os.path.dirname(os.path.abspath(output))
    if os.path.isdir(output) and fmt != "savedmodel":
        raise ExportError(f"--output {output!r} is a folder; --format {fmt} writes one file: "
                          "give a file name.")
    if os.path.isfile(output) and fmt == "savedmodel":
        raise ExportError(f"--output {output!r} is a file; a SavedModel is a folder: give a "
                          "folder name.")
    try:
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.", suffix=".partial",
                               dir=folder)
    except OSError as error:
        raise ExportError(f"cannot write --output {output!r}: {error.strerror or error} in "
                          f"{folder!r}; choose a writable folder.") from None
    return tmp


def put_in_place(tmp_path, output):
    """Move the finished export to `output`, replacing what was there only now."""
    if os.path.isdir(output):
        old = output.rstrip(os.sep) + f".old-{os.getpid()}"
        os.replace(output, old)
        os.replace(tmp_path, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_path, output)


def check_images(model, n=CHECK_IMAGES, seed=0):
    """Generated float32 images 0..255 of the model's input shape."""
    shape = (n,) + tuple(model.inputs[0].shape[1:])
    return np.random.RandomState(seed).uniform(0.0, 255.0, shape).astype(np.float32)


def export(source, fmt, output, batch=None, quantize=None):
    """Export SOURCE to `output`; returns (path written, size in bytes, check error)."""
    model = float32_model(load_source(resolve_source(source)))
    tmp_dir = temporary_sibling(output, fmt)
    try:
        target = tmp_dir if fmt == "savedmodel" else os.path.join(tmp_dir, "model." + fmt)
        if fmt == "savedmodel":
            os.rmdir(tmp_dir)  # the SavedModel writer makes its folder
        try:
            export_formats.write(model, fmt, target, batch=batch, quantize=quantize)
        except export_formats.UnsupportedLayerError as error:
            raise ExportError(str(error)) from None
        except Exception as error:  # a converter's own failure: its first line, no traceback
            raise ExportError(f"the {fmt} converter failed ({type(error).__name__}: "
                              f"{first_line(error)}); nothing was written.") from None
        images = check_images(model, n=batch or CHECK_IMAGES)
        expected = model(images, training=False).numpy()
        try:
            logits = export_formats.load(fmt, target)(images)
        except Exception as error:
            raise ExportError(f"the exported {fmt} model does not run in its runtime "
                              f"({type(error).__name__}: {first_line(error)}); nothing was "
                              "written. Please report this with the model.") from None
        error = rel_err(logits, expected)  # the golden fixtures' measure
        if quantize is None and not error <= CHECK_TOLERANCE:
            raise ExportError(
                f"the exported {fmt} model's logits differ from the Keras model's by {error:.3g} "
                f"(relative to the largest logit; allowed {CHECK_TOLERANCE:g}): nothing was "
                "written. Please report this with the model.")
        put_in_place(target, output)
        return output, _size(output), error
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main(argv=None):
    args = parse_args(argv)
    try:
        check_options(args)
        missing = missing_modules(args.format)
        if missing:
            print(f"export: --format {args.format} needs {', '.join(missing)}, not installed: "
                  f"{EXTRA}", file=sys.stderr)
            return 2
        resolve_source(args.source)  # before loading TensorFlow: a typo is told at once
        path, size, error = export(args.source, args.format, args.output, args.batch, args.quantize)
    except ExportError as error:
        print(f"export: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({args.format}{', int8 weights' if args.quantize else ''}, "
          f"{size / 1e6:.1f} MB): logits agree with the Keras model to {error:.2g} (relative "
          f"to the largest logit) on {args.batch or CHECK_IMAGES} generated images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
