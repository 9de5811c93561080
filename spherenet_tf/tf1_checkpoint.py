"""Load checkpoints written by the original TF1 code into the port's Keras models.

The original training scripts (`train_spherenet.py`, `baseline/train_baseline.py`,
`sphere_resnet/train_sphere_resnet.py`, `sphere_resnet/baseline/train_baseline.py` of
wy1iu/SphereNet, the code of "Deep Hyperspherical Learning", Liu et al., NIPS 2017)
save `tf.train.Saver().save(sess, model_file + str(i))` right after running iteration
i, every 16,000 iterations: files `models/16000.index` and
`models/16000.data-00000-of-00001` holding every global variable under its TF1 name:

    conv1_0/filter, conv1_0/k_value_lr                          weights
    conv1_0/bn/gamma/bias, conv1_0/bn/beta/bias                 BN parameters
    conv1_0/bn/conv1_0/bn/moments/Squeeze/ExponentialMovingAverage    BN moving mean
    conv1_0/bn/conv1_0/bn/moments/Squeeze_1/ExponentialMovingAverage  BN moving variance
    <variable>/Adam, <variable>/Adam_1                          Adam's m and v
    beta1_power, beta2_power                                    0.9^(t+1), 0.999^(t+1) after t steps

`load_tf1_checkpoint(model, path)` maps these names onto a port model through
`tf1_names.tf1_variables` and assigns them; the Adam state is ignored unless an
optimizer is given, in which case its slots and step count are restored too, so that
training continues where the original stopped.  It validates everything before it
assigns anything, and refuses a checkpoint that does not fit the model with one error
naming every missing, unexpected and mis-shaped variable and saying what the
checkpoint seems to be.  The Adam part (the step count from the beta powers, the Keras
slot of each variable) is `tf1_adam`'s.

A checkpoint does not record the SphereConv type (`norm`, `w_norm`) or whether the
network was the baseline: SphereNet-9 with any non-learnable `norm` and the baseline
CNN-9 have the same variables, as have SphereResNet-32 and ResNet-32.  Build the model
the checkpoint was trained as (`convert_tf1_checkpoint.py --model ...`).
"""

import dataclasses
import os
import re

import numpy as np
import tensorflow as tf

from .tf1_adam import (  # noqa: F401  (adam_steps_from_powers: part of this module's API)
    BETA_POWERS, AdamStateError, adam_steps_from_powers, keras_adam, match_adam_state,
)
from .tf1_adam import format_shape as _format_shape
from .tf1_adam import is_optimizer_state as _is_optimizer_state
from .tf1_names import tf1_variables
#: Key present in every object-based (TF2, `tf.train.Checkpoint`) checkpoint and in no
#: TF1 `Saver` checkpoint.
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"

_DATA_SUFFIX = re.compile(r"\.(index|meta|data-\d+-of-\d+)$")


class TF1CheckpointError(ValueError):
    """A TF1 checkpoint cannot be read or does not fit the model; the message lists
    what differs and how to fix it."""


@dataclasses.dataclass
class TF1CheckpointInfo:
    """What `load_tf1_checkpoint` did.

    Attributes:
      path: the checkpoint prefix that was read (e.g. `models/16000`).
      loaded: TF1 names assigned to model variables.
      ignored: TF1 names read but not used (the Adam state when no optimizer is given).
      adam_steps: Adam steps the original had applied when it saved (t), from
        `beta2_power` (and `beta1_power`); None if the checkpoint has no Adam state.
      iteration: the original loop index of the last step run before saving (t - 1, the
        number in the original's `++++iteration_%d` line and in its file name
        `models/16000`); from the file name when the beta powers are absent; None if
        neither tells.
      iteration_source: 'beta powers', 'file name' or 'unknown'.
      optimizer_restored: whether Adam slots and step count were assigned.
    """

    path: str
    loaded: list
    ignored: list
    adam_steps: int = None
    iteration: int = None
    iteration_source: str = "unknown"
    optimizer_restored: bool = False

    def summary(self):
        n_adam = sum(1 for name in self.ignored if _is_optimizer_state(name))
        text = f"{self.path}: {len(self.loaded)} variables loaded"
        if self.optimizer_restored:
            text += ", Adam state restored"
        elif n_adam:
            text += f", {n_adam} Adam variables ignored"
        if self.iteration is not None:
            text += f"; iteration {self.iteration} (from the {self.iteration_source})"
        return text


