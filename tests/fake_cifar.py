"""Generated CIFAR-10 data for offline tests: the original's binary format, and a
learnable synthetic task (each class has its own colour and stripe pattern)."""

import os

import numpy as np

from spherenet_tf.cifar10_input import RECORD_BYTES, TEST_FILE, TRAIN_FILES


def synthetic_images(labels, seed):
    """uint8 [N, 32, 32, 3] images whose class is easy to learn from colour and texture."""
    rng = np.random.RandomState(seed)
    n = len(labels)
    palette = np.random.RandomState(1234).randint(30, 226, size=(10, 3))
    rows = np.arange(32)[:, None]
    images = np.empty((n, 32, 32, 3), np.float32)
    for c in range(10):
        idx = labels == c
        stripes = 40 * np.sin(rows * (c + 1) * np.pi / 16 + np.zeros((1, 32)))
        images[idx] = palette[c][None, None, None, :] + stripes[None, :, :, None]
    images += rng.normal(0, 25, size=images.shape)
    return np.clip(images, 0, 255).astype(np.uint8)


def records(images, labels):
    """Bytes of CIFAR-10 binary records: label byte + depth-major image."""
    depth_major = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return np.concatenate([labels.astype(np.uint8)[:, None], depth_major], axis=1).tobytes()


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


def write_tfds_cifar(data_dir, n_train=40, n_test=20, seed=0):
    """A tensorflow-datasets copy of `cifar10` under `data_dir`, as `./dataset_setup.sh`
    leaves it (dataset_info.json, features.json, one TFRecord shard per split), made of
    synthetic images and written without any download.  Returns the version folder."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = tfds.builder("cifar10", data_dir=data_dir)
    info = builder.info
    os.makedirs(builder.data_dir, exist_ok=True)
    splits = []
    for k, (split, n) in enumerate([("train", n_train), ("test", n_test)]):
        labels = np.random.RandomState(seed + k).randint(0, 10, n)
        images = synthetic_images(labels, seed + k)
        template = tfds.core.ShardedFileTemplate(
            data_dir=builder.data_dir, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
            dataset_name="cifar10", split=split, filetype_suffix="tfrecord")
        path = os.path.join(builder.data_dir, f"cifar10-{split}.tfrecord-00000-of-00001")
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(n):
                writer.write(info.features.serialize_example(
                    {"id": f"{split}_{i}", "image": images[i], "label": int(labels[i])}))
        splits.append(tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=os.path.getsize(path),
                                          filename_template=template))
    info.set_splits(tfds.core.SplitDict(splits))
    info.write_to_directory(builder.data_dir)
    return builder.data_dir
