"""Checks of what a user hands the port, each failing with a message that says what
was received, what is allowed and what to do.

The original (wy1iu/SphereNet, TF1) has no such checks: bad input there ends in a
shape error deep inside the graph, or in NaN.  See docs/differences.md.
"""

import json


class InputError(ValueError):
    """Bad input to a run (data, cluster description, model input)."""


def check_tf_config(text):
    """Validate the TF_CONFIG environment variable of `--strategy multi_worker`.

    Returns the parsed dict.  Expected form (docs/distributed.md, "Several machines"):
    {"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": "worker", "index": 0}}
    """
    example = ('TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not text:
        raise InputError(
            "--strategy multi_worker needs the TF_CONFIG environment variable describing the "
            f"cluster; it is not set. Set it on every machine, e.g. {example} (index 1 on the "
            "second machine); see docs/distributed.md, 'Several machines'."
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(
            f"TF_CONFIG is not valid JSON ({e.msg} at character {e.pos}). Received: {text!r}. "
            f"Expected e.g. {example}."
        ) from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise InputError(f"TF_CONFIG has no \"cluster\" object. Received: {text!r}. Expected e.g. {example}.")
    cluster = config["cluster"]
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise InputError(
            f"TF_CONFIG has no \"task\" with a \"type\" and an \"index\" (which member of the "
            f"cluster this process is). Received: {text!r}. Expected e.g. {example}."
        )
    kind, index = task["type"], task["index"]
    members = cluster.get(kind)
    if not isinstance(members, list) or not members:
        raise InputError(
            f"TF_CONFIG's task type {kind!r} is not a job of its cluster (jobs: "
            f"{', '.join(map(repr, cluster)) or 'none'}). Use \"worker\" (or \"chief\")."
        )
    if not isinstance(index, int) or not 0 <= index < len(members):
        raise InputError(
            f"TF_CONFIG's task index {index!r} is outside its {kind!r} list of {len(members)} "
            f"address(es) {members}: use 0 .. {len(members) - 1}, a different one on each machine."
        )
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(
                isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses):
            raise InputError(
                f"TF_CONFIG's cluster job {job!r} must be a list of \"host:port\" strings. "
                f"Received: {addresses!r}."
            )
    return config


def _describe(array):
    return f"shape {tuple(array.shape)}, dtype {array.dtype}"


def check_images(images, input_shape, what="images"):
    """Check an image array against a model's input shape (without the batch axis).

    Images must be [N, H, W, C] (channels last) of a numeric dtype, with values in
    0..255 (uint8, or floats that the model normalises with (x - 127.5) / 128 inside).
    Returns the array unchanged.
    """
    import numpy as np

    expected = tuple(int(d) for d in input_shape)
    shape_text = "[N, " + ", ".join(map(str, expected)) + "]"
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        raise InputError(
            f"{what} must be an array of {shape_text} images; received a "
            f"{type(images).__name__}. Convert it with numpy.asarray(...)."
        )
    if images.dtype.kind not in "uif":
        raise InputError(
            f"{what} must be numeric pixel values 0..255 (uint8 or float); received "
            f"{_describe(images)}. Decode the images to numbers first."
        )
    got = tuple(images.shape)
    if got[1:] != expected:
        hint = "Resize or crop the images to that size, or build the model for them."
        if len(got) == len(expected) and got == expected:
            hint = "That is one image: add the batch axis with images[None]."
        elif len(got) == len(expected) + 1 and got[1:] == (expected[-1],) + expected[:-1]:
            hint = "They look channels-first: transpose them with images.transpose(0, 2, 3, 1)."
        elif len(got) == len(expected) and got[1:] == expected[:-1] and expected[-1] == 1:
            hint = "Add the channel axis with images[..., None]."
        elif len(got) == len(expected) + 1 and got[1:-1] == expected[:-1]:
            hint = (f"The model expects {expected[-1]} channel(s): convert the images (e.g. "
                    "grayscale to RGB with numpy.repeat(images, 3, axis=-1)).")
        raise InputError(
            f"{what} have {_describe(images)}; the model takes {shape_text} images "
            f"(channels last). {hint}"
        )
    if images.size and (images.dtype.kind != "u" or images.dtype.itemsize > 1):  # uint8 is 0..255
        lo, hi = float(images.min()), float(images.max())  # NaN propagates into both
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise InputError(
                f"{what} contain {int(np.size(images) - np.isfinite(images).sum())} NaN/Inf values; "
                "pixel values must be finite numbers in 0..255. Check how the images were decoded."
            )
        if lo < 0 or hi > 255:
            raise InputError(
                f"{what} have values from {lo:g} to {hi:g}; the model takes pixel values in "
                "0..255 and normalises them itself ((x - 127.5) / 128, as the original). "
                "Pass the raw 0..255 images (undo any normalisation; images in 0..1 times 255)."
            )
    return images


def check_labels(labels, n_images, n_class, what="labels"):
    """Labels must be n_images class indices in 0..n_class-1.  Returns int32 labels."""
    import numpy as np

    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape == (n_images, n_class):
        raise InputError(
            f"{what} have shape {labels.shape}: they look one-hot. The loss takes class "
            "indices: pass labels.argmax(axis=1)."
        )
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != n_images:
        raise InputError(
            f"{what} have {_describe(labels)}; expected one class index per image: shape "
            f"({n_images},)."
        )
    if labels.dtype.kind not in "uif" or (labels.dtype.kind == "f" and not np.all(np.mod(labels, 1) == 0)):
        raise InputError(
            f"{what} must be integer class indices 0..{n_class - 1}; received dtype "
            f"{labels.dtype}" + (f" with non-integer values such as {labels[np.mod(labels, 1) != 0][0].item()!r}"
                                 if labels.dtype.kind == "f" else "") + "."
        )
    if len(labels):
        lo, hi = labels.min(), labels.max()
        if lo < 0 or hi >= n_class:
            bad = labels[(labels < 0) | (labels >= n_class)]
            raise InputError(
                f"{what} range from {lo} to {hi}, but n_class={n_class} allows 0..{n_class - 1} "
                f"({len(bad)} label{'s' if len(bad) > 1 else ''} outside, e.g. {bad[0]}). Set "
                "--n_class to the number of "
                "classes of this dataset, or fix the labels."
            )
    return labels.astype(np.int32)


def check_dataset(data, n_class, input_shape, batch_sz):
    """Check ((train_images, train_labels), (test_images, test_labels)) for a run.

    Returns the same structure with labels as int32 arrays.
    """
    try:
        (train_x, train_y), (test_x, test_y) = data
    except (TypeError, ValueError):
        raise InputError(
            "data must be ((train_images, train_labels), (test_images, test_labels)); received a "
            f"{type(data).__name__}{' of length ' + str(len(data)) if hasattr(data, '__len__') else ''}."
        ) from None
    out = []
    for split, x, y in [("training", train_x, train_y), ("test", test_x, test_y)]:
        check_images(x, input_shape, f"{split} images")
        y = check_labels(y, len(x), n_class, f"{split} labels")
        out.append((x, y))
    if len(train_x) < batch_sz:
        raise InputError(
            f"the training set has {len(train_x)} images, fewer than one batch (batch_sz="
            f"{batch_sz}). Use a smaller --batch_sz or more data."
        )
    if len(test_x) == 0:
        raise InputError("the test set is empty; the run evaluates on it every eval_every iterations.")
    return tuple(out)
