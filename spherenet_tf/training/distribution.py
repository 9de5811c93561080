"""Devices, the tf.distribute strategy and the precision policy of a run.

The original trained on the one GPU chosen by `CUDA_VISIBLE_DEVICES` at the top of each
script; the port runs the same computation on one device, several GPUs
(MirroredStrategy) or several machines (MultiWorkerMirroredStrategy), with the global
batch and the BatchNorm statistics of the original's single device.
"""

import os

import keras
import tensorflow as tf

from ..checks import check_tf_config

STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device")


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
    """A tf.distribute strategy from its name (see `Settings.strategy`).

    Call it before anything else touches TensorFlow: MultiWorkerMirroredStrategy
    must configure the collective ops before the runtime starts.
    """
    if name == "multi_worker":
        check_tf_config(os.environ.get("TF_CONFIG"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    if name == "auto":
        if gpus:
            return tf.distribute.MirroredStrategy()
        if cpu_replicas > 1:  # --cpu_replicas asks for replicas: honour it (as 'mirrored')
            return tf.distribute.MirroredStrategy(cpus[:cpu_replicas])
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.MirroredStrategy(cpus[:max(cpu_replicas, 1)])
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    raise ValueError(f"unknown strategy {name!r}; allowed: {', '.join(STRATEGIES)}")


def is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


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


#: Values of --mixed_precision: 'off' (float32), 'auto' (what the device runs best: see
#: `choose_precision`), or a forced compute dtype.
PRECISIONS = ("off", "auto", "float16", "bfloat16")
#: The first NVIDIA compute capability with bfloat16 tensor cores (Ampere: A100, RTX 30xx).
BFLOAT16_COMPUTE_CAPABILITY = (8, 0)


def gpu_details():
    """[(name, compute capability or None)] of the visible GPUs, from TF's device details."""
    out = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device) or {}
        capability = details.get("compute_capability")
        out.append((details.get("device_name", device.name),
                    tuple(capability) if capability else None))
    return out


def precision_flag(mixed_precision):
    """--mixed_precision's value of the boolean of earlier versions (and of Python
    callers): True is 'auto', False 'off'; any other value is returned unchanged."""
    if isinstance(mixed_precision, bool):
        return "auto" if mixed_precision else "off"
    return mixed_precision


def choose_precision(mixed_precision, gpus=None):
    """(Keras dtype policy, the reason in words) of a run's --mixed_precision.

    'auto' takes bfloat16 where it is fast and safe: on GPUs of compute capability 8.0
    and above (Ampere, Hopper, ...: full tensor-core speed, float32's range, no loss
    scaling, and the SphereConvs compute in it too) and on CPUs; float16 with loss
    scaling on older GPUs, which have float16 tensor cores but no bfloat16 ones.
    'float16' / 'bfloat16' force that dtype; 'off' is float32.  `gpus` defaults to the
    visible GPUs (`gpu_details`); with several, the slowest one decides.
    """
    mixed_precision = precision_flag(mixed_precision)
    if mixed_precision in (None, "off"):
        return "float32", "--mixed_precision off"
    if mixed_precision not in PRECISIONS:
        raise ValueError(f"--mixed_precision {mixed_precision!r} is not one of {', '.join(PRECISIONS)}")
    if mixed_precision != "auto":
        return f"mixed_{mixed_precision}", f"--mixed_precision {mixed_precision}: as asked"
    gpus = gpu_details() if gpus is None else gpus
    if not gpus:
        return "mixed_bfloat16", "--mixed_precision auto: no GPU, bfloat16 on the CPU"
    known = [c for _, c in gpus if c is not None]
    if len(known) < len(gpus):
        unknown = next(name for name, c in gpus if c is None)
        return "mixed_float16", (
            f"--mixed_precision auto: the compute capability of GPU {unknown!r} is not known, "
            "so float16 with loss scaling (--mixed_precision bfloat16 forces bfloat16)")
    slowest_name, slowest = min(gpus, key=lambda g: g[1])
    cc = f"{slowest[0]}.{slowest[1]}"
    if slowest >= BFLOAT16_COMPUTE_CAPABILITY:
        return "mixed_bfloat16", (
            f"--mixed_precision auto: GPU {slowest_name!r} has compute capability {cc} >= 8.0, "
            "so bfloat16 (tensor-core speed, float32's range, no loss scaling)")
    return "mixed_float16", (
        f"--mixed_precision auto: GPU {slowest_name!r} has compute capability {cc} < 8.0 (no "
        "bfloat16 tensor cores), so float16 with loss scaling; SphereConvs with an angle "
        "compute in float32 under it")


def precision_policy(mixed_precision):
    """The Keras dtype policy of a run's --mixed_precision (see `choose_precision`)."""
    return choose_precision(mixed_precision)[0]


def set_process_state(settings):
    """What a run sets for the whole process: the Keras dtype policy of
    --mixed_precision (`choose_precision`), TF's op determinism (--deterministic) and
    the seeds of Python, NumPy and TF (--seed: the initial weights).

    The command-line entry point (`cli.main`) calls it, before the `Trainer`; building a
    `Trainer` or a `ClassificationTask` in a library changes none of these.  Code that
    builds a run itself and wants the scripts' run calls it first.  Returns the policy.
    """
    policy, _ = choose_precision(settings.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    if settings.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(settings.seed)
    return policy
