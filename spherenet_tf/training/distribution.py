"""Devices, the tf.distribute strategy and the precision policy of a run.

The original trained on the one GPU chosen by `CUDA_VISIBLE_DEVICES` at the top of each
script; the port runs the same computation on one device, several GPUs
(MirroredStrategy) or several machines (MultiWorkerMirroredStrategy), with the global
batch and the BatchNorm statistics of the original's single device.
"""

import os

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


def precision_policy(mixed_precision):
    """Keras dtype policy of a run: 'float32', or with --mixed_precision 'mixed_float16'
    where a GPU is visible (tensor cores; needs loss scaling) and 'mixed_bfloat16' on CPUs
    (bfloat16 has float32's range, so no loss scaling)."""
    if not mixed_precision:
        return "float32"
    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"
