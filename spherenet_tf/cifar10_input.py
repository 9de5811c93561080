"""CIFAR-10 input: the original's binary files or tensorflow-datasets, one pipeline.

Ports `cifar10_input.py` (SphereNet-9, flip-only augmentation) and
`sphere_resnet/cifar10plus_input.py` (CIFAR-10+: symmetric 4-pixel pad, random 32x32
crop, flip) of wy1iu/SphereNet.  Where the data comes from:

1. If `data_path` holds the original's binary files (`data_batch_1.bin` ...
   `data_batch_5.bin`, `test_batch.bin`, as `dataset_setup.sh` of the original left
   them), they are read, so users of the original keep their data.
2. Else a tensorflow-datasets copy of `cifar10` under `data_path` is used, and
   downloaded there first when it is missing and the network is reachable
   (`./dataset_setup.sh` does that ahead of time).

Images reach the model as float32 in 0..255 (the model normalises them).

The training stream is a pure function of (seed, iteration): epoch e is a stateless
permutation of the 50,000 images seeded by (seed, e), and the augmentation of batch i
is seeded by (seed, i).  A run resumed at iteration i therefore sees exactly the data
an uninterrupted run would, and the global batch is the same whatever the number of
replicas or workers that share it.
"""

import argparse
import os
import re
import socket
import sys

import numpy as np
import tensorflow as tf

IMAGE_SIZE = 32
NUM_CLASSES = 10
NUM_TRAIN = 50000
NUM_TEST = 10000
RECORD_BYTES = 1 + 32 * 32 * 3  # label byte + depth-major 3x32x32 image
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_FILE = "test_batch.bin"
#: CIFAR-10+ padding of the original `cifar10plus_input.py`.
PLUS_PAD = 4
AUGMENTATIONS = ("flip", "cifar10plus", "none")

SETUP_HINT = (
    "Run `./dataset_setup.sh {path}` on a machine with internet access (it downloads "
    "CIFAR-10 with tensorflow-datasets), or copy the original's binary files "
    "(data_batch_1.bin ... data_batch_5.bin, test_batch.bin) into {path}."
)


