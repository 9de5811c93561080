"""The one training loop behind every training script.

Ports the loop of the original `train_spherenet.py`, `baseline/train_baseline.py`,
`sphere_resnet/train_sphere_resnet.py` and `sphere_resnet/baseline/train_baseline.py`
(wy1iu/SphereNet), which the original copied into each folder:

* Adam (beta1 0.9, beta2 0.999, eps 1e-8), lr divided by 10 from iteration 34000 and
  again from 54000; iterations 0 ... max_epoch (64001 steps by default);
  loss = loss2 + weight decay + orthogonality constraints.
* every 100 iterations `====iteration_%d: fit=%.4f, reg=%.4f, orth=%.4f, acc=%.4f`
  (without `orth=` for models that have no orthogonality constraint), every 500 the
  whole-test-set accuracy `++++iteration_%d: test acc=%.4f`, every 16000 a checkpoint
  `model_file + str(iteration)`; the same lines go to `model_file/training.log`.

It is a custom loop (`strategy.run` of a replica step inside a `tf.function`) rather
than `Model.fit`, because Keras 3's `fit` fails under MultiWorkerMirroredStrategy
(keras-team/keras#20585) and because the original is an iteration loop.  Keras
supplies the optimizer, the model saving and the layers.

The scripts are short files of settings; see `main`.
"""

import argparse
import dataclasses
import difflib
import json
import math
import os
import re
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from . import cifar10_input
from .layers import regularization_terms
from .losses import loss2_per_example
from .checks import InputError, check_dataset
from .resume import (CheckpointUnreadable, ResumeCheckpoints, checkpoint_number, fault_point,
                     write_checkpoint)

LOG_LINE = "====iteration_%d: fit=%.4f, reg=%.4f, orth=%.4f, acc=%.4f"
LOG_LINE_NO_ORTH = "====iteration_%d: fit=%.4f, reg=%.4f, acc=%.4f"
TEST_LINE = "++++iteration_%d: test acc=%.4f"
LOG_FILE = "training.log"
METRICS_FILE = "metrics.jsonl"
SETTINGS_FILE = "settings.json"
FINAL_MODEL = "final.keras"
RESUME_DIR = "resume"
STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device")

#: Adam of the original (tf.train.AdamOptimizer defaults; Keras's epsilon is 1e-7).
ADAM = dict(beta_1=0.9, beta_2=0.999, epsilon=1e-8)
#: Iterations from which the learning rate is divided by 10 (the original's `i == 34000`).
LR_BOUNDARIES = (34000, 54000)


# ---------------------------------------------------------------------------
# Learning-rate schedule
# ---------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="SphereNet")
class OriginalSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """lr for iterations < 34000, lr/10 from 34000, lr/100 from 54000.

    The original sets `lr = lr/10` when `i == 34000`, before running step i; Keras
    evaluates the schedule at `optimizer.iterations`, which is i during step i.  The
    values are computed in Python floats as the original's (`1e-3/10/10`).
    """

    def __init__(self, lr=1e-3, boundaries=LR_BOUNDARIES):
        self.lr = float(lr)
        self.boundaries = tuple(int(b) for b in boundaries)

    def values(self):
        out = [self.lr]
        for _ in self.boundaries:
            out.append(out[-1] / 10)
        return out

    def __call__(self, step):
        values = self.values()
        step = tf.cast(step, tf.int64)
        lr = tf.constant(values[0], tf.float32)
        for boundary, value in zip(self.boundaries, values[1:]):
            lr = tf.where(step >= boundary, tf.constant(value, tf.float32), lr)
        return lr

    def at(self, iteration):
        """The learning rate of iteration `iteration` as a Python float."""
        values = self.values()
        return values[sum(iteration >= b for b in self.boundaries)]

    def get_config(self):
        return {"lr": self.lr, "boundaries": list(self.boundaries)}


# ---------------------------------------------------------------------------
# Settings and command line
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Settings:
    """Every setting of a run; the scripts' settings blocks give the first group."""

    # the original's settings block
    n_class: int = 10
    batch_sz: int = 128
    batch_test: int = 100
    max_epoch: int = 64000
    lr: float = 1e-3
    data_path: str = "cifar10/"
    model_file: str = "models/"
    norm: str = "cosine"
    w_norm: str = "none"
    augmentation: str = "flip"
    # added by the port
    strategy: str = "auto"
    gpus: str = ""
    cpu_replicas: int = 1
    bn_per_replica: bool = False
    seed: int = 0
    log_every: int = 100
    eval_every: int = 500
    save_every: int = 16000
    checkpoint_every: int = 500
    restart: bool = False
    deterministic: bool = False
    mixed_precision: bool = False
    jit_compile: bool = False
    progress: str = "auto"
    download: bool = True
    tf1_checkpoint: str = ""
    eval_only: bool = False
    # beyond the original (spherenet_tf/ga_softmax.py)
    loss: str = "loss2"
    margin: float = 1.0


