"""`python -m spherenet_tf.export`: SavedModel, LiteRT and ONNX (issue 25, docs/deploying.md).

* The original's own checkpoint (spherenet9_ckpt/, not in the repository), converted with
  convert_tf1_checkpoint.py and exported to each format: each runtime's logits on the
  fixture images are the original's eval logits (after_adam/eval/score) to 1e-4.
* The four networks, every format, each runtime: SphereNet-9 and CNN-9 full size with the
  golden fixtures' weights and reference BN statistics, so each runtime's logits are held
  both to the Keras model's and to the original's `ref_eval` logits; SphereResNet-32 and
  ResNet-32 at full depth and 1/6 width (full width takes a minute to convert; its
  figures are in docs/deploying.md), held to the Keras model's.
* Every norm x w_norm on LiteRT (the format whose arithmetic differs most: acos and asin
  through ATAN2) and every norm and every w_norm on ONNX, small SphereNet-9s.
* The SavedModel runs in a process where spherenet_tf cannot be imported.
* --quantize dynamic, --batch, a run folder as SOURCE, and every refusal: one line,
  exit 2, nothing left at OUTPUT or beside it.

Tolerances (relative to the largest logit, float32): the port's own formulations
('fast', 'original', 'portable') differ by up to 1.2e-5 on these networks, and the
runtimes by as much (their conv kernels and transcendental functions round
differently, and near |cos| = 1 acos magnifies that).  Each constant below is about 2x
the worst error measured here (2-core AMD EPYC), rounded to 1, 2 or 5 x 10^k, with the
figure beside it.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from support.export_models import NETWORKS, golden_network, images, small_spherenet9
from support.repo import golden_path, load_module, original_checkpoint, script_env
from support.golden_rules import check, load_npz
from spherenet_tf import export as export_cli
from spherenet_tf import export_formats as ef
from spherenet_tf.fixtures import rel_err
from spherenet_tf.models import build_cnn9, build_resnet32

#: The original's `norm` and `w_norm` values (README, "The switches").
NORMS = ("none", "linear", "cosine", "sigmoid", "lr_sigmoid")
W_NORMS = ("none", "linear", "cosine", "sigmoid")
#: The acceptance check of issue 25: the original's eval logits (measured 2.6e-7
#: SavedModel, 3.1e-7 LiteRT, 5.1e-7 ONNX).
ACCEPT_TOL = 1e-4
#: Exported against the Keras model.  Measured, full size with the fixtures' weights:
#: SphereNet-9 0 / 4.7e-6 / 4.0e-6 (SavedModel / LiteRT / ONNX), CNN-9 0 / 6.5e-6 /
#: 5.4e-6; SphereResNet-32 at 1/6 width 2.2e-6 / 5.0e-6 / 2.0e-6, ResNet-32 5.8e-7 /
#: 7.8e-7 / 9.3e-7; every norm x w_norm (widths 8): LiteRT 1.1e-5 (linear / none: the
#: ATAN2 form of acos, a few ulps from tf.acos as tf.acos is from the exact value, moves
#: these logits by that much), ONNX 4.5e-6.  The port's own 'original' formulation is
#: 1.2e-5 from its 'fast' one on the same models (sigmoid / none).
EXPORT_TOL = 2e-5
#: Exported against the original's ref_eval logits: the port itself is within 4.7e-6
#: (SphereNet-9) and 4.6e-6 (CNN-9) of them, the runtimes within 5.8e-6 and 6.4e-6.
ORIGINAL_TOL = 2e-5


def need(fmt):
    """Skip, naming the extra, when the runtime of `fmt` is not installed."""
    missing = export_cli.missing_modules(fmt)
    if missing:
        pytest.skip(f"{fmt} needs {', '.join(missing)}: pip install -e '.[export]'")


def export_all(model, folder, formats=ef.FORMATS, **options):
    """{format: Runner} of `model` written to `folder` in each available format."""
    runners = {}
    for fmt in formats:
        if export_cli.missing_modules(fmt):
            continue
        path = os.path.join(folder, f"{model.name}.{fmt}")
        ef.write(model, fmt, path, **options)
        runners[fmt] = ef.load(fmt, path)
    return runners


# ---------------------------------------------------------------------------
# The original's own checkpoint: the acceptance check
# ---------------------------------------------------------------------------
def test_original_checkpoint_exports_to_the_originals_logits(tmp_path, capsys):
    checkpoint = original_checkpoint()
    g = load_npz("model_spherenet9.npz")
    keras_file = str(tmp_path / "net.keras")
    convert = load_module("convert_tf1_checkpoint.py")
    assert convert.main([str(checkpoint), keras_file, "--model", "spherenet9"]) in (0, None)
    expected = g["after_adam/eval/score"].reshape(len(g["images"]), -1)
    for fmt in ef.FORMATS:
        need(fmt)
        out = str(tmp_path / f"net_{fmt}")
        assert export_cli.main([keras_file, "--format", fmt, "--output", out]) == 0
        logits = ef.load(fmt, out)(g["images"])
        check(f"spherenet9_ckpt exported ({fmt})", "after_adam/eval/score", logits, expected,
              ACCEPT_TOL)


# ---------------------------------------------------------------------------
# Every network, every format
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module", params=NETWORKS)
def network(request, tmp_path_factory):
    """(name, Keras model, images, the original's logits or None, {format: Runner})."""
    name = request.param
    folder = str(tmp_path_factory.mktemp(name))
    if name in ("spherenet9", "baseline_cnn"):
        golden_path(f"model_{name}.npz")
        model, x, original = golden_network(name)
    else:
        import keras

        norm = "linear" if name == "sphere_resnet32" else "none"
        keras.utils.set_random_seed(0)
        model = build_resnet32(norm=norm, widths=(16, 32, 64), name=name)
        bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        for layer in bns:  # moving statistics of a generated batch (see small_spherenet9)
            layer.momentum = 0.0
        model(images(8, 100), training=True)
        x, original = images(4, 1), None
    return name, model, x, original, export_all(model, folder)


@pytest.mark.parametrize("fmt", ef.FORMATS)
def test_every_network_exports_and_agrees(network, fmt):
    name, model, x, original, runners = network
    need(fmt)
    logits = runners[fmt](x)
    keras_logits = model(x, training=False).numpy()
    check(f"export {name} ({fmt}) vs Keras", "logits", logits, keras_logits, EXPORT_TOL)
    if original is not None:
        check(f"export {name} ({fmt}) vs original ref_eval", "ref_eval/score", logits, original,
              ORIGINAL_TOL)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("w_norm", W_NORMS)
def test_every_norm_and_w_norm_exports_and_agrees(norm, w_norm, tmp_path):
    # LiteRT for every pair; ONNX for every norm and every w_norm (same rewrite, acos
    # and asin as ops), which keeps the run short
    formats = ["tflite"] + (["onnx"] if norm == "none" or w_norm == "none" else [])
    for fmt in formats:
        need(fmt)
    model = small_spherenet9(norm, w_norm)
    x = images(4, 1)
    expected = model(x, training=False).numpy()
    for fmt, runner in export_all(model, str(tmp_path), formats).items():
        check(f"export norm x w_norm ({fmt})", f"{norm}/{w_norm}", runner(x), expected, EXPORT_TOL)


# ---------------------------------------------------------------------------
# The SavedModel without the port
# ---------------------------------------------------------------------------
BLOCKED_RUN = textwrap.dedent("""
    import importlib.abc, sys
    class NoSphereNet(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "spherenet_tf":
                raise ImportError("spherenet_tf is not importable in this process")
    sys.meta_path.insert(0, NoSphereNet())
    try:
        import spherenet_tf
    except ImportError:
        pass
    else:
        raise SystemExit("the import guard did not work")
    import numpy as np, tensorflow as tf
    serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    logits = serve(images=tf.constant(np.load(sys.argv[2])))["logits"].numpy()
    assert not any(m.split(".")[0] == "spherenet_tf" for m in sys.modules)
    np.save(sys.argv[3], logits)
""")


def test_savedmodel_runs_where_spherenet_tf_cannot_be_imported(tmp_path):
    """Exported by `python -m spherenet_tf.export` (one line on stdout), then served by a
    fresh process, started from another folder, in which importing spherenet_tf fails."""
    model = small_spherenet9("lr_sigmoid", "cosine")
    saved = str(tmp_path / "saved")
    export = subprocess.run(
        [sys.executable, "-m", "spherenet_tf.export", save_keras(model, tmp_path), "--format",
         "savedmodel", "--output", saved],
        cwd=str(tmp_path), env=script_env(), capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr[-2000:]
    assert export.stdout.startswith("wrote ") and len(export.stdout.strip().splitlines()) == 1
    x = images(3, 2)
    np.save(tmp_path / "x.npy", x)
    serve = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, saved, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        cwd=str(tmp_path), env=script_env(), capture_output=True, text=True, timeout=300)
    assert serve.returncode == 0, serve.stderr[-2000:]
    check("export SavedModel in a process without spherenet_tf", "logits",
          np.load(tmp_path / "y.npy"), model(x, training=False).numpy(), EXPORT_TOL)


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------
def save_keras(model, folder, name="net.keras"):
    path = os.path.join(str(folder), name)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def small_keras(tmp_path_factory):
    """A small SphereNet-9 saved as .keras: (model, path)."""
    model = small_spherenet9("sigmoid", "none", widths=(8, 16, 16))
    return model, save_keras(model, tmp_path_factory.mktemp("small"))


def test_quantized_litert_has_int8_weights_and_agrees_roughly(small_keras, tmp_path):
    need("tflite")
    model, source = small_keras
    floats, quantized = str(tmp_path / "f.tflite"), str(tmp_path / "q.tflite")
    assert export_cli.main([source, "--format", "tflite", "--output", floats]) == 0
    assert export_cli.main([source, "--format", "tflite", "--output", quantized,
                            "--quantize", "dynamic"]) == 0
    # 1 byte per weight instead of 4 (plus the graph and the per-channel scales)
    assert os.path.getsize(quantized) < 0.4 * os.path.getsize(floats)
    x = images(16, 3)
    logits = ef.load("tflite", quantized)(x)
    assert np.all(np.isfinite(logits))
    # int8 weights move the logits by about 1% (measured 1.4e-2 here): a loose bound
    # that still fails for a wrong graph (a random net's logits differ by ~100%)
    assert rel_err(logits, model(x, training=False).numpy()) < 0.1


@pytest.mark.parametrize("fmt", ["tflite", "onnx", "savedmodel"])
def test_fixed_batch(small_keras, fmt, tmp_path):
    need(fmt)
    model, source = small_keras
    out = str(tmp_path / f"b.{fmt}")
    assert export_cli.main([source, "--format", fmt, "--output", out, "--batch", "2"]) == 0
    x = images(2, 4)
    check(f"export --batch 2 ({fmt})", "logits", ef.load(fmt, out)(x),
          model(x, training=False).numpy(), EXPORT_TOL)
    if fmt == "tflite":
        with pytest.raises(ValueError, match="exported for batch 2"):
            ef.load(fmt, out)(images(3, 4))


def test_a_run_folder_exports_its_final_model(small_keras, tmp_path, capsys):
    from spherenet_tf.training.checkpoints import RunFiles

    model, _ = small_keras
    run = str(tmp_path / "run")
    RunFiles(run, checkpoint=None).save_final_model(model)
    out = str(tmp_path / "from_run.tflite")
    assert export_cli.main([run, "--format", "tflite", "--output", out]) == 0
    assert "wrote" in capsys.readouterr().out
    x = images(2, 5)
    check("export from a run folder", "logits", ef.load("tflite", out)(x),
          model(x, training=False).numpy(), EXPORT_TOL)


def test_a_mixed_precision_model_is_exported_in_float32(tmp_path):
    """A model trained under mixed precision keeps float32 weights; the export computes
    in float32 with them (the converters reject bfloat16 graphs of mixed types)."""
    import keras

    need("onnx")
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = build_cnn9(norm="linear", widths=(4, 4, 4))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(small_spherenet9("linear", "none", widths=(4, 4, 4)).get_weights())
    float32 = build_cnn9(norm="linear", widths=(4, 4, 4))
    float32.set_weights(mixed.get_weights())
    out = str(tmp_path / "mixed.onnx")
    assert export_cli.main([save_keras(mixed, tmp_path), "--format", "onnx", "--output", out]) == 0
    x = images(2, 6)
    check("export of a mixed-precision model", "logits", ef.load("onnx", out)(x),
          float32(x, training=False).numpy(), EXPORT_TOL)


# ---------------------------------------------------------------------------
# Refusals: one line, exit 2, nothing half-written
# ---------------------------------------------------------------------------
def refused(argv, capsys, *phrases):
    """Run the command, assert exit 2 and one stderr line containing `phrases`."""
    assert export_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for phrase in phrases:
        assert phrase in err[0], err[0]
    return err[0]


def leftovers(folder, keep=()):
    return sorted(set(os.listdir(folder)) - set(keep))


def test_refusals_of_source(tmp_path, capsys):
    out = str(tmp_path / "out.tflite")
    refused([str(tmp_path / "nope.keras"), "--format", "tflite", "--output", out], capsys,
            "does not exist")
    (tmp_path / "notes.txt").write_text("hello")
    refused([str(tmp_path / "notes.txt"), "--format", "tflite", "--output", out], capsys,
            "is not a .keras file")
    (tmp_path / "broken.keras").write_text("not a zip")
    refused([str(tmp_path / "broken.keras"), "--format", "onnx", "--output", out], capsys,
            "could not be loaded as a Keras model")
    (tmp_path / "unfinished_run").mkdir()
    refused([str(tmp_path / "unfinished_run"), "--format", "savedmodel", "--output", out], capsys,
            "has no final model", "final.keras")
    assert leftovers(tmp_path) == ["broken.keras", "notes.txt", "unfinished_run"]


def test_refusals_of_options(small_keras, tmp_path, capsys):
    _, source = small_keras
    out = str(tmp_path / "out.onnx")
    line = refused([source, "--format", "tflight", "--output", out], capsys, "unknown --format")
    assert "savedmodel, tflite, onnx" in line and "'tflite'" in line
    refused([source, "--format", "onnx", "--output", out, "--quantize", "dynamic"], capsys,
            "--quantize dynamic is for --format tflite")
    refused([source, "--format", "tflite", "--output", out, "--quantize", "int4"], capsys,
            "unknown --quantize")
    refused([source, "--format", "tflite", "--output", out, "--batch", "0"], capsys, "--batch")
    assert leftovers(tmp_path) == []


def test_refusal_of_an_unwritable_output(small_keras, tmp_path, capsys):
    _, source = small_keras
    (tmp_path / "a_file").write_text("x")
    refused([source, "--format", "tflite", "--output", str(tmp_path / "a_file" / "net.tflite")],
            capsys, "cannot write --output")
    refused([source, "--format", "tflite", "--output", str(tmp_path / "missing" / "net.tflite")],
            capsys, "cannot write --output")
    refused([source, "--format", "savedmodel", "--output", str(tmp_path / "a_file")], capsys,
            "a SavedModel is a folder")
    refused([source, "--format", "onnx", "--output", str(tmp_path)], capsys, "is a folder")
    assert leftovers(tmp_path) == ["a_file"]


def test_a_failed_export_leaves_the_previous_file(tmp_path, capsys):
    """A layer beyond the original's networks (SphereNorm) has no LiteRT form: refused
    after loading, and the good file already at OUTPUT stays as it was."""
    need("tflite")
    model = build_cnn9(norm="cosine", sphere_norm=True, widths=(4, 4, 4))
    source = save_keras(model, tmp_path)
    out = tmp_path / "net.tflite"
    out.write_bytes(b"the previous good export")
    refused([source, "--format", "tflite", "--output", str(out)], capsys, "--format savedmodel")
    assert out.read_bytes() == b"the previous good export"
    assert leftovers(tmp_path) == ["net.keras", "net.tflite"]


@pytest.mark.parametrize("stage", ["converter", "runtime"])
def test_a_converter_or_runtime_failure_is_one_line(small_keras, tmp_path, capsys, monkeypatch,
                                                     stage):
    """Whatever a converter or runtime raises (here made to fail) is reported in one line,
    and the file already at OUTPUT stays."""
    _, source = small_keras

    def fail(*args, **kwargs):
        raise RuntimeError("simulated failure\nwith a long second line")

    monkeypatch.setattr(ef, "write" if stage == "converter" else "load", fail)
    out = tmp_path / "net.onnx"
    out.write_bytes(b"previous")
    refused([source, "--format", "onnx", "--output", str(out)], capsys,
            "RuntimeError: simulated failure", "nothing was written")
    assert out.read_bytes() == b"previous" and leftovers(tmp_path) == ["net.onnx"]


def test_missing_runtime_names_the_extra(small_keras, tmp_path, capsys, monkeypatch):
    _, source = small_keras
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # importlib finds no tf2onnx
    line = refused([source, "--format", "onnx", "--output", str(tmp_path / "x.onnx")], capsys,
                   "tf2onnx", "[export]")
    assert "pip install" in line
    assert leftovers(tmp_path) == []