class DatasetError(RuntimeError):
    """The dataset is missing, incomplete or corrupt; the message says what to do."""


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------
def read_binary_file(path, expected_records=None):
    """Decode one CIFAR-10 binary file into (images uint8 [N,32,32,3], labels int32 [N])."""
    size = os.path.getsize(path)
    if size == 0 or size % RECORD_BYTES:
        raise DatasetError(
            f"{path} is truncated or not a CIFAR-10 binary file: {size} bytes is not a "
            f"multiple of the {RECORD_BYTES}-byte record (1 label byte + 3072 image bytes). "
            "Delete it and download the data again (./dataset_setup.sh)."
        )
    n = size // RECORD_BYTES
    if expected_records is not None and n != expected_records:
        raise DatasetError(
            f"{path} holds {n} records; a CIFAR-10 batch file holds {expected_records}. "
            "The file is truncated or from another dataset: delete it and download the data "
            "again (./dataset_setup.sh)."
        )
    raw = np.fromfile(path, dtype=np.uint8).reshape(n, RECORD_BYTES)
    labels = raw[:, 0].astype(np.int32)
    if labels.max() >= NUM_CLASSES:
        raise DatasetError(
            f"{path} has label {labels.max()} (CIFAR-10 labels are 0..9): the file is corrupt "
            "or from another dataset (CIFAR-100 binaries have 2 label bytes)."
        )
    # depth-major [3, 32, 32] -> [32, 32, 3], as the original's transpose([1, 2, 0])
    images = raw[:, 1:].reshape(n, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def has_binary_files(data_path):
    return any(os.path.exists(os.path.join(data_path, f)) for f in TRAIN_FILES + [TEST_FILE])


def load_binary(data_path):
    missing = [f for f in TRAIN_FILES + [TEST_FILE] if not os.path.exists(os.path.join(data_path, f))]
    if missing:
        raise DatasetError(
            f"{data_path} holds some of the original CIFAR-10 binary files but not "
            f"{', '.join(missing)}. " + SETUP_HINT.format(path=data_path)
        )
    parts = [read_binary_file(os.path.join(data_path, f), 10000) for f in TRAIN_FILES]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = read_binary_file(os.path.join(data_path, TEST_FILE), 10000)
    return train, test


def _network_reachable(host="www.cs.toronto.edu", port=443, timeout=5.0):
    """Whether the CIFAR-10 download host answers; tfds would otherwise retry for minutes."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_tfds(data_path, download=True):
    """CIFAR-10 from tensorflow-datasets under `data_path` (downloaded there if allowed)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - requirements install it
        raise DatasetError(
            f"tensorflow-datasets is not installed ({e}); pip install -r requirements.txt"
        ) from e
    try:
        builder = tfds.builder("cifar10", data_dir=data_path)
        return _read_tfds(builder)
    except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as missing:
        # tfds says "could not find data": fall through to the download.
        reason = missing
    except Exception as e:  # noqa: BLE001 - DataLossError, json/proto ParseError, ...
        # The data is there but cannot be read: truncated or corrupt records, or
        # metadata that does not match them.  Downloading over it would not help.
        raise DatasetError(
            f"The tensorflow-datasets copy of CIFAR-10 in {data_path} is corrupt or incomplete "
            f"({type(e).__name__}: {_error_text(e)}). Delete "
            f"{os.path.join(data_path, 'cifar10')} and prepare it again: "
            + SETUP_HINT.format(path=data_path)
        ) from None
    if not download:
        raise DatasetError(f"No CIFAR-10 data in {data_path} ({reason}). " + SETUP_HINT.format(path=data_path))
    if not _network_reachable():
        raise DatasetError(
            f"No CIFAR-10 data in {data_path} (neither the original's binary files nor a "
            "tensorflow-datasets copy) and the download host www.cs.toronto.edu cannot be "
            "reached. " + SETUP_HINT.format(path=data_path)
        )
    print(f"Downloading CIFAR-10 into {data_path} (tensorflow-datasets) ...", file=sys.stderr)
    builder.download_and_prepare()
    return _read_tfds(builder)


def _error_text(error):
    """The informative part of a (TensorFlow) exception's message, on one line."""
    text = getattr(error, "message", None) or str(error)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:[^\]]*\].*$", "", text, flags=re.S)
    text = " ".join(text.split())
    return text[:300]


def _read_tfds(builder):
    import tensorflow_datasets as tfds

    out = []
    for split in ("train", "test"):
        images, labels = [], []
        for x, y in tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True).batch(5000)):
            images.append(x)
            labels.append(y)
        out.append((np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32)))
    return tuple(out)


def load_cifar10(data_path, download=True):
    """((train_images, train_labels), (test_images, test_labels)) as uint8/int32 arrays."""
    if has_binary_files(data_path):
        (train, test) = load_binary(data_path)
    else:
        train, test = load_tfds(data_path, download=download)
    for name, (images, labels), n in [("train", train, NUM_TRAIN), ("test", test, NUM_TEST)]:
        if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or len(images) != len(labels):
            raise DatasetError(
                f"CIFAR-10 {name} split in {data_path} has images of shape {images.shape} and "
                f"{len(labels)} labels; expected [N, 32, 32, 3] images with one label each."
            )
    return train, test


# ---------------------------------------------------------------------------
# Augmentation (vectorised over a batch, stateless)
# ---------------------------------------------------------------------------
def random_flip(images, seed):
    """Flip each image left-right with probability 1/2 (the original's only training
    augmentation for SphereNet-9)."""
    flip = tf.random.stateless_uniform([tf.shape(images)[0]], seed=seed) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