PORT_OPTIONS = {
    "strategy": "tf.distribute strategy: auto (MirroredStrategy over all visible GPUs, the "
                "default strategy on CPU), mirrored, multi_worker (TF_CONFIG), one_device",
    "gpus": "GPUs to use, e.g. '0' or '0,1' (sets CUDA_VISIBLE_DEVICES as the original "
            "scripts did); empty = leave the environment alone",
    "cpu_replicas": "split the CPU into this many logical devices, one replica each (to try "
                    "distribution without GPUs; with --strategy auto or mirrored)",
    "bn_per_replica": "compute BN batch statistics on each replica's share of the batch "
                      "(default: over the whole global batch, as the original's single GPU did)",
    "seed": "seed of the data order, augmentation and initial weights",
    "log_every": "iterations between the '====' training lines (original: 100)",
    "eval_every": "iterations between test-set evaluations (original: 500)",
    "save_every": "iterations between checkpoints model_file/<iteration> (original: 16000)",
    "checkpoint_every": "iterations between resume checkpoints in model_file/resume/ "
                        "(a killed run loses at most this many)",
    "restart": "start from iteration 0, deleting a previous run's resume checkpoints in "
               "model_file (default: continue it)",
    "deterministic": "enable TF's deterministic ops (bit-reproducible runs, slower)",
    "mixed_precision": "mixed precision: float16 compute with loss scaling on GPUs, bfloat16 "
                       "on CPUs; variables, SphereConv norms and angles, BN and the loss stay float32 "
                       "(under float16, SphereConvs with an angle compute entirely in float32)",
    "jit_compile": "compile the training step with XLA",
    "progress": "progress bar on stderr: auto (when stderr is a terminal), on, off",
    "download": "download CIFAR-10 into data_path when it is missing (needs internet)",
    "tf1_checkpoint": "a checkpoint of the original TF1 code (e.g. its models/16000): "
                      "evaluate it with --eval_only, or continue training from it (weights "
                      "and Adam state; a resume checkpoint in model_file takes precedence)",
    "eval_only": "only evaluate: print the test accuracy line of --tf1_checkpoint, or else "
                 "of model_file's latest checkpoint; writes nothing",
    "loss": "loss2 (the original's) or ga_softmax (generalised angular softmax with an angular "
            "margin; g is the score layer's --w_norm: linear, cosine or sigmoid)",
    "margin": "angular margin m >= 1 of --loss ga_softmax (1 = no margin)",
}


def _parse_bool(text):
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _typed(kind, name):
    def parse(text):
        if kind is bool:
            return _parse_bool(text)
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--{name} expects {'an integer' if kind is int else 'a number' if kind is float else kind.__name__}, "
                f"got {text!r}"
            ) from None

    parse.__name__ = kind.__name__
    return parse


def _setting_comments(script):
    """`name = value  # comment` lines of a script's settings block."""
    comments = {}
    try:
        with open(script) as f:
            for line in f:
                m = re.match(r"^(\w+)\s*=\s*[^#]*#\s*(.*)$", line)
                if m:
                    comments[m.group(1)] = m.group(2).strip()
    except OSError:
        pass
    return comments


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, known=(), **kwargs):
        super().__init__(*args, **kwargs)
        self._known = list(known)

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            flags = [u for u in unknown if u.startswith("-")] or unknown
            hints = []
            for flag in flags:
                name = flag.lstrip("-").split("=")[0].removeprefix("no-")
                close = difflib.get_close_matches(name, self._known, n=1, cutoff=0.6)
                hints.append(f"{flag} (did you mean --{close[0]}?)" if close else flag)
            self.error(
                "unrecognized arguments: " + ", ".join(hints) + ". Run with --help for the "
                "settings and options this script accepts."
            )
        return parsed


def parse_settings(script_settings, script, argv=None, description=None, extra_options=None,
                   help_from=()):
    """Settings of a run: the script's settings block, overridden by the command line.

    `script_settings` maps setting names to their values in the script (e.g. its
    `globals()`); `--help` shows each setting's comment from the script (or from the
    files in `help_from`, e.g. the training script an example builds on).  Relative paths there are taken relative to the script's folder (the
    original scripts were run from their folder), relative paths given on the command
    line relative to the current directory.
    """
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    block = {k: script_settings[k] for k in fields if k in script_settings}
    comments = {}
    for source in list(help_from) + [script]:
        comments.update(_setting_comments(source))
    known = list(fields) + list(extra_options or {})
    parser = _Parser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
        known=known,
    )
    group = parser.add_argument_group("settings (the script's settings block; override any)")
    port = parser.add_argument_group("options added by the port")
    defaults = Settings()
    for name, field in fields.items():
        default = block.get(name, getattr(defaults, name))
        kind = type(getattr(defaults, name))
        help_text = comments.get(name) if name in block else PORT_OPTIONS.get(name, "")
        target = group if name in block else port
        if name in ("norm", "w_norm") and name not in block:
            continue  # only scripts whose model has these switches accept them
        if name in ("loss", "margin") and "w_norm" not in block:
            continue  # GA-softmax needs a weight-normalised score (--w_norm)
        if name == "augmentation" and name not in block:
            continue
        if kind is bool:
            target.add_argument(f"--{name}", action=argparse.BooleanOptionalAction,
                                default=default, help=help_text or " ")
        else:
            target.add_argument(f"--{name}", type=_typed(kind, name), default=default,
                                help=help_text or " ", metavar=kind.__name__.upper())
    for name, (kind, default, help_text) in (extra_options or {}).items():
        if kind is bool:
            port.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=default,
                              help=help_text)
        else:
            port.add_argument(f"--{name}", type=_typed(kind, name), default=default,
                              help=help_text, metavar=kind.__name__.upper())
    args = parser.parse_args(argv)
    values = vars(args)
    base = os.path.dirname(os.path.abspath(script))
    argv_text = " ".join(argv if argv is not None else sys.argv[1:])
    for key in ("data_path", "model_file"):
        given = re.search(rf"--{key}(=|\s)", argv_text) is not None
        if not given and not os.path.isabs(values[key]):
            keep_slash = values[key].endswith(("/", os.sep))
            values[key] = os.path.normpath(os.path.join(base, values[key])) + (os.sep if keep_slash else "")
    extras = {k: values.pop(k) for k in list(extra_options or {})}
    settings = Settings(**values)
    validate_settings(settings, parser)
    return settings, extras