# ---------------------------------------------------------------------------
# Finding and reading the checkpoint
# ---------------------------------------------------------------------------
def _checkpoint_prefixes(folder):
    return sorted(f[: -len(".index")] for f in os.listdir(folder) if f.endswith(".index"))


def resolve_checkpoint_path(path):
    """The checkpoint prefix `path` stands for.

    Accepts a prefix (`models/16000`), one of its files (`models/16000.index`,
    `.data-00000-of-00001`, `.meta`), or a folder holding checkpoints (the one with the
    largest number is taken: the original's latest).  Raises TF1CheckpointError saying
    what a checkpoint path looks like when it is none of these.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        prefixes = _checkpoint_prefixes(path)
        numbered = [p for p in prefixes if p.isdigit()]
        if numbered:
            return os.path.join(path, max(numbered, key=int))
        if len(prefixes) == 1:
            return os.path.join(path, prefixes[0])
        if prefixes:
            raise TF1CheckpointError(
                f"{path} holds several checkpoints ({', '.join(prefixes)}); give one of them, "
                f"e.g. {os.path.join(path, prefixes[-1])}."
            )
        raise TF1CheckpointError(
            f"{path} is a folder without checkpoints (no *.index file). A TF1 checkpoint of "
            "the original is a path prefix such as models/16000, naming the files "
            "models/16000.index and models/16000.data-00000-of-00001."
        )
    stripped = _DATA_SUFFIX.sub("", path)
    if os.path.exists(stripped + ".index"):
        return stripped
    if os.path.isfile(path):
        return path  # maybe a V1-format checkpoint (a single file); the reader decides
    folder = os.path.dirname(stripped) or "."
    near = ""
    if os.path.isdir(folder):
        prefixes = _checkpoint_prefixes(folder)
        if prefixes:
            near = f" Checkpoints in {folder}: {', '.join(prefixes)}."
    raise TF1CheckpointError(
        f"No checkpoint at {path!r}: neither {stripped}.index nor a folder exists. A TF1 "
        "checkpoint of the original is a path prefix such as models/16000, naming the "
        f"files models/16000.index and models/16000.data-00000-of-00001.{near}"
    )


def read_tf1_checkpoint(path):
    """(prefix, reader, {name: shape}, {name: dtype}) of a TF1 `Saver` checkpoint.

    Refuses, with a hint, files that are not checkpoints (a `.keras` model, anything
    unreadable) and object-based checkpoints, such as those this port's training loop
    writes (`model_file/16000`, `model_file/resume/ckpt-N`).
    """
    prefix = resolve_checkpoint_path(path)
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as e:
        hint = ""
        if prefix.endswith(".keras"):
            hint = " It looks like a Keras model file: load it with keras.models.load_model."
        elif prefix.endswith((".h5", ".weights.h5")):
            hint = " It looks like a Keras HDF5 file: load it with model.load_weights."
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TF1CheckpointError(
            f"{path!r} is not a readable TensorFlow checkpoint ({reason}).{hint} A TF1 "
            "checkpoint of the original is a path prefix such as models/16000, naming "
            "models/16000.index and models/16000.data-00000-of-00001."
        ) from None
    shapes = {k: tuple(v) for k, v in reader.get_variable_to_shape_map().items()}
    if OBJECT_GRAPH_KEY in shapes:
        raise TF1CheckpointError(
            f"{prefix} is an object-based TF2 checkpoint (it has the {OBJECT_GRAPH_KEY} "
            "key), such as those this port's training loop writes (model_file/16000, "
            "model_file/resume/ckpt-N), not a checkpoint of the original TF1 code. Load it "
            "with tf.train.Checkpoint(model=model).read(path).expect_partial(), or run the "
            "training script again with the same --model_file to continue it."
        )
    dtypes = dict(reader.get_variable_to_dtype_map())
    return prefix, reader, shapes, dtypes


# ---------------------------------------------------------------------------
# What a checkpoint (or a model) looks like
# ---------------------------------------------------------------------------
def _last(shapes, name):
    shape = shapes.get(name)
    return shape[-1] if shape else None


def layout(shapes):
    """The architecture a set of TF1 variable shapes describes, as a dict:
    family ('cnn9', 'resnet', None), widths, fc6_bn, units, n_class, lr_sigmoid, adam."""
    names = set(shapes)
    out = dict(
        family=None, widths=None, fc6_bn=None, units=None,
        n_class=_last(shapes, "score/filter"),
        lr_sigmoid=any(n.endswith("/k_value_lr") for n in names),
        adam=any(_is_optimizer_state(n) for n in names),
    )
    if "conv1_0/filter" in names:
        out.update(family="cnn9", fc6_bn="fc6/bn/gamma/bias" in names,
                   widths=tuple(_last(shapes, f"conv{s}_0/filter") for s in (1, 2, 3)))
    elif "root/filter" in names:
        units = len({m.group(1) for m in map(re.compile(r"block1_unit(\d+)/first/filter$").match, names) if m})
        out.update(family="resnet", units=units,
                   widths=tuple(_last(shapes, f"block{s}_unit0/first/filter") for s in (1, 2, 3)))
    return out


def describe(shapes):
    """One phrase saying what a set of TF1 variable shapes looks like."""
    info = layout(shapes)
    widths = ", ".join(str(w) for w in info["widths"]) if info["widths"] else ""
    if info["family"] == "cnn9":
        text = (f"a 9-layer CNN (SphereNet-9 or the baseline CNN-9) with stage widths "
                f"({widths}), {'BN after fc6' if info['fc6_bn'] else 'no BN after fc6'}")
        if info["widths"] == (128, 196, 256) and info["fc6_bn"]:
            text += " (the layout of the original's examples/*.py)"
    elif info["family"] == "resnet":
        depth = 6 * info["units"] + 2
        text = (f"a ResNet-{depth} (SphereResNet-{depth} or ResNet-{depth}) with stage widths "
                f"({widths}), {info['units']} units per stage")
    else:
        some = ", ".join(sorted(n for n in shapes if not _is_optimizer_state(n))[:4])
        return (f"none of the port's models (no conv1_0/filter or root/filter; it holds "
                f"{len(shapes)} variables, e.g. {some or 'none'})")
    if info["n_class"] is not None:
        text += f", {info['n_class']} classes"
    if info["lr_sigmoid"]:
        text += ", learnable sigmoid SphereConv (k_value_lr: norm='lr_sigmoid')"
    return text


def converter_flags(shapes):
    """convert_tf1_checkpoint.py options that build a model of this layout."""
    info = layout(shapes)
    if info["family"] == "cnn9":
        flags = ["--model spherenet9"]
        if info["widths"] != (128, 192, 256) and None not in info["widths"]:
            flags.append("--widths " + ",".join(str(w) for w in info["widths"]))
        if info["fc6_bn"]:
            flags.append("--fc6_bn")
    elif info["family"] == "resnet":
        flags = ["--model sphere_resnet32"]
    else:
        return ""
    if info["lr_sigmoid"]:
        flags.append("--norm lr_sigmoid")
    if info["n_class"] not in (None, 10):
        flags.append(f"--n_class {info['n_class']}")
    return " ".join(flags)


def _iteration_from_name(prefix):
    base = os.path.basename(prefix)
    match = re.fullmatch(r"(?:.*-)?(\d+)", base)
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------
def load_tf1_checkpoint(model, path, optimizer=None):
    """Load a checkpoint written by the original TF1 code into `model`.

    Args:
      model: a port model (SphereNet-9 with any `norm`/`w_norm`/widths/`fc6_bn`, the
        baseline CNN-9, SphereResNet-32, ResNet-32), built as the checkpoint's model was.
      path: the checkpoint prefix (`models/16000`), one of its files, or a folder (its
        largest-numbered checkpoint is read).
      optimizer: optional `keras.optimizers.Adam` for `model.trainable_variables` (built
        or not; a LossScaleOptimizer around one works too).  When given, the Adam
        slots `<var>/Adam` (m) and `<var>/Adam_1` (v) are restored and
        `optimizer.iterations` is set to the original's step count t (from
        `beta2_power` = 0.999^(t+1)), so the next step has the original's bias
        correction and learning-rate schedule position.

    Returns:
      A `TF1CheckpointInfo` (what was loaded, the iteration of the checkpoint).

    Raises:
      TF1CheckpointError (a ValueError) when the path is not a TF1 checkpoint or the
      checkpoint does not fit the model: one message naming every missing, unexpected
      and mis-shaped variable, what the checkpoint looks like and how to build a model
      that fits.  Nothing is assigned then: the model and optimizer are unchanged.
    """
    prefix, reader, shapes, dtypes = read_tf1_checkpoint(path)
    targets = tf1_variables(model)
    try:
        adam = keras_adam(optimizer, model) if optimizer is not None else None
    except AdamStateError as e:
        raise TF1CheckpointError(str(e)) from None

    missing, misshaped, assignments = [], [], []
    for name, variable in targets.items():
        want = tuple(variable.shape)
        if name not in shapes:
            missing.append(f"{name} {_format_shape(want)}")
        elif shapes[name] != want:
            misshaped.append(f"{name}: checkpoint {_format_shape(shapes[name])}, model {_format_shape(want)}")
        elif not dtypes[name].is_floating:
            misshaped.append(f"{name}: checkpoint dtype {dtypes[name].name}, model {variable.dtype}")
        else:
            assignments.append((name, variable))
    unexpected = []
    for name in sorted(shapes):
        if name in targets:
            continue
        if _is_optimizer_state(name):
            base = name.rsplit("/", 1)[0]
            if name in BETA_POWERS or base in targets or base in shapes:
                continue  # Adam state of a variable reported (or loaded) on its own
        unexpected.append(f"{name} {_format_shape(shapes[name])}")

    optimizer_assignments, steps, exact = [], None, False
    if adam is not None:
        try:
            optimizer_assignments, steps, exact = match_adam_state(
                adam, model, targets, shapes, reader, missing, misshaped)
        except AdamStateError as e:
            raise TF1CheckpointError(str(e)) from None

    if missing or unexpected or misshaped:
        raise TF1CheckpointError(_mismatch_message(model, prefix, shapes, targets, missing,
                                                   unexpected, misshaped, adam is not None))

    # Everything fits: read every value first, then assign.
    values = [(variable, reader.get_tensor(name)) for name, variable in assignments]
    slot_values = [(slot, reader.get_tensor(name)) for name, slot in optimizer_assignments]
    for variable, value in values + slot_values:
        variable.assign(np.asarray(value, dtype=variable.dtype))

    if steps is None and all(p in shapes for p in BETA_POWERS):
        steps, exact = adam_steps_from_powers(reader.get_tensor("beta1_power"),
                                              reader.get_tensor("beta2_power"))
    if adam is not None:
        adam.iterations.assign(steps)
    loaded = [name for name, _ in assignments]
    used = set(loaded) | {name for name, _ in optimizer_assignments}
    if adam is not None:
        used |= set(BETA_POWERS)
    ignored = sorted(n for n in shapes if n not in used)
    info = TF1CheckpointInfo(path=prefix, loaded=loaded, ignored=ignored, adam_steps=steps,
                             optimizer_restored=adam is not None)
    if steps is not None:
        info.iteration = steps - 1
        info.iteration_source = "beta powers" if exact else "beta powers, approximately"
    elif _iteration_from_name(prefix) is not None:
        info.iteration = _iteration_from_name(prefix)
        info.iteration_source = "file name"
    return info


def _mismatch_message(model, prefix, shapes, targets, missing, unexpected, misshaped, with_adam):
    model_shapes = {n: tuple(v.shape) for n, v in targets.items()}
    counts = []
    if missing:
        counts.append(f"{len(missing)} missing")
    if unexpected:
        counts.append(f"{len(unexpected)} unexpected")
    if misshaped:
        counts.append(f"{len(misshaped)} mis-shaped")
    lines = [f"TF1 checkpoint {prefix} does not fit model {model.name!r}: "
             f"{', '.join(counts)} variable(s)."]
    for title, items in [
        ("missing (the model has them, the checkpoint does not)", missing),
        ("unexpected (the checkpoint has them, the model does not; Adam slots not listed)", unexpected),
        ("mis-shaped", misshaped),
    ]:
        if items:
            lines.append(f"  {title}:")
            lines.extend(f"    {item}" for item in items)
    lines.append(f"The checkpoint looks like {describe(shapes)}.")
    lines.append(f"The model is {describe(model_shapes)}.")
    if with_adam and not layout(shapes)["adam"]:
        lines.append("The checkpoint has no Adam state: load it without an optimizer "
                     "(weights only).")
    flags = converter_flags(shapes)
    if flags:
        lines.append(f"Build the model the checkpoint was trained as, e.g. "
                     f"`python convert_tf1_checkpoint.py CHECKPOINT OUT.keras {flags}` "
                     "(a checkpoint does not record norm/w_norm, nor whether it is the baseline).")
    lines.append("Nothing was loaded: the model is unchanged.")
    return "\n".join(lines)
