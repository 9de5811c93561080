"""How far each exported format's logits are from the Keras model's and from the
original's, for the four networks at full size (docs/deploying.md, "Agreement").

    python benchmarks/export_agreement.py                  # all four (about 5 minutes on 2 cores)
    python benchmarks/export_agreement.py spherenet9       # one

Each network gets the golden fixtures' weights (rule 2.1 of tests/golden/README.md) and
their reference BN moving statistics (`ema_ref`), as the self-check does, so that its
eval-mode logits on the fixture images X and W1 are the original's `ref_eval/score` and
`ref_eval_W1/score`.  It is exported as SavedModel, LiteRT and ONNX with
`spherenet_tf.export_formats` (what `python -m spherenet_tf.export` writes), each file is
run in its own runtime, and the largest logit difference relative to the largest logit
is printed against the Keras model and against the original.  tests/test_export.py holds
SphereNet-9 and CNN-9 to these figures at full size and the ResNets at 1/6 width (full
width takes a minute per network to convert).
"""

import argparse
import os
import tempfile
import time

from common import print_table

import numpy as np

from spherenet_tf import export_formats as ef
from spherenet_tf import fixtures
from spherenet_tf.models import ORIGINAL_NETWORKS, build_original
from spherenet_tf.tf1_names import bn_ema_names, tf1_variables


def golden_network(golden, name):
    """(model, images, the original's eval logits on them)."""
    g = np.load(golden / f"model_{name}.npz")
    model = build_original(name)
    variables = tf1_variables(model)
    fixtures.assign_rule_weights(variables, fixtures.weight_prefix(golden))
    for bn in (str(b) for b in g["bn_layer_names"]):
        mean, variance = bn_ema_names(bn)
        variables[mean].assign(g[f"ema_ref/{bn}/mean"])
        variables[variance].assign(g[f"ema_ref/{bn}/var"])
    images = np.concatenate([g["images"], g["warmup_images_1"]]).astype(np.float32)
    expected = np.concatenate([g["ref_eval/score"].reshape(len(g["images"]), -1),
                               g["ref_eval_W1/score"].reshape(len(g["warmup_images_1"]), -1)])
    return model, images, expected


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("networks", nargs="*",
                        help=f"any of {', '.join(ORIGINAL_NETWORKS)} (default: all four)")
    parser.add_argument("--golden", help="the golden fixture folder (default: tests/golden/)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.networks if n not in ORIGINAL_NETWORKS]
    if unknown:
        parser.error(f"unknown network {unknown[0]!r}: choose from {', '.join(ORIGINAL_NETWORKS)}")
    golden = fixtures.golden_dir(args.golden)
    folder = tempfile.mkdtemp(prefix="export_agreement_")
    rows = []
    for name in args.networks or ORIGINAL_NETWORKS:
        model, images, original = golden_network(golden, name)
        keras_logits = model(images, training=False).numpy()
        rows.append([name, "Keras model", "0", f"{fixtures.rel_err(keras_logits, original):.2g}", ""])
        for fmt in ef.FORMATS:
            path = os.path.join(folder, f"{name}.{fmt}")
            start = time.perf_counter()
            ef.write(model, fmt, path)
            seconds = time.perf_counter() - start
            logits = ef.load(fmt, path)(images)
            rows.append([name, fmt, f"{fixtures.rel_err(logits, keras_logits):.2g}",
                         f"{fixtures.rel_err(logits, original):.2g}", f"{seconds:.0f} s"])
    print_table(["network", "format", "vs Keras", "vs original ref_eval", "export time"], rows)


if __name__ == "__main__":
    main()
