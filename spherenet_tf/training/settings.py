"""Every setting of a training run: its default, its meaning and its valid values.

The first group is the settings block of the original training scripts
(`train_spherenet.py` and the others in wy1iu/SphereNet: `n_class`, `batch_sz`,
`batch_test`, `max_epoch`, `lr`, `data_path`, `model_file`), plus the switches a
script's model has (`norm`, `w_norm`) and its augmentation; the rest are options the
port adds.  Each field's `help` is what `--help` prints; a script's settings block
gives the defaults (see `cli`).
"""

import dataclasses
import math

from .. import cifar10_input
from ..ga_softmax import G_FUNCTIONS, LOSSES
from ..messages import closest
from ..formulas import NORMS, W_NORMS
from .distribution import PRECISIONS, STRATEGIES, precision_flag

PROGRESS = ("auto", "on", "off")


def _setting(default, help):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class Settings:
    """Every setting of a run.  `norm` / `w_norm` are None for a model without those
    switches (the baselines)."""

    # the original's settings block
    n_class: int = _setting(10, "number of classes")
    batch_sz: int = _setting(128, "training batch of one iteration (shared by all replicas)")
    batch_test: int = _setting(100, "batch size of the test-set evaluation")
    max_epoch: int = _setting(64000, "last iteration (iterations, not epochs): runs 0..max_epoch")
    lr: float = _setting(1e-3, "Adam learning rate; /10 from iteration 34000 and from 54000")
    data_path: str = _setting(
        "cifar10/", "the dataset (relative to this folder, as in the original): its binary "
        "files or a tensorflow-datasets copy; with --dataset cifar100 and no --data_path, "
        "cifar100/ beside the default")
    model_file: str = _setting(
        "models/", "checkpoints, final.keras, settings.json and training.log (relative to "
        "this folder)")
    norm: str = _setting("cosine", "SphereConv type: " + ", ".join(NORMS))
    w_norm: str = _setting(
        "none", "score layer: none = softmax, cosine = weight-normalised, linear / sigmoid = "
        "generalised angular softmax")
    dataset: str = _setting(
        "cifar10", "cifar10 (the original's) or cifar100 (its 100 fine labels; sets n_class to "
        "100 unless --n_class is given)")
    augmentation: str = _setting(
        "flip", "training augmentation: flip (random left-right flip), cifar10plus (4-pixel "
        "symmetric padding, random 32x32 crop, flip) or none")
    # added by the port
    strategy: str = _setting(
        "auto", "tf.distribute strategy: auto (MirroredStrategy over all visible GPUs, the "
        "default strategy on CPU), mirrored, multi_worker (TF_CONFIG), one_device")
    gpus: str = _setting(
        "", "GPUs to use, e.g. '0' or '0,1' (sets CUDA_VISIBLE_DEVICES as the original scripts "
        "did); empty = leave the environment alone")
    cpu_replicas: int = _setting(
        1, "split the CPU into this many logical devices, one replica each (to try "
        "distribution without GPUs; with --strategy auto or mirrored)")
    bn_per_replica: bool = _setting(
        False, "compute BN batch statistics on each replica's share of the batch (otherwise "
        "over the whole global batch, as the original's single GPU did)")
    seed: int = _setting(0, "seed of the data order, augmentation and initial weights")
    log_every: int = _setting(100, "iterations between the '====' training lines (original: 100)")
    eval_every: int = _setting(500, "iterations between test-set evaluations (original: 500)")
    save_every: int = _setting(
        16000, "iterations between checkpoints model_file/<iteration> (original: 16000)")
    checkpoint_every: int = _setting(
        500, "iterations between resume checkpoints in model_file/resume/ (a killed run loses "
        "at most this many)")
    restart: bool = _setting(
        False, "start from iteration 0, deleting a previous run's resume checkpoints in "
        "model_file (otherwise a previous run is continued)")
    deterministic: bool = _setting(
        False, "enable TF's deterministic ops (bit-reproducible runs, slower)")
    mixed_precision: str = _setting(
        "off", "mixed precision: off (float32); auto (the flag alone): bfloat16 on GPUs of compute "
        "capability >= 8.0 and on CPUs, float16 with loss scaling on older GPUs; or float16 / "
        "bfloat16 to force one. Variables, SphereConv norms and angles, BN and the loss stay "
        "float32 (under float16, SphereConvs with an angle compute entirely in float32)")
    jit_compile: bool = _setting(False, "compile the training step with XLA")
    tensorboard: str = _setting(
        "on", "write TensorBoard events (the log lines' values, test accuracy, learning rate, "
        "images/s) into model_file: on or off")
    progress: str = _setting(
        "auto", "progress bar on stderr: auto (when stderr is a terminal), on, off")
    download: bool = _setting(
        True, "download CIFAR-10 into data_path when it is missing (needs internet)")
    tf1_checkpoint: str = _setting(
        "", "a checkpoint of the original TF1 code (e.g. its models/16000): evaluate it with "
        "--eval_only, or continue training from it (weights and Adam state; a resume "
        "checkpoint in model_file takes precedence)")
    eval_only: bool = _setting(
        False, "only evaluate: print the test accuracy line of --tf1_checkpoint, or else of "
        "model_file's latest checkpoint; writes nothing")
    # beyond the original (spherenet_tf/ga_softmax.py)
    loss: str = _setting(
        "loss2", "loss2 (the original's) or ga_softmax (generalised angular softmax with an "
        "angular margin; g is the score layer's --w_norm: linear, cosine or sigmoid)")
    margin: float = _setting(1.0, "angular margin m >= 1 of --loss ga_softmax (1 = no margin)")

    def __post_init__(self):
        # the boolean --mixed_precision of earlier versions (and of Python callers)
        self.mixed_precision = precision_flag(self.mixed_precision)