def validate_settings(s, parser=None):
    def fail(message):
        if parser is not None:
            parser.error(message)
        raise ValueError(message)

    from .sphere_ops import NORMS, W_NORMS

    if s.strategy not in STRATEGIES:
        close = difflib.get_close_matches(s.strategy, STRATEGIES, n=1)
        fail(f"--strategy {s.strategy!r} is not one of {', '.join(STRATEGIES)}"
             + (f" (did you mean {close[0]!r}?)" if close else ""))
    if s.norm not in NORMS:
        close = difflib.get_close_matches(s.norm, NORMS, n=1)
        fail(f"--norm {s.norm!r} is not one of {', '.join(NORMS)}"
             + (f" (did you mean {close[0]!r}?)" if close else ""))
    if s.w_norm not in W_NORMS:
        close = difflib.get_close_matches(s.w_norm, W_NORMS, n=1)
        fail(f"--w_norm {s.w_norm!r} is not one of {', '.join(W_NORMS)}"
             + (f" (did you mean {close[0]!r}?)" if close else ""))
    from .ga_softmax import G_FUNCTIONS, LOSSES

    if s.loss not in LOSSES:
        close = difflib.get_close_matches(s.loss, LOSSES, n=1)
        fail(f"--loss {s.loss!r} is not one of {', '.join(LOSSES)}"
             + (f" (did you mean {close[0]!r}?)" if close else ""))
    if not (math.isfinite(s.margin) and s.margin >= 1):
        fail(f"--margin must be a number >= 1 (1 = no margin), got {s.margin}")
    if s.loss == "loss2" and s.margin != 1:
        fail(f"--margin {s.margin} needs --loss ga_softmax (loss2 has no margin)")
    if s.loss == "ga_softmax" and s.w_norm not in G_FUNCTIONS:
        fail(f"--loss ga_softmax needs a weight-normalised score layer: --w_norm one of "
             f"{', '.join(G_FUNCTIONS)} (g of the logit |x| g(theta)), got --w_norm {s.w_norm!r}")
    if s.augmentation not in cifar10_input.AUGMENTATIONS:
        fail(f"--augmentation {s.augmentation!r} is not one of {', '.join(cifar10_input.AUGMENTATIONS)}")
    if s.progress not in ("auto", "on", "off"):
        fail(f"--progress {s.progress!r} is not one of auto, on, off")
    for name in ("n_class", "batch_sz", "batch_test", "log_every", "eval_every", "save_every",
                 "checkpoint_every", "cpu_replicas"):
        if getattr(s, name) < 1:
            fail(f"--{name} must be at least 1, got {getattr(s, name)}")
    if s.max_epoch < 0:
        fail(f"--max_epoch must be >= 0, got {s.max_epoch}")
    if not s.lr > 0:
        fail(f"--lr must be positive, got {s.lr}")


# ---------------------------------------------------------------------------
# Distribution
# ---------------------------------------------------------------------------
def configure_devices(settings):
    """Apply --gpus / --cpu_replicas before TF initialises its devices."""
    if settings.gpus:
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        os.environ["CUDA_VISIBLE_DEVICES"] = settings.gpus
    if settings.cpu_replicas > 1:
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * settings.cpu_replicas
        )


