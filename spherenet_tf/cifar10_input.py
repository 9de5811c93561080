"""CIFAR-10 and CIFAR-100 input: the original's binary files or tensorflow-datasets.

Ports `cifar10_input.py` (SphereNet-9, flip-only augmentation) and
`sphere_resnet/cifar10plus_input.py` (CIFAR-10+: symmetric 4-pixel pad, random 32x32
crop, flip) of wy1iu/SphereNet.  The original ships CIFAR-10 only; "Deep Hyperspherical
Learning" also reports CIFAR-100, which is read the same way (`dataset="cifar100"`: the
100 fine labels).  Where the data comes from:

1. If `data_path` holds the dataset's binary files (CIFAR-10: `data_batch_1.bin` ...
   `data_batch_5.bin`, `test_batch.bin`, as `dataset_setup.sh` of the original left
   them; CIFAR-100: `train.bin`, `test.bin`), they are read.
2. Else a tensorflow-datasets copy (`cifar10` / `cifar100`) under `data_path` is used,
   and downloaded there first when it is missing and the network is reachable
   (`./dataset_setup.sh` does that ahead of time).

Images reach the model as float32 in 0..255 (the model normalises them).

The training stream is a pure function of (seed, iteration): epoch e is a stateless
permutation of the 50,000 images seeded by (seed, e), and the augmentation of batch i
is seeded by (seed, i).  A run resumed at iteration i therefore sees exactly the data
an uninterrupted run would, and the global batch is the same whatever the number of
replicas or workers that share it.
"""

import argparse
import collections
import os
import re
import socket
import sys

import numpy as np
import tensorflow as tf

IMAGE_SIZE = 32
IMAGE_BYTES = IMAGE_SIZE * IMAGE_SIZE * 3
NUM_TRAIN = 50000
NUM_TEST = 10000
#: CIFAR-10+ padding of the original `cifar10plus_input.py`.
PLUS_PAD = 4
AUGMENTATIONS = ("flip", "cifar10plus", "none")

#: One dataset: its classes, binary files and records, and its tensorflow-datasets name.
#: A binary record is `label_bytes` label bytes (the class is the last one: CIFAR-100's
#: fine label follows its coarse label) and a depth-major 3x32x32 image.
Dataset = collections.namedtuple(
    "Dataset", "name title n_class label_bytes coarse_classes train_files test_file url")
DATASETS = {
    "cifar10": Dataset("cifar10", "CIFAR-10", 10, 1, None,
                       tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin",
                       "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"),
    "cifar100": Dataset("cifar100", "CIFAR-100", 100, 2, 20, ("train.bin",), "test.bin",
                        "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"),
}
RECORD_BYTES = 1 + IMAGE_BYTES  # CIFAR-10: label byte + depth-major 3x32x32 image
TEST_FILE = DATASETS["cifar10"].test_file


