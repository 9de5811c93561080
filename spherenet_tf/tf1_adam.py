"""The Adam state of a TF1 checkpoint of the original, onto a Keras Adam.

The original training scripts of "Deep Hyperspherical Learning" (Liu et al., NIPS 2017;
wy1iu/SphereNet `train_spherenet.py` and its copies) train with
`tf.train.AdamOptimizer(lr)`, whose checkpoints hold `<variable>/Adam` (m),
`<variable>/Adam_1` (v) and the accumulated powers `beta1_power`, `beta2_power`.  This
module reads the step count from the powers and finds the Keras Adam slot of each
variable; `tf1_checkpoint.load_tf1_checkpoint(model, path, optimizer)` uses both.
"""

import math

import keras
import numpy as np

#: Slot names of tf.train.AdamOptimizer: `<var>/Adam` is m, `<var>/Adam_1` is v.
ADAM_SLOTS = ("Adam", "Adam_1")
#: Adam's accumulated beta powers (one scalar each for the whole graph).
BETA_POWERS = ("beta1_power", "beta2_power")
#: tf.train.AdamOptimizer defaults, which the original used; the powers are products
#: of these float32 values.
TF1_BETA_1 = np.float32(0.9)
TF1_BETA_2 = np.float32(0.999)
#: Keras Adam's name of the slot of each TF1 slot (`Adam.build`: "momentum", "velocity").
KERAS_SLOTS = {"Adam": "momentum", "Adam_1": "velocity"}


class AdamStateError(ValueError):
    """The optimizer cannot take the original's Adam state; the message says why."""


def is_optimizer_state(name):
    """Whether a TF1 variable name is Adam's (a slot or a beta power)."""
    return name in BETA_POWERS or name.rsplit("/", 1)[-1] in ADAM_SLOTS


def adam_steps_from_powers(beta1_power=None, beta2_power=None):
    """Adam steps t a TF1 checkpoint was saved after, from its beta powers.

    TF1's Adam starts `beta{1,2}_power` at beta and multiplies them by beta (in float32)
    after every step, so after t steps they hold beta^(t+1) as rounded by t float32
    multiplications.  beta1_power underflows to 0 after about 1,000 steps, beta2_power
    only after about 100,000 (0.999^64001 = 1.6e-28), so beta2_power is the one to read.
    The float32 sequence is replayed to find t exactly; if the value is not on it (other
    betas), the nearest t by logarithms is returned.  Returns (t, exact) or (None, False).
    """
    for power, beta in ((beta2_power, TF1_BETA_2), (beta1_power, TF1_BETA_1)):
        if power is None:
            continue
        power = np.float32(power)
        if not (0 < power <= beta):
            continue
        value, t = beta, 0
        while value > power and t < 10_000_000:
            value = np.float32(value * beta)
            t += 1
        if value == power:
            if beta is TF1_BETA_2 and beta1_power is not None and np.float32(beta1_power) > 0:
                # beta1_power is exact for small t; both must agree.
                steps1, exact1 = adam_steps_from_powers(beta1_power=beta1_power)
                if exact1 and steps1 != t:
                    return None, False
            return t, True
        estimate = round(math.log(float(power)) / math.log(float(beta))) - 1
        return max(estimate, 0), False
    return None, False


def keras_adam(optimizer, model):
    """The `keras.optimizers.Adam` inside `optimizer` (itself, or the one a
    LossScaleOptimizer wraps), built for `model.trainable_variables` if it was not."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    if not isinstance(inner, keras.optimizers.Adam) or inner.amsgrad:
        raise AdamStateError(
            "The original trained with tf.train.AdamOptimizer, so only a "
            "keras.optimizers.Adam (amsgrad=False) can take its state. Received: "
            f"optimizer={type(optimizer).__name__}. Pass optimizer=None to load the weights only."
        )
    if not inner.built:
        inner.build(model.trainable_variables)
    return inner


def adam_slots(adam, model):
    """{(id of a trainable variable of `model`, TF1 slot name): the Keras slot variable}.

    Keras has no public accessor for the slot of one variable (`Adam` keeps them in the
    private `_momentums` / `_velocities`, indexed by the private `_get_variable_index`).
    The public way is the optimizer's `variables`, named by `add_optimizer_variables`
    (public) as `<variable path, '/' -> '_'>_<slot>`: `conv1_0_kernel_momentum`.  Raises
    AdamStateError naming a variable whose slot is not there (an optimizer built for
    other variables).
    """
    by_name = {v.name: v for v in adam.variables}
    slots = {}
    for variable in model.trainable_variables:
        for tf1_slot, keras_slot in KERAS_SLOTS.items():
            name = f"{variable.path.replace('/', '_')}_{keras_slot}"
            if name not in by_name:
                raise AdamStateError(
                    f"The optimizer was built for other variables than model {model.name!r}'s "
                    f"(it has no {keras_slot} of {variable.path}). Build it with "
                    "optimizer.build(model.trainable_variables)."
                )
            slots[(id(variable), tf1_slot)] = by_name[name]
    return slots


def format_shape(shape):
    return "[" + ", ".join(str(d) for d in shape) + "]"


def match_adam_state(adam, model, targets, shapes, reader, missing, misshaped):
    """The original's Adam state for `adam`: ([(TF1 slot name, Keras slot variable)],
    Adam steps t, whether t is exact).  What the checkpoint lacks or has in another shape
    is appended to `missing` / `misshaped` (the loader reports them all at once);
    `targets` maps TF1 names to the model's variables (`tf1_names.tf1_variables`)."""
    slots = adam_slots(adam, model)
    trainable = {id(v): n for n, v in targets.items()}
    assignments = []
    for variable in model.trainable_variables:
        name = trainable.get(id(variable))
        if name is None:
            raise AdamStateError(
                f"Trainable variable {variable.path} of model {model.name!r} has no "
                "counterpart in the original, so its Adam state cannot be restored."
            )
        if name not in shapes or shapes[name] != tuple(variable.shape):
            continue  # the variable itself is reported
        for slot in ADAM_SLOTS:
            key = f"{name}/{slot}"
            if key not in shapes:
                missing.append(f"{key} {format_shape(variable.shape)} (Adam state)")
            elif shapes[key] != tuple(variable.shape):
                misshaped.append(f"{key}: checkpoint {format_shape(shapes[key])}, "
                                 f"model {format_shape(variable.shape)}")
            else:
                assignments.append((key, slots[(id(variable), slot)]))
    steps, exact = None, False
    absent = [p for p in BETA_POWERS if p not in shapes]
    if absent:
        missing.extend(f"{p} [] (Adam state)" for p in absent)
    else:
        steps, exact = adam_steps_from_powers(reader.get_tensor("beta1_power"),
                                              reader.get_tensor("beta2_power"))
        if steps is None:
            missing.append("beta1_power/beta2_power: not powers of Adam's default betas "
                           "(0.9, 0.999), so the step count is unknown")
    return assignments, steps, exact