def make_strategy(name, cpu_replicas=1):
    """A tf.distribute strategy from its name (see PORT_OPTIONS['strategy']).

    Call it before anything else touches TensorFlow: MultiWorkerMirroredStrategy
    must configure the collective ops before the runtime starts.
    """
    if name == "multi_worker":
        from .checks import check_tf_config

        check_tf_config(os.environ.get("TF_CONFIG"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if gpus:
            return tf.distribute.MirroredStrategy()
        if cpu_replicas > 1:  # --cpu_replicas asks for replicas: honour it (as 'mirrored')
            cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
            return tf.distribute.MirroredStrategy(cpus[:cpu_replicas])
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus[:max(cpu_replicas, 1)])
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    raise ValueError(f"unknown strategy {name!r}; allowed: {', '.join(STRATEGIES)}")


def worker_role(strategy):
    """(is_chief, task_id) of this process; single-process strategies are the chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "cluster_spec", None) or not resolver.cluster_spec().as_dict():
        return True, 0
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True, task_id or 0
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return (task_type == "worker" and task_id == 0 and not has_chief), task_id


# ---------------------------------------------------------------------------
# Output: the original's lines, a log file, a progress bar
# ---------------------------------------------------------------------------
class RunLog:
    """Prints the original's lines to stdout and appends them to model_file/training.log.

    Only the chief writes.  On resume the log is cut back to the resumed iteration, so
    the file reads as one uninterrupted run.
    """

    def __init__(self, path, enabled=True, progress=None):
        self.path = path
        self.enabled = enabled
        self.progress = progress

    @property
    def metrics_path(self):
        return os.path.join(os.path.dirname(self.path), METRICS_FILE)

    def start_fresh(self):
        for path in (self.path, self.metrics_path):
            if self.enabled and os.path.exists(path):
                os.remove(path)

    def truncate_after(self, iteration):
        """Drop what a killed run logged after `iteration` (it will be redone)."""
        if not self.enabled:
            return
        for path, pattern in [(self.path, r"^(?:====|\+\+\+\+)iteration_(\d+):"),
                              (self.metrics_path, r'^\{"iteration": (\d+)')]:
            if not os.path.exists(path):
                continue
            kept = []
            with open(path) as f:
                for line in f:
                    m = re.match(pattern, line)
                    if (m and int(m.group(1)) > iteration) or not line.endswith("\n"):
                        break  # later lines, or a line a kill cut short
                    kept.append(line)
            _atomic_write_text(path, "".join(kept))

    def metrics(self, iteration, **values):
        """Full-precision values, one JSON object per line (model_file/metrics.jsonl)."""
        if not self.enabled:
            return
        record = {"iteration": iteration, **values, "time": round(time.time(), 3)}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def line(self, text):
        if not self.enabled:
            return
        if self.progress:
            self.progress.clear()
        print(text, flush=True)
        with open(self.path, "a") as f:
            f.write(text + "\n")

    def note(self, text):
        """Informational text (stderr), kept out of the original-format log."""
        if self.enabled:
            if self.progress:
                self.progress.clear()
            print(text, file=sys.stderr, flush=True)


class ProgressBar:
    """A one-line progress bar on stderr (stdout keeps only the original's lines)."""

    def __init__(self, total, first=0, stream=sys.stderr):
        self.total = total
        self.first = first
        self.stream = stream
        self.start = time.time()
        self.last = 0.0
        self.shown = False

    def update(self, iteration, text=""):
        now = time.time()
        if now - self.last < 0.5 and iteration < self.total - 1:
            return
        self.last = now
        done = iteration - self.first + 1
        rate = done / max(now - self.start, 1e-9)
        left = (self.total - 1 - iteration) / rate if rate > 0 else float("inf")
        width = 30
        filled = int(width * (iteration + 1) / self.total)
        eta = time.strftime("%H:%M:%S", time.gmtime(left)) if math.isfinite(left) else "--:--:--"
        msg = (f"\r[{'=' * filled}{'.' * (width - filled)}] {iteration}/{self.total - 1} "
               f"{rate:6.1f} it/s ETA {eta} {text}")
        self.stream.write(msg[:160])
        self.stream.flush()
        self.shown = True

    def clear(self):
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


def _atomic_write_text(path, text):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------
def precision_policy(mixed_precision):
    """Keras dtype policy of a run: 'float32', or with --mixed_precision 'mixed_float16'
    where a GPU is visible (tensor cores; needs loss scaling) and 'mixed_bfloat16' on CPUs
    (bfloat16 has float32's range, so no loss scaling)."""
    if not mixed_precision:
        return "float32"
    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


class TrainingError(RuntimeError):
    """A run cannot start or continue; the message says why and what to do."""


class WorkerLost(TrainingError):
    """A multi-worker run lost a worker; restarting every worker resumes it (exit code 75)."""


#: Exit codes of `main`: bad input or a failed run, and a lost worker (restart all).
EXIT_ERROR = 2
EXIT_RESTART = 75  # EX_TEMPFAIL: starting again with the same command continues the run


def _nonfinite_flag(fit, reg, orth, grads, loss_scaled):
    """1.0 if this replica's loss terms, or (without loss scaling) any gradient, hold
    NaN/Inf, else 0.0.  With loss scaling, LossScaleOptimizer handles overflowing
    gradients itself (it skips the step and lowers the scale)."""
    ok = tf.reduce_all(tf.math.is_finite(tf.stack([fit, reg, orth])))
    if not loss_scaled:
        ok = tf.logical_and(ok, tf.reduce_all(
            tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])))
    return 1.0 - tf.cast(ok, tf.float32)


def nonfinite_source(model, fit, reg, orth, images=None):
    """Best guess of where a NaN/Inf loss came from, as text.

    In this order: the first layer (model order) whose weights hold NaN/Inf (BN moving
    averages included: a non-finite forward pass updates them right after its
    source); for a non-finite `reg` or `orth`, the first variable whose weight decay
    or layer whose orthogonality loss overflows; the first layer whose inference
    output on `images` (the batch of the step) is not finite.
    """
    from .layers import sphere_conv_layers

    found = first_nonfinite_layer(model)
    if found:
        return found
    if not math.isfinite(reg):
        for variable in model.trainable_variables:
            regularizer = getattr(variable, "regularizer", None)
            if regularizer is not None and not np.isfinite(float(regularizer(variable))):
                return f"{variable.path} (its weight decay overflows: weights too large, lower --lr)"
    if not math.isfinite(orth):
        for layer in sphere_conv_layers(model):
            if layer.orth and not np.isfinite(float(layer.orthogonality_loss())):
                return f"{layer.name} (its orthogonality loss overflows: filters too large, lower --lr)"
    found = first_nonfinite_layer(model, images) if images is not None else None
    if found:
        return found
    return ("none of the layers' weights or inference outputs: the overflow is in the "
            "training-mode forward pass, the loss or the gradients")