#: The settings of the original scripts' block; the other fields are the port's options.
ORIGINAL_BLOCK = ("n_class", "batch_sz", "batch_test", "max_epoch", "lr", "data_path",
                  "model_file", "norm", "w_norm", "augmentation")
#: Settings whose flag may be given without a value: setting -> (value of the bare flag,
#: value of --no-<setting>).
BARE_FLAG_VALUES = {"mixed_precision": ("auto", "off")}
#: Settings whose values are names: setting -> allowed values.
CHOICES = {
    "norm": NORMS,
    "w_norm": W_NORMS,
    "augmentation": cifar10_input.AUGMENTATIONS,
    "strategy": STRATEGIES,
    "progress": PROGRESS,
    "tensorboard": ("on", "off"),
    "dataset": tuple(cifar10_input.DATASETS),
    "loss": LOSSES,
    "mixed_precision": PRECISIONS,
}
AT_LEAST_ONE = ("n_class", "batch_sz", "batch_test", "log_every", "eval_every", "save_every",
                "checkpoint_every", "cpu_replicas")


class SettingsError(ValueError):
    """A setting has a value it cannot take; the message names it, as a command-line flag."""


def fields():
    """{name: dataclasses.Field} of every setting, in declaration order."""
    return {f.name: f for f in dataclasses.fields(Settings)}


def validate_settings(s):
    """Raise SettingsError for the first setting of `s` that cannot be used."""
    for name, allowed in CHOICES.items():
        value = getattr(s, name)
        if value is None and name in ("norm", "w_norm"):
            continue  # the model has no such switch
        if value not in allowed:
            match = closest(value, allowed)
            raise SettingsError(
                f"--{name} {value!r} is not one of {', '.join(allowed)}"
                + (f" (did you mean {match!r}?)" if match else ""))
    if not (math.isfinite(s.margin) and s.margin >= 1):
        raise SettingsError(f"--margin must be a number >= 1 (1 = no margin), got {s.margin}")
    if s.loss == "loss2" and s.margin != 1:
        raise SettingsError(f"--margin {s.margin} needs --loss ga_softmax (loss2 has no margin)")
    if s.loss == "ga_softmax" and s.w_norm not in G_FUNCTIONS:
        raise SettingsError(
            f"--loss ga_softmax needs a weight-normalised score layer: --w_norm one of "
            f"{', '.join(G_FUNCTIONS)} (g of the logit |x| g(theta)), got --w_norm {s.w_norm!r}")
    n_class = cifar10_input.DATASETS[s.dataset].n_class
    if s.n_class != n_class:
        raise SettingsError(
            f"--n_class {s.n_class} does not match --dataset {s.dataset}, which has {n_class} "
            f"classes: give --n_class {n_class} (or leave it out to follow --dataset)")
    for name in AT_LEAST_ONE:
        if getattr(s, name) < 1:
            raise SettingsError(f"--{name} must be at least 1, got {getattr(s, name)}")
    if s.max_epoch < 0:
        raise SettingsError(f"--max_epoch must be >= 0, got {s.max_epoch}")
    if not s.lr > 0:
        raise SettingsError(f"--lr must be positive, got {s.lr}")


def settings_record(s):
    """The settings as `settings.json` records them: a switch the model does not have
    (`norm` / `w_norm` of the baselines) is left out rather than given a value."""
    record = dataclasses.asdict(s)
    for name in ("norm", "w_norm"):
        if record[name] is None:
            del record[name]
    return record
