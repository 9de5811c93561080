"""The CIFAR-10 input pipeline: binary decoding, tensorflow-datasets (mock data),
augmentation, determinism and error messages.  Never touches the network."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from support.fake_cifar import TRAIN_FILES, load_cifar10, records, synthetic_images
from spherenet_tf import cifar10_input as ci


def test_decodes_a_known_record_exactly(tmp_path):
    """One record written byte by byte: label, then R plane, G plane, B plane."""
    image = np.zeros((32, 32, 3), np.uint8)
    image[..., 0] = np.arange(32)[:, None]          # R = row
    image[..., 1] = np.arange(32)[None, :] + 100    # G = 100 + column
    image[..., 2] = 7                               # B constant
    image[3, 5] = (250, 1, 2)
    raw = bytes([7]) + image[..., 0].tobytes() + image[..., 1].tobytes() + image[..., 2].tobytes()
    assert len(raw) == ci.RECORD_BYTES
    path = tmp_path / "one.bin"
    path.write_bytes(raw * 3)
    images, labels = ci.read_binary_file(str(path))
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, [7, 7, 7])
    np.testing.assert_array_equal(images[0], image)


def test_reads_the_originals_binary_files(binary_dir):
    (train_x, train_y), (test_x, test_y) = load_cifar10(binary_dir, download=False)
    assert train_x.shape == (50000, 32, 32, 3) and test_x.shape == (10000, 32, 32, 3)
    assert train_y.dtype == np.int32 and set(np.unique(train_y)) == set(range(10))
    # the first training record is the first record of data_batch_1.bin
    with open(os.path.join(binary_dir, "data_batch_1.bin"), "rb") as f:
        first = np.frombuffer(f.read(ci.RECORD_BYTES), np.uint8)
    assert train_y[0] == first[0]
    np.testing.assert_array_equal(train_x[0], first[1:].reshape(3, 32, 32).transpose(1, 2, 0))


def test_truncated_file_is_named(binary_dir, tmp_path):
    bad = tmp_path / "cifar"
    bad.mkdir()
    for name in os.listdir(binary_dir):
        os.symlink(os.path.join(binary_dir, name), bad / name)
    os.remove(bad / "data_batch_3.bin")
    with open(os.path.join(binary_dir, "data_batch_3.bin"), "rb") as f:
        (bad / "data_batch_3.bin").write_bytes(f.read(ci.RECORD_BYTES * 100 + 17))
    with pytest.raises(ci.DatasetError, match=r"data_batch_3\.bin is truncated.*not a multiple of "
                                              r"the 3073-byte record.*dataset_setup\.sh"):
        load_cifar10(str(bad), download=False)


def test_binary_files_of_any_whole_record_count_are_read(tmp_path, capsys):
    """The original's reader takes any whole number of records (subsets, a user's own
    data in this format): 200 training and 100 test records per file are read as they
    are, with a one-line note that these are not CIFAR-10's counts (issue 13; the port
    refused them before)."""
    rng = np.random.RandomState(0)
    content = {}
    for name, n in [(f, 200) for f in TRAIN_FILES] + [(ci.TEST_FILE, 100)]:
        images = rng.randint(0, 256, (n, 32, 32, 3)).astype(np.uint8)
        labels = rng.randint(0, 10, n)
        (tmp_path / name).write_bytes(records(images, labels))
        content[name] = (images, labels)
    (train_x, train_y), (test_x, test_y) = load_cifar10(str(tmp_path), download=False)
    assert train_x.shape == (1000, 32, 32, 3) and test_x.shape == (100, 32, 32, 3)
    np.testing.assert_array_equal(train_x[200:400], content["data_batch_2.bin"][0])
    np.testing.assert_array_equal(test_y, content[ci.TEST_FILE][1])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"note: the binary files in {tmp_path} hold 1000 training and 100 test images "
                   "(CIFAR-10 has 50000 and 10000); using them as they are."]


def test_wrong_label_and_missing_file_are_named(tmp_path):
    raw = bytearray(records(np.zeros((10000, 32, 32, 3), np.uint8), np.zeros(10000, np.int64)))
    raw[0] = 42
    (tmp_path / "data_batch_1.bin").write_bytes(bytes(raw))
    with pytest.raises(ci.DatasetError, match=r"data_batch_1\.bin has label 42"):
        ci.read_binary_file(str(tmp_path / "data_batch_1.bin"))
    with pytest.raises(ci.DatasetError, match=r"not data_batch_2\.bin, data_batch_3\.bin, "
                                              r"data_batch_4\.bin, data_batch_5\.bin, test_batch\.bin"):
        load_cifar10(str(tmp_path), download=False)


def test_offline_without_data_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setattr(ci, "_network_reachable", lambda *a, **k: False)
    with pytest.raises(ci.DatasetError, match=r"cannot be reached\. Run `\./dataset_setup\.sh "):
        load_cifar10(str(tmp_path / "empty"), download=True)
    with pytest.raises(ci.DatasetError, match=r"No CIFAR-10 data in .*dataset_setup\.sh"):
        load_cifar10(str(tmp_path / "empty"), download=False)


def test_tfds_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=24):
        (train_x, train_y), (test_x, test_y) = load_cifar10(str(tmp_path), download=False)
    assert train_x.shape == (24, 32, 32, 3) and train_x.dtype == np.uint8
    assert test_x.shape == (24, 32, 32, 3) and test_y.dtype == np.int32
    ds = ci.train_dataset(train_x, train_y, 8, seed=1)
    images, labels = next(iter(ds))
    assert images.dtype == tf.float32 and tuple(images.shape) == (8, 32, 32, 3)
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0


def _one_epoch(images, labels, batch, augmentation, seed=3):
    ds = ci.train_dataset(images, labels, batch, seed=seed, augmentation=augmentation)
    xs, ys = [], []
    for x, y in ds.take(len(images) // batch):
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def test_flip_only_augmentation_and_epoch_permutation():
    labels = np.arange(400) % 10
    images = synthetic_images(labels, 0)
    for col in (0, 31):  # tag each image in both top corners, so a flip keeps the tag readable
        images[:, 0, col, 0] = np.arange(400) % 256
        images[:, 0, col, 1] = np.arange(400) // 256
    x, y = _one_epoch(images, labels.astype(np.int32), 40, "flip")
    assert x.dtype == np.float32
    ids, flips = [], 0
    for img, lab in zip(x, y):
        tag = int(img[0, 0, 0]) + 256 * int(img[0, 0, 1])
        if np.array_equal(img, images[tag].astype(np.float32)):
            ids.append(tag)
        else:
            np.testing.assert_array_equal(img, images[tag][:, ::-1].astype(np.float32))
            ids.append(tag)
            flips += 1
        assert lab == labels[ids[-1]]
    assert sorted(ids) == list(range(400))  # an epoch is a permutation
    assert ids != list(range(400))  # shuffled
    assert 150 < flips < 250  # about half


def test_cifar10plus_pad_crop_properties():
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (64, 32, 32, 3)).astype(np.uint8)
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="symmetric")
    seen_offsets = set()
    for step in range(8):
        out = ci.pad_crop(tf.constant(images), tf.constant([5, step], tf.int64)).numpy()
        assert out.shape == (64, 32, 32, 3)
        for i in range(64):
            matches = [(r, c) for r in range(9) for c in range(9)
                       if np.array_equal(out[i], padded[i, r:r + 32, c:c + 32])]
            assert matches, "every crop is a 32x32 window of the symmetric 4-pixel padding"
            seen_offsets.update(matches)
    assert {r for r, _ in seen_offsets} == set(range(9))  # the full range 0..8 is used
    assert {c for _, c in seen_offsets} == set(range(9))
    # symmetric padding repeats the edge pixel: padded row 3 == image row 0
    np.testing.assert_array_equal(padded[:, 3, 4:36], images[:, 0])


def test_cifar10plus_stream_and_no_augmentation_at_test():
    labels = (np.arange(200) % 10).astype(np.int32)
    images = np.random.RandomState(1).randint(0, 256, (200, 32, 32, 3)).astype(np.uint8)
    x, _ = _one_epoch(images, labels, 20, "cifar10plus")
    assert x.shape == (200, 32, 32, 3)
    # most crops move the image (only offset (4, 4) without a flip leaves it in place)
    unchanged = sum(any(np.array_equal(a, b.astype(np.float32)) for b in images) for a in x)
    assert unchanged < 20
    test = ci.test_dataset(images, labels, 50)
    got = np.concatenate([b[0].numpy() for b in test])
    got_labels = np.concatenate([b[1].numpy() for b in test])
    np.testing.assert_array_equal(got, images.astype(np.float32))  # in order, untouched
    np.testing.assert_array_equal(got_labels, labels)


def test_stream_is_a_function_of_seed_and_iteration():
    labels = (np.arange(300) % 10).astype(np.int32)
    images = synthetic_images(labels, 2)
    full = list(ci.train_dataset(images, labels, 32, seed=7, augmentation="cifar10plus").take(25))
    resumed = list(ci.train_dataset(images, labels, 32, seed=7, start_iteration=17,
                                    augmentation="cifar10plus").take(8))
    for (a, la), (b, lb) in zip(full[17:], resumed):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(la.numpy(), lb.numpy())
    other = next(iter(ci.train_dataset(images, labels, 32, seed=8)))
    assert not np.array_equal(other[1].numpy(), full[0][1].numpy())
    # two shards of a batch are its two halves
    halves = [next(iter(ci.train_dataset(images, labels, 32, seed=7, augmentation="cifar10plus",
                                         shard=(k, 2)))) for k in range(2)]
    np.testing.assert_array_equal(np.concatenate([h[0].numpy() for h in halves]), full[0][0].numpy())


def test_pipeline_rejects_bad_arguments():
    images = np.zeros((10, 32, 32, 3), np.uint8)
    labels = np.zeros(10, np.int32)
    with pytest.raises(ValueError, match="Unknown augmentation 'crop'"):
        ci.train_dataset(images, labels, 2, augmentation="crop")
    with pytest.raises(ValueError, match="not divisible by 3 input pipelines"):
        ci.train_dataset(images, labels, 4, shard=(0, 3))