def model_has_orth(model):
    from .layers import sphere_conv_layers

    return any(layer.orth for layer in sphere_conv_layers(model))


def first_nonfinite_layer(model, images=None):
    """Name of the first layer (in model order) whose weights, or else whose output on
    `images`, contain NaN or Inf; None if everything is finite."""
    for layer in model.layers:
        for w in layer.weights:
            if not np.all(np.isfinite(w.numpy())):
                return f"{layer.name} (its weight {w.name!r} holds NaN/Inf)"
    if images is not None:
        outputs = [l.output for l in model.layers[1:]]
        probe = keras.Model(model.inputs, outputs)
        for layer, value in zip(model.layers[1:], probe(images, training=False)):
            if not np.all(np.isfinite(np.asarray(value))):
                return f"{layer.name} (its inference output on the step's batch is NaN/Inf)"
    return None


class Trainer:
    """One training run: strategy, data, model, optimizer, loop, logs and checkpoints.

    Args:
      settings: a `Settings`.
      build_model: `settings -> keras.Model` (called inside the strategy's scope).
      data: optional ((train_x, train_y), (test_x, test_y)) arrays; read from
        `settings.data_path` when omitted.
    """

    def __init__(self, settings, build_model, data=None, script=None):
        self.s = s = settings
        self.script = script
        self.strategy = make_strategy(s.strategy, s.cpu_replicas)  # first: see make_strategy
        if s.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(s.seed)
        self.precision_policy = precision_policy(s.mixed_precision)
        keras.mixed_precision.set_global_policy(self.precision_policy)
        self.n_replicas = self.strategy.num_replicas_in_sync
        for name in ("batch_sz", "batch_test"):
            value = getattr(s, name)
            if value % self.n_replicas:
                raise TrainingError(
                    f"{name}={value} is not divisible by the {self.n_replicas} replicas of the "
                    f"{type(self.strategy).__name__}: every replica must get the same share of "
                    f"the batch. Use a multiple of {self.n_replicas} (e.g. --{name} "
                    f"{value // self.n_replicas * self.n_replicas or self.n_replicas}) or fewer devices."
                )
        self.is_chief, self.task_id = worker_role(self.strategy)
        progress = None
        if self.is_chief and (s.progress == "on" or (s.progress == "auto" and sys.stderr.isatty())):
            progress = ProgressBar(s.max_epoch + 1)
        self.progress = progress
        self._prepare_model_dir()
        self.log = RunLog(os.path.join(self._dir(), LOG_FILE), enabled=self.is_chief, progress=progress)

        if data is None:
            data = cifar10_input.load_cifar10(s.data_path, download=s.download)

        with self.strategy.scope():
            self.model = build_model(s)
            if self.n_replicas > 1 and not s.bn_per_replica:
                for layer in self.model.layers:
                    if isinstance(layer, keras.layers.BatchNormalization):
                        layer.synchronized = True
            self.schedule = OriginalSchedule(s.lr)
            optimizer = keras.optimizers.Adam(learning_rate=self.schedule, **ADAM)
            if self.precision_policy == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            self.optimizer = optimizer
            self.optimizer.build(self.model.trainable_variables)
            # [iteration of the first non-finite step or -1, number of such steps]
            # and [fit, reg, orth] of the first one (see _build_functions).
            self._nonfinite = tf.Variable([-1, 0], dtype=tf.int64, trainable=False)
            self._nonfinite_values = tf.Variable([0.0, 0.0, 0.0], trainable=False)
        try:
            data = check_dataset(data, s.n_class, self.model.input_shape[1:], s.batch_sz)
        except InputError as e:
            raise TrainingError(str(e)) from None
        (self.train_x, self.train_y), (self.test_x, self.test_y) = data
        self.n_test = len(self.test_x)
        self.has_orth = model_has_orth(self.model)
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer)
        self.resume = ResumeCheckpoints(
            self.checkpoint, os.path.join(self._dir(writable=True), RESUME_DIR),
            read_directory=os.path.join(s.model_file, RESUME_DIR),
        )
        if self.is_chief:
            self.resume.remove_partial()
        self._build_functions()

    # -- files ---------------------------------------------------------------
    def _dir(self, writable=False):
        """model_file for the chief; a private scratch folder for other workers' writes."""
        if writable and not self.is_chief:
            return os.path.join(self.s.model_file, f".worker-{self.task_id}")
        return self.s.model_file

    def _prepare_model_dir(self):
        path = self._dir(writable=True)
        try:
            os.makedirs(path, exist_ok=True)
            probe = os.path.join(path, f".write-test-{os.getpid()}")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as e:
            raise TrainingError(
                f"model_file folder {path!r} cannot be written ({e.strerror}). Checkpoints, the "
                "log and the final model go there: choose a writable folder with --model_file."
            ) from None

    def settings_record(self):
        record = dataclasses.asdict(self.s)
        record.update(
            model=self.model.name,
            parameters=int(self.model.count_params()),
            replicas=self.n_replicas,
            strategy_class=type(self.strategy).__name__,
            precision_policy=self.precision_policy,
            script=os.path.abspath(self.script) if self.script else None,
            tensorflow=tf.__version__,
            keras=keras.__version__,
        )
        return record

    # -- compiled steps --------------------------------------------------------
    def _build_functions(self):
        s, strategy, model, optimizer = self.s, self.strategy, self.model, self.optimizer
        global_batch = s.batch_sz
        n_replicas = self.n_replicas
        variables = model.trainable_variables
        margin_forward = None
        if s.loss == "ga_softmax":  # beyond the original: loss on the margin logits
            from .ga_softmax import margin_forward as make_margin_forward

            try:
                margin_forward = make_margin_forward(model, s.margin)
            except ValueError as e:
                raise TrainingError(str(e)) from None

        def replica_step(images, labels):
            with tf.GradientTape() as tape:
                if margin_forward is None:
                    logits = model(images, training=True)
                    per_example = loss2_per_example(labels, logits, s.n_class)
                else:
                    logits, fit_logits = margin_forward(images, labels)
                    per_example = loss2_per_example(labels, fit_logits, s.n_class)
                # This replica's share of the batch mean, so that the all-reduced (summed)
                # gradients are those of the original's mean over the global batch.
                fit = tf.reduce_sum(per_example) / global_batch
                reg, orth = regularization_terms(model)
                loss = fit + (reg + orth) / n_replicas
                if self.precision_policy == "mixed_float16":
                    loss = optimizer.scale_loss(loss)
            grads = tape.gradient(loss, variables)
            predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
            correct = tf.reduce_sum(tf.cast(tf.equal(predictions, tf.cast(labels, tf.int32)), tf.float32))
            loss_scaled = self.precision_policy == "mixed_float16"
            return fit, reg, orth, correct, grads, _nonfinite_flag(fit, reg, orth, grads, loss_scaled)

        def replica_apply(grads):
            optimizer.apply_gradients(zip(grads, variables))

        if s.jit_compile:
            replica_step = tf.function(replica_step, jit_compile=True)

        nonfinite, nonfinite_values = self._nonfinite, self._nonfinite_values

        @tf.function
        def train_step(iterator):
            images, labels = next(iterator)
            fit, reg, orth, correct, grads, bad = strategy.run(replica_step, args=(images, labels))
            sum_, mean = tf.distribute.ReduceOp.SUM, tf.distribute.ReduceOp.MEAN
            fit, reg, orth = (strategy.reduce(sum_, fit, axis=None), strategy.reduce(mean, reg, axis=None),
                              strategy.reduce(mean, orth, axis=None))
            # A step whose loss (or, in float32, gradient) is NaN/Inf on any replica is not
            # applied: the weights stay those of the last good iteration, for the
            # diagnosis and the checkpoints; the loop stops at its next check.
            ok = tf.equal(strategy.reduce(sum_, bad, axis=None), 0.0)

            def apply():
                strategy.run(replica_apply, args=(grads,))
                return tf.constant(True)

            def record():
                first = tf.where(nonfinite[0] < 0, optimizer.iterations, nonfinite[0])
                nonfinite.assign(tf.stack([first, nonfinite[1] + 1]))
                nonfinite_values.assign(tf.where(nonfinite[1] == 1, tf.stack([fit, reg, orth]),
                                                 nonfinite_values))
                return tf.constant(False)

            tf.cond(ok, apply, record)
            return fit, reg, orth, strategy.reduce(sum_, correct, axis=None) / global_batch

        def replica_eval(images, labels):
            logits = model(images, training=False)
            predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
            correct = tf.reduce_sum(tf.cast(tf.equal(predictions, tf.cast(labels, tf.int32)), tf.float32))
            return correct, tf.cast(tf.shape(labels)[0], tf.float32)

        @tf.function
        def eval_step(images, labels):
            correct, count = strategy.run(replica_eval, args=(images, labels))
            sum_ = tf.distribute.ReduceOp.SUM
            return strategy.reduce(sum_, correct, axis=None), strategy.reduce(sum_, count, axis=None)

        self._train_step = train_step
        self._eval_step = eval_step

    def _train_iterator(self, start_iteration):
        s = self.s

        def dataset_fn(ctx):
            shard = (ctx.input_pipeline_id, ctx.num_input_pipelines)
            per_replica = ctx.get_per_replica_batch_size(s.batch_sz)
            ds = cifar10_input.train_dataset(
                self.train_x, self.train_y, s.batch_sz, seed=s.seed,
                start_iteration=start_iteration, augmentation=s.augmentation, shard=shard,
            )
            if per_replica != s.batch_sz // ctx.num_input_pipelines:
                ds = ds.rebatch(per_replica)
            return ds

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def _test_dataset(self):
        s = self.s

        def dataset_fn(ctx):
            shard = (ctx.input_pipeline_id, ctx.num_input_pipelines)
            per_replica = ctx.get_per_replica_batch_size(s.batch_test)
            ds = cifar10_input.test_dataset(self.test_x, self.test_y, s.batch_test, shard=shard)
            if per_replica != s.batch_test // ctx.num_input_pipelines:
                ds = ds.rebatch(per_replica)
            return ds

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    # -- public API ------------------------------------------------------------
    @property
    def iteration(self):
        """Index of the next iteration to run (= Adam steps applied so far)."""
        return int(self.optimizer.iterations.numpy())

    def evaluate(self):
        """Accuracy over the whole test set (the original's `test acc`)."""
        correct = total = 0.0
        for images, labels in self._test_dataset():
            c, n = self._eval_step(images, labels)
            correct += float(c)
            total += float(n)
        return correct / max(total, 1.0)

    def restore_resume_state(self):
        """Continue a previous run of the same settings from its last resume checkpoint.
        Returns the iteration it resumes at (0 for a fresh run).

        The newest checkpoint that reads in full is used: one torn by a crash is
        reported and skipped (the one before it is intact, see `resume`).
        """
        folder = os.path.join(self.s.model_file, RESUME_DIR)
        if self.s.restart:
            if self.is_chief:
                self.resume.clear()
            return self._start_from_tf1_checkpoint() if self.s.tf1_checkpoint else 0
        try:
            latest = self.resume.latest_readable(report=self.log.note)
        except CheckpointUnreadable as e:
            raise TrainingError(
                f"no resume checkpoint in {folder} can be read ({e}). They were damaged (a full "
                "disk or failing storage?). Start over with --restart (deletes them), or use "
                "another --model_file."
            ) from None
        if latest is None:
            return self._start_from_tf1_checkpoint() if self.s.tf1_checkpoint else 0
        self._check_settings_compatible()
        try:
            self.checkpoint.read(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise TrainingError(
                f"resume checkpoint {latest} does not fit the model {self.model.name!r} ({reason}): "
                "it was written by another model or other settings. Use another --model_file, "
                "or --restart to start over (deletes the old checkpoints)."
            ) from None
        if self.iteration != checkpoint_number(latest):
            raise TrainingError(
                f"resume checkpoint {latest} holds iteration {self.iteration}, not "
                f"{checkpoint_number(latest)}: it was renamed or mixed with another run's. Use "
                "another --model_file, or --restart to start over."
            )
        return self.iteration

    def _start_from_tf1_checkpoint(self):
        """Weights and Adam state of the original's checkpoint; returns the iteration to
        run next (the original's step count)."""
        from .tf1_checkpoint import load_tf1_checkpoint

        info = load_tf1_checkpoint(self.model, self.s.tf1_checkpoint, optimizer=self.optimizer)
        self.log.note(f"continuing the original's checkpoint {info.summary()}")
        if self.is_chief:
            self.log.start_fresh()
        return self.iteration

    def _check_workers_agree(self, start):
        """All workers of a multi-worker run must resume at the same iteration (they read
        the chief's checkpoints, so model_file must be shared storage)."""
        if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return
        value = tf.constant([float(start), float(start) ** 2], tf.float64)

        @tf.function
        def all_workers_sum():
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM,
                                        self.strategy.run(lambda: tf.identity(value)), axis=None)

        total = all_workers_sum()
        n = self.n_replicas
        if not np.array_equal(total.numpy(), [start * n, start**2 * n]):
            raise TrainingError(
                f"worker {self.task_id} would resume at iteration {start}, but the workers do not "
                f"agree (mean {total.numpy()[0] / n:g}): every worker must see the chief's "
                f"{os.path.join(self.s.model_file, RESUME_DIR)}, so model_file must be on storage "
                "shared by all machines (README, 'Several machines'), and every worker must be "
                "started with the same command."
            )

    def _check_settings_compatible(self):
        path = os.path.join(self.s.model_file, SETTINGS_FILE)
        if not os.path.exists(path):
            return
        with open(path) as f:
            previous = json.load(f)
        current = self.settings_record()
        keys = ("model", "n_class", "norm", "w_norm", "batch_sz", "lr", "seed", "augmentation")
        diffs = [f"{k}: {previous.get(k)!r} then, {current.get(k)!r} now" for k in keys
                 if previous.get(k) != current.get(k)]
        if diffs:
            raise TrainingError(
                f"{self.s.model_file} holds a run with other settings ({'; '.join(diffs)}), so "
                "it cannot be resumed with these. Use another --model_file, or --restart to "
                "start over (deletes its resume checkpoints)."
            )

    def save_resume_checkpoint(self):
        self._check_finite_weights("saving a checkpoint")
        self.resume.save(self.iteration)

    def _last_good_checkpoint(self):
        good = self.resume.complete(self.resume.read_directory)
        where = os.path.join(self.s.model_file, RESUME_DIR)
        return (f"The last good checkpoint, {good[-1]}, is kept: resuming repeats the same "
                "iterations, so lower --lr or fix the data or model first." if good else
                f"No checkpoint had been written yet in {where}.")

    def _check_finite_weights(self, when):
        self.check_nonfinite(when)
        bad = first_nonfinite_layer(self.model)
        if bad:
            raise TrainingError(
                f"non-finite weights in {bad} at iteration {self.iteration - 1}; stopped before "
                f"{when}. {self._last_good_checkpoint()}"
            )

    def check_nonfinite(self, when="continuing"):
        """Stop (TrainingError) if a step since the start had a NaN/Inf loss or gradient.

        Such steps are not applied (see `_build_functions`); the message names the
        first one's iteration and values and the first layer concerned.
        """
        first, count = (int(v) for v in self._nonfinite.numpy())
        if first < 0:
            return
        fit, reg, orth = (float(v) for v in self._nonfinite_values.numpy())
        images = None
        try:
            images, _ = next(iter(cifar10_input.train_dataset(
                self.train_x, self.train_y, self.s.batch_sz, seed=self.s.seed,
                start_iteration=first, augmentation=self.s.augmentation)))
        except Exception:  # noqa: BLE001 - the diagnosis must not hide the error itself
            pass
        concerned = nonfinite_source(self.model, fit, reg, orth, images)
        what = ("the loss became" if not all(map(math.isfinite, (fit, reg, orth))) else
                "a gradient became")
        raise TrainingError(
            f"{what} non-finite at iteration {first} (fit={fit:.6g}, reg={reg:.6g}, "
            f"orth={orth:.6g}); first layer concerned: {concerned}. That step "
            + (f"and {count - 1} later non-finite one(s) were" if count > 1 else "was")
            + f" not applied; stopped before {when}. {self._last_good_checkpoint()}"
        )

    def save_snapshot(self, iteration):
        """The original's `Saver().save(sess, model_file + str(i))`: the full training
        state (model, optimizer) as `model_file/<iteration>.index/.data-*`."""
        self._check_finite_weights("saving a snapshot")
        prefix = os.path.join(self._dir(writable=True), str(iteration))
        write_checkpoint(self.checkpoint, prefix)

    def save_final_model(self):
        self.check_nonfinite("saving the final model")
        path = os.path.join(self._dir(writable=True), FINAL_MODEL)
        tmp = path + ".partial.keras"
        self.model.save(tmp)
        os.replace(tmp, path)
        return path

    def fit(self):
        """Run iterations from the current one to `max_epoch`; returns the last test accuracy."""
        s = self.s
        start = self.restore_resume_state()
        self._check_workers_agree(start)
        if self.is_chief:
            if start == 0:
                self.log.start_fresh()
            self.log.truncate_after(start - 1)
            _atomic_write_text(os.path.join(self.s.model_file, SETTINGS_FILE),
                               json.dumps(self.settings_record(), indent=2) + "\n")
        self.log.note(
            f"{self.model.name}: {self.model.count_params():,} parameters; "
            f"{type(self.strategy).__name__} with {self.n_replicas} replica(s); "
            f"{len(self.train_x)} training / {self.n_test} test images; "
            + (f"resuming at iteration {start}" if start else "starting at iteration 0")
            + f" of 0..{s.max_epoch}"
        )
        if self.progress:
            self.progress.first = start
            self.progress.start = time.time()
        iterator = self._train_iterator(start)
        try:
            test_acc = self._loop(iterator, start)
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                tf.errors.AbortedError, tf.errors.CancelledError) as e:
            if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
                raise
            reason = str(e).strip().splitlines()
            reason = next((line for line in reason if "unhealthy" in line or "aborted" in line),
                          reason[0] if reason else type(e).__name__)
            raise WorkerLost(
                f"worker {self.task_id} lost contact with another worker after iteration "
                f"{self.iteration - 1} ({reason.strip()[:300]}). The run cannot continue without "
                "it: start every worker again with the same command; they resume from the last "
                f"checkpoint in {os.path.join(s.model_file, RESUME_DIR)}."
            ) from None
        if self.progress:
            self.progress.clear()
        path = self.save_final_model()
        self.log.note(f"done: final model saved to {path}")
        return test_acc

    def _loop(self, iterator, start):
        s = self.s
        test_acc = None
        for i in range(start, s.max_epoch + 1):
            fit, reg, orth, acc = self._train_step(iterator)
            fault_point("step", i)
            if i % s.log_every == 0 and i != 0:
                self.check_nonfinite(f"logging iteration {i}")
                values = [float(fit), float(reg), float(orth), float(acc)]
                self.log.metrics(i, fit=values[0], reg=values[1], orth=values[2],
                                 acc=values[3], lr=self.schedule.at(i))
                if self.has_orth:
                    self.log.line(LOG_LINE % (i, values[0], values[1], values[2], values[3]))
                else:
                    self.log.line(LOG_LINE_NO_ORTH % (i, values[0], values[1], values[3]))
            if i % s.eval_every == 0 and i != 0:
                test_acc = self.evaluate()
                self.log.metrics(i, test_acc=test_acc)
                self.log.line(TEST_LINE % (i, test_acc))
            if i % s.save_every == 0 and i != 0:
                self.save_snapshot(i)
            if (i % s.checkpoint_every == 0 and i != 0) or i == s.max_epoch:
                self.save_resume_checkpoint()
            if self.progress:
                self.progress.update(i, f"lr={self.schedule.at(i):.0e}")
        return test_acc


def main(script_settings, build_model, script, argv=None, description=None, help_from=()):
    """Entry point of a training script: parse the command line over the script's
    settings block, then train.  Errors about the user's input exit with a message,
    not a traceback."""
    from .tf1_checkpoint import TF1CheckpointError, resolve_checkpoint_path

    settings, _ = parse_settings(script_settings, script, argv, description, help_from=help_from)
    configure_devices(settings)
    try:
        if settings.tf1_checkpoint:
            resolve_checkpoint_path(settings.tf1_checkpoint)  # a wrong path fails at once
        if settings.eval_only:
            from .evaluation import run_eval_only

            run_eval_only(settings, build_model)
            return
        trainer = Trainer(settings, build_model, script=script)
        trainer.fit()
    except (TrainingError, cifar10_input.DatasetError, TF1CheckpointError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_RESTART if isinstance(e, WorkerLost) else EXIT_ERROR)