def dataset_spec(dataset):
    """The `Dataset` named `dataset` ('cifar10' or 'cifar100')."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset {dataset!r} is not one of {', '.join(DATASETS)}")
    return DATASETS[dataset]


def record_bytes(dataset="cifar10"):
    return dataset_spec(dataset).label_bytes + IMAGE_BYTES


def setup_hint(path, dataset="cifar10"):
    d = dataset_spec(dataset)
    files = ", ".join(d.train_files + (d.test_file,))
    return (f"Run `./dataset_setup.sh --dataset {d.name} {path}` on a machine with internet "
            f"access (it downloads {d.title} with tensorflow-datasets), or copy the binary "
            f"files of {d.title} ({files}) into {path}.")


class DatasetError(RuntimeError):
    """The dataset is missing, incomplete or corrupt; the message says what to do."""


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------
def read_binary_file(path, dataset="cifar10"):
    """Decode one binary file of `dataset` into (images uint8 [N,32,32,3], labels int32 [N]).

    Any whole number of records is read (the original's reader takes any: users train
    on subsets, or on their own data in this format); a partial record is refused.
    CIFAR-100's label is the fine label (100 classes), the record's second byte.
    """
    d = dataset_spec(dataset)
    n_bytes = record_bytes(dataset)
    size = os.path.getsize(path)
    if size == 0 or size % n_bytes:
        other = [o.title for o in DATASETS.values() if o is not d
                 and size and size % (o.label_bytes + IMAGE_BYTES) == 0]
        raise DatasetError(
            f"{path} is truncated or not a {d.title} binary file: {size} bytes is not a "
            f"multiple of the {n_bytes}-byte record ({d.label_bytes} label byte"
            f"{'s' if d.label_bytes > 1 else ''} + {IMAGE_BYTES} image bytes)"
            + (f"; it would fit {other[0]}'s records (--dataset {other[0].lower().replace('-', '')})"
               if other else "")
            + f". Delete it and download the data again (./dataset_setup.sh --dataset {d.name})."
        )
    n = size // n_bytes
    raw = np.fromfile(path, dtype=np.uint8).reshape(n, n_bytes)
    labels = raw[:, d.label_bytes - 1].astype(np.int32)
    if labels.max() >= d.n_class or (d.coarse_classes and raw[:, 0].max() >= d.coarse_classes):
        bad = (f"coarse label {raw[:, 0].max()} (0..{d.coarse_classes - 1})"
               if labels.max() < d.n_class else f"label {labels.max()} (0..{d.n_class - 1})")
        raise DatasetError(
            f"{path} has {bad}: the file is corrupt or not {d.title}"
            + (" (CIFAR-100 binaries have 2 label bytes: --dataset cifar100)" if d.name == "cifar10" else "")
            + "."
        )
    # depth-major [3, 32, 32] -> [32, 32, 3], as the original's transpose([1, 2, 0])
    images = raw[:, d.label_bytes:].reshape(n, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def has_binary_files(data_path, dataset="cifar10"):
    d = dataset_spec(dataset)
    return any(os.path.exists(os.path.join(data_path, f)) for f in d.train_files + (d.test_file,))


def load_binary(data_path, dataset="cifar10"):
    d = dataset_spec(dataset)
    names = d.train_files + (d.test_file,)
    missing = [f for f in names if not os.path.exists(os.path.join(data_path, f))]
    if missing:
        raise DatasetError(
            f"{data_path} holds some of the {d.title} binary files but not "
            f"{', '.join(missing)}. " + setup_hint(data_path, dataset)
        )
    parts = [read_binary_file(os.path.join(data_path, f), dataset) for f in d.train_files]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = read_binary_file(os.path.join(data_path, d.test_file), dataset)
    if (len(train[0]), len(test[0])) != (NUM_TRAIN, NUM_TEST):
        print(f"note: the binary files in {data_path} hold {len(train[0])} training and "
              f"{len(test[0])} test images ({d.title} has {NUM_TRAIN} and {NUM_TEST}); using "
              "them as they are.", file=sys.stderr)
    return train, test


def _network_reachable(host="www.cs.toronto.edu", port=443, timeout=5.0):
    """Whether the CIFAR download host answers; tfds would otherwise retry for minutes."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_tfds(data_path, download=True, dataset="cifar10"):
    """`dataset` from tensorflow-datasets under `data_path` (downloaded there if allowed)."""
    d = dataset_spec(dataset)
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - requirements install it
        raise DatasetError(
            f"tensorflow-datasets is not installed ({e}); pip install -r requirements.txt"
        ) from e
    try:
        builder = tfds.builder(d.name, data_dir=data_path)
        return _read_tfds(builder)
    except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as missing:
        # tfds says "could not find data": fall through to the download.
        reason = missing
    except Exception as e:  # noqa: BLE001 - DataLossError, json/proto ParseError, ...
        # The data is there but cannot be read: truncated or corrupt records, or
        # metadata that does not match them.  Downloading over it would not help.
        raise DatasetError(
            f"The tensorflow-datasets copy of {d.title} in {data_path} is corrupt or incomplete "
            f"({type(e).__name__}: {_error_text(e)}). Delete "
            f"{os.path.join(data_path, d.name)} and prepare it again: "
            + setup_hint(data_path, dataset)
        ) from None
    if not download:
        raise DatasetError(f"No {d.title} data in {data_path} ({reason}). " + setup_hint(data_path, dataset))
    if not _network_reachable():
        raise DatasetError(
            f"No {d.title} data in {data_path} (neither binary files nor a "
            "tensorflow-datasets copy) and the download host www.cs.toronto.edu cannot be "
            "reached. " + setup_hint(data_path, dataset)
        )
    print(f"Downloading {d.title} into {data_path} (tensorflow-datasets) ...", file=sys.stderr)
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
        # as_supervised: (image, label); CIFAR-100's `label` is the fine label
        for x, y in tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True).batch(5000)):
            images.append(x)
            labels.append(y)
        out.append((np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32)))
    return tuple(out)


def load_dataset(data_path, dataset="cifar10", download=True):
    """((train_images, train_labels), (test_images, test_labels)) of `dataset` as
    uint8/int32 arrays."""
    d = dataset_spec(dataset)
    if has_binary_files(data_path, dataset):
        (train, test) = load_binary(data_path, dataset)
    else:
        train, test = load_tfds(data_path, download=download, dataset=dataset)
    for name, (images, labels) in [("train", train), ("test", test)]:
        if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or len(images) != len(labels):
            raise DatasetError(
                f"{d.title} {name} split in {data_path} has images of shape {images.shape} and "
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
        description="Download and prepare CIFAR-10 or CIFAR-100 (tensorflow-datasets) into a "
        "folder, or check an existing copy (binary files or a tfds copy)."
    )
    parser.add_argument("data_path", nargs="?", default=None,
                        help="data folder (default: cifar10/ or cifar100/)")
    parser.add_argument("--dataset", default="cifar10", choices=sorted(DATASETS),
                        help="which dataset (default: cifar10)")
    args = parser.parse_args(argv)
    d = DATASETS[args.dataset]
    data_path = args.data_path or f"{d.name}/"
    os.makedirs(data_path, exist_ok=True)
    try:
        (train_x, _), (test_x, _) = load_dataset(data_path, args.dataset, download=True)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{d.title} ready in {data_path}: {len(train_x)} training and {len(test_x)} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
