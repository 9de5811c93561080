"""Generated CIFAR-10 / CIFAR-100 data for offline tests: the binary formats, a
tensorflow-datasets copy, and a learnable synthetic task (each class has its own
colour and stripe pattern)."""

import os

import numpy as np

from spherenet_tf.cifar10_input import DATASETS, RECORD_BYTES, TEST_FILE, load_dataset

#: CIFAR-10's five training files (binary format).
TRAIN_FILES = list(DATASETS["cifar10"].train_files)


def load_cifar10(data_path, download=True):
    """CIFAR-10 from `data_path` as the training scripts read it (`load_dataset`)."""
    return load_dataset(data_path, "cifar10", download)


def synthetic_images(labels, seed):
    """uint8 [N, 32, 32, 3] images whose class is easy to learn from colour and texture."""
    rng = np.random.RandomState(seed)
    n = len(labels)
    n_class = max(10, int(np.max(labels, initial=0)) + 1)
    palette = np.random.RandomState(1234).randint(30, 226, size=(n_class, 3))
    rows = np.arange(32)[:, None]
    images = np.empty((n, 32, 32, 3), np.float32)
    for c in range(n_class):
        idx = labels == c
        stripes = 40 * np.sin(rows * (c + 1) * np.pi / 16 + np.zeros((1, 32)))
        images[idx] = palette[c][None, None, None, :] + stripes[None, :, :, None]
    images += rng.normal(0, 25, size=images.shape)
    return np.clip(images, 0, 255).astype(np.uint8)


def records(images, labels, coarse=None):
    """Bytes of binary records: [coarse label byte (CIFAR-100),] label byte, depth-major
    image."""
    depth_major = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    heads = [labels.astype(np.uint8)[:, None]]
    if coarse is not None:
        heads.insert(0, coarse.astype(np.uint8)[:, None])
    return np.concatenate(heads + [depth_major], axis=1).tobytes()


def write_binary_cifar100(path, seed=0, n_train=400, n_test=100):
    """Write CIFAR-100's train.bin and test.bin of synthetic data into `path`; returns
    {file: (images, fine labels, coarse labels)}."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.RandomState(seed)
    content = {}
    for i, (name, n) in enumerate([("train.bin", n_train), ("test.bin", n_test)]):
        fine = rng.randint(0, 100, n)
        coarse = rng.randint(0, 20, n)
        images = synthetic_images(fine, seed * 100 + i)
        with open(os.path.join(path, name), "wb") as f:
            f.write(records(images, fine, coarse))
        content[name] = (images, fine, coarse)
    return content


def write_binary_cifar(path, seed=0, per_file=10000):
    """Write data_batch_1..5.bin and test_batch.bin of synthetic data into `path`."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.RandomState(seed)
    for i, name in enumerate(TRAIN_FILES + [TEST_FILE]):
        labels = rng.randint(0, 10, per_file)
        images = synthetic_images(labels, seed * 100 + i)
        with open(os.path.join(path, name), "wb") as f:
            f.write(records(images, labels))
    assert os.path.getsize(os.path.join(path, TEST_FILE)) == per_file * RECORD_BYTES
    return path


def write_tfds_cifar(data_dir, n_train=40, n_test=20, seed=0, name="cifar10"):
    """A tensorflow-datasets copy of `name` (cifar10 or cifar100) under `data_dir`, as
    `./dataset_setup.sh` leaves it (dataset_info.json, features.json, one TFRecord shard
    per split), made of synthetic images and written without any download.  Returns
    the version folder."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    n_class = 100 if name == "cifar100" else 10
    info = builder.info
    os.makedirs(builder.data_dir, exist_ok=True)
    splits = []
    for k, (split, n) in enumerate([("train", n_train), ("test", n_test)]):
        labels = np.random.RandomState(seed + k).randint(0, n_class, n)
        images = synthetic_images(labels, seed + k)
        template = tfds.core.ShardedFileTemplate(
            data_dir=builder.data_dir, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
            dataset_name=name, split=split, filetype_suffix="tfrecord")
        path = os.path.join(builder.data_dir, f"{name}-{split}.tfrecord-00000-of-00001")
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(n):
                example = {"id": f"{split}_{i}", "image": images[i], "label": int(labels[i])}
                if name == "cifar100":
                    example["coarse_label"] = int(labels[i]) // 5
                writer.write(info.features.serialize_example(example))
        splits.append(tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=os.path.getsize(path),
                                          filename_template=template))
    info.set_splits(tfds.core.SplitDict(splits))
    info.write_to_directory(builder.data_dir)
    return builder.data_dir
