"""The three deployment formats of `python -m spherenet_tf.export`: write one, run one.

- SavedModel: the Keras model itself, traced in eval mode (BN moving statistics) under
  a `serving_default` signature `images -> logits`; loading it needs TensorFlow only.
- LiteRT (TFLite): the inference rewrite of `export_graph` (filter terms folded, acos and
  asin as ATAN2), variables frozen, built-in ops only; `quantize='dynamic'` stores the
  weights as int8 (dynamic-range quantisation).
- ONNX: the same rewrite with Acos / Asin kept (ONNX has both), converted by tf2onnx.

`load(fmt, path)` returns a runner that evaluates an exported file on float32 NHWC
images with the format's own runtime (tf.saved_model, ai-edge-litert, onnxruntime); the
export command's check, the tests and benchmarks/export_*.py use it.
"""

import logging

import numpy as np
import tensorflow as tf

from .export_graph import UnsupportedLayerError, inference_model  # noqa: F401  (raised by write)

FORMATS = ("savedmodel", "tflite", "onnx")
#: Python modules each format needs beyond TensorFlow (the `export` extra installs them):
#: the converter and the runtime the export command checks the file with.
NEEDS = {"savedmodel": (), "tflite": ("ai_edge_litert",), "onnx": ("tf2onnx", "onnx", "onnxruntime")}
#: The ONNX operator set written (tf2onnx 1.17 writes up to 18).
ONNX_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def input_spec(model, batch=None):
    """The TensorSpec of the model's input: float32 NHWC, batch `batch` (None = dynamic)."""
    shape = tuple(model.inputs[0].shape[1:])
    return tf.TensorSpec((batch,) + shape, tf.float32, name=INPUT_NAME)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------
def write_savedmodel(model, path, batch=None):
    """The Keras model as a SavedModel at `path` (a new folder), signature
    `serving_default`: {'images': float32 [batch, H, W, C]} -> {'logits': [batch, n_class]}."""
    # A plain tf.Module rather than keras.export.ExportArchive, which (Keras 3.15) stores
    # every variable twice ('variables' and '_all_variables'): a file twice the size.
    module = tf.Module()
    module.weights = [v.value for v in model.variables]  # the tf.Variables behind them

    @tf.function(input_signature=[input_spec(model, batch)])
    def serve(images):
        return {OUTPUT_NAME: model(images, training=False)}

    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})


def _frozen_function(model, batch, target):
    """The eval-mode rewrite as a concrete function with the weights as constants."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    folded = inference_model(model, target)
    fn = tf.function(lambda images: {OUTPUT_NAME: folded(images, training=False)},
                     input_signature=[input_spec(model, batch)])
    # Frozen: LiteRT would otherwise keep BN's variables as READ_VARIABLE ops that
    # nothing initialises (NaN outputs).
    return convert_variables_to_constants_v2(fn.get_concrete_function())


def tflite_bytes(model, batch=None, quantize=None):
    """The LiteRT flatbuffer of the model (built-in ops only), as bytes."""
    # (an empty trackable: the function holds no variables; without one TF warns that
    # the deprecated conversion path is taken)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [_frozen_function(model, batch, "litert")], tf.Module())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "dynamic":
        # no representative data set: weights int8, activations float (dynamic range)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize is not None:
        raise ValueError(f"quantize must be None or 'dynamic'. Received: quantize={quantize!r}")
    return converter.convert()


def write_tflite(model, path, batch=None, quantize=None):
    with open(path, "wb") as f:
        f.write(tflite_bytes(model, batch, quantize))


def onnx_bytes(model, batch=None):
    """The ONNX model (opset `ONNX_OPSET`) of the model, serialised."""
    import tf2onnx

    # tf2onnx logs every optimiser pass it skips; only its errors matter here
    tf2onnx.logging.set_level(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    frozen = _frozen_function(model, batch, "onnx")
    proto, _ = tf2onnx.convert.from_function(
        tf.function(frozen), input_signature=[input_spec(model, batch)], opset=ONNX_OPSET,
    )
    # tf2onnx names the output after the graph's Identity op; serving code wants 'logits'
    old = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [OUTPUT_NAME if o == old else o for o in node.output]
    proto.graph.output[0].name = OUTPUT_NAME
    return proto.SerializeToString()


def write_onnx(model, path, batch=None):
    with open(path, "wb") as f:
        f.write(onnx_bytes(model, batch))


def write(model, fmt, path, batch=None, quantize=None):
    """Write `model` in format `fmt` (one of FORMATS) at `path`."""
    if fmt == "savedmodel":
        write_savedmodel(model, path, batch)
    elif fmt == "tflite":
        write_tflite(model, path, batch, quantize)
    elif fmt == "onnx":
        write_onnx(model, path, batch)
    else:
        raise ValueError(f"Unknown format {fmt!r}. Allowed values are: {', '.join(FORMATS)}.")


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------
class Runner:
    """A loaded exported model: `runner(images)` -> logits (NumPy float32).

    `prepare(batch)` does the per-shape work (LiteRT's tensor allocation) ahead, so that
    timed calls measure inference alone."""

    def prepare(self, batch):  # noqa: B027 - optional hook
        pass


class SavedModelRunner(Runner):
    def __init__(self, path):
        self.fn = tf.saved_model.load(str(path)).signatures["serving_default"]

    def __call__(self, images):
        return self.fn(**{INPUT_NAME: tf.constant(images, tf.float32)})[OUTPUT_NAME].numpy()


class LiteRTRunner(Runner):
    def __init__(self, path, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.shape = None

    def prepare(self, batch):
        shape = [batch] + list(self.input["shape"][1:])
        if self.shape != shape:
            fixed = int(self.input["shape_signature"][0]) != -1
            if fixed and batch != int(self.input["shape"][0]):
                raise ValueError(f"this LiteRT model was exported for batch {self.input['shape'][0]} "
                                 f"(--batch); received a batch of {batch}")
            self.interpreter.resize_tensor_input(self.input["index"], shape)
            self.interpreter.allocate_tensors()
            self.output = self.interpreter.get_output_details()[0]
            self.shape = shape

    def __call__(self, images):
        images = np.ascontiguousarray(images, np.float32)
        self.prepare(images.shape[0])
        self.interpreter.set_tensor(self.input["index"], images)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"]).copy()


class OnnxRunner(Runner):
    def __init__(self, path, num_threads=None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        self.session = onnxruntime.InferenceSession(str(path), options,
                                                    providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images):
        return self.session.run([OUTPUT_NAME], {self.input_name: np.asarray(images, np.float32)})[0]


def load(fmt, path, num_threads=None):
    """A `Runner` of the exported file `path` in format `fmt`."""
    if fmt == "savedmodel":
        return SavedModelRunner(path)
    if fmt == "tflite":
        return LiteRTRunner(path, num_threads)
    if fmt == "onnx":
        return OnnxRunner(path, num_threads)
    raise ValueError(f"Unknown format {fmt!r}. Allowed values are: {', '.join(FORMATS)}.")