def pad_crop(images, seed, pad=PLUS_PAD):
    """CIFAR-10+: pad `pad` pixels on each side with SYMMETRIC padding (mirror including
    the edge pixel, as tf.pad 'SYMMETRIC') and take a random 32x32 crop of each image."""
    n = tf.shape(images)[0]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="SYMMETRIC")
    offsets = tf.random.stateless_uniform([n, 2], seed=seed, minval=0, maxval=2 * pad + 1,
                                          dtype=tf.int32)
    rows = offsets[:, 0:1] + tf.range(IMAGE_SIZE)[None, :]  # [n, 32]
    cols = offsets[:, 1:2] + tf.range(IMAGE_SIZE)[None, :]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)  # [n, 32, W+2p, 3]
    return tf.gather(cropped, cols, axis=2, batch_dims=1)  # [n, 32, 32, 3]


def augment(images, seed, augmentation):
    """uint8 batch -> float32 0..255 batch with the named training augmentation."""
    images = tf.cast(images, tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    if augmentation == "cifar10plus":
        images = pad_crop(images, seeds[0])
    if augmentation in ("flip", "cifar10plus"):
        images = random_flip(images, seeds[1])
    return images


# ---------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------
def _check_augmentation(augmentation):
    if augmentation not in AUGMENTATIONS:
        raise ValueError(
            f"Unknown augmentation {augmentation!r}. Allowed values are: "
            f"{', '.join(repr(a) for a in AUGMENTATIONS)}."
        )


def train_dataset(images, labels, batch_size, seed=0, start_iteration=0, augmentation="flip",
                  shard=(0, 1)):
    """Infinite stream of training batches (images float32 0..255, labels int32).

    Element i is the global batch of iteration `start_iteration + i`.  With
    `shard=(k, n)` each element is the k-th of n equal slices of that global batch
    (one slice per input pipeline / worker); the union over k is the same batch.
    """
    _check_augmentation(augmentation)
    n = len(images)
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} training images")
    index, count = shard
    if batch_size % count:
        raise ValueError(f"batch size {batch_size} is not divisible by {count} input pipelines")
    images = tf.constant(images)
    labels = tf.constant(labels)
    start = start_iteration * batch_size
    first_epoch = start // n

    def epoch_indices(epoch):
        return tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int32), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )

    ds = tf.data.Dataset.range(first_epoch, 2**62).map(epoch_indices)
    ds = ds.flat_map(tf.data.Dataset.from_tensor_slices)
    ds = ds.skip(start - first_epoch * n).batch(batch_size, drop_remainder=True)
    ds = tf.data.Dataset.zip(ds, tf.data.Dataset.range(start_iteration, 2**62))
    per_shard = batch_size // count

    def make_batch(idx, iteration):
        aug_seed = tf.stack([tf.constant(seed, tf.int64) + 1_000_003, iteration])
        x = augment(tf.gather(images, idx), aug_seed, augmentation)
        y = tf.gather(labels, idx)
        lo = index * per_shard
        return x[lo:lo + per_shard], y[lo:lo + per_shard]

    ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def test_dataset(images, labels, batch_size, shard=(0, 1)):
    """The whole test set in order, no augmentation, float32 0..255.  With `shard=(k, n)`
    each batch is the k-th of n slices (batch_size must be divisible by n)."""
    index, count = shard
    if batch_size % count:
        raise ValueError(f"test batch size {batch_size} is not divisible by {count} input pipelines")
    per_shard = batch_size // count
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)

    def prepare(x, y):
        lo = index * per_shard
        return tf.cast(x[lo:lo + per_shard], tf.float32), y[lo:lo + per_shard]

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------
# Command line: dataset_setup.sh
# ---------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Download and prepare CIFAR-10 (tensorflow-datasets) into a folder, or "
        "check an existing copy (the original's binary files or a tfds copy)."
    )
    parser.add_argument("data_path", nargs="?", default="cifar10/", help="data folder (default: cifar10/)")
    args = parser.parse_args(argv)
    os.makedirs(args.data_path, exist_ok=True)
    try:
        (train_x, _), (test_x, _) = load_cifar10(args.data_path, download=True)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"CIFAR-10 ready in {args.data_path}: {len(train_x)} training and {len(test_x)} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
