"""Convert a checkpoint of the original TF1 SphereNet code into a Keras `.keras` file.

SphereNet: "Deep Hyperspherical Learning", Liu et al., NIPS 2017 (arXiv:1711.03189);
the original code is wy1iu/SphereNet.  Reading and checking is `spherenet_tf.tf1_checkpoint`.

    python convert_tf1_checkpoint.py models/64000 spherenet9.keras --model spherenet9
    python convert_tf1_checkpoint.py models/64000 linear.keras --model spherenet9 --norm linear
    python convert_tf1_checkpoint.py examples_models/64000 sigmoid.keras --model spherenet9 \\
        --norm sigmoid --widths 128,196,256 --fc6_bn       # the original's examples/*.py
    python convert_tf1_checkpoint.py baseline/baseline_models/64000 cnn.keras --model baseline_cnn
    python convert_tf1_checkpoint.py sphere_resnet/models/64000 r32.keras --model sphere_resnet32
    python convert_tf1_checkpoint.py models/64000 --inspect    # what is in a checkpoint?

A checkpoint holds weights, not the network's settings: SphereNet-9 and the baseline
CNN-9 have the same variables, whatever `norm`, so say which model it was trained as
(`--model`, and `--norm`/`--w_norm` when the run changed them).  Widths, `fc6` BN and
the learnable sigmoid's k are recorded, and a checkpoint that does not fit the model is
refused with the list of what differs.  The `.keras` file reloads with
`keras.models.load_model` (after `import spherenet_tf`) and predicts as the original
did; the Adam state is not converted (to continue training from a TF1 checkpoint, give
it to a training script: `python train_spherenet.py --tf1_checkpoint models/16000`).
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from spherenet_tf.models import build_cnn9, build_resnet32  # noqa: E402
from spherenet_tf.formulas import NORMS, W_NORMS  # noqa: E402
from spherenet_tf.tf1_checkpoint import (  # noqa: E402
    TF1CheckpointError, describe, load_tf1_checkpoint, read_tf1_checkpoint,
)

#: The original's four networks: its file, the port's builder and the settings the
#: original file hard-codes (`norm` / `w_norm` defaults can be changed on the command line).
MODELS = {
    "spherenet9": dict(
        original="spherenet.py (and examples/*.py)", norm="cosine",
        build=lambda a: build_cnn9(a.n_class, norm=a.norm, w_norm=a.w_norm, reg=False, orth=True,
                                   widths=a.widths, fc6_bn=a.fc6_bn, name="spherenet9")),
    "baseline_cnn": dict(
        original="baseline/baseline_cnn.py", norm="none",
        build=lambda a: build_cnn9(a.n_class, norm=a.norm, w_norm=a.w_norm, reg=True, orth=False,
                                   widths=a.widths, fc6_bn=a.fc6_bn, name="baseline_cnn")),
    "sphere_resnet32": dict(
        original="sphere_resnet/sphere_resnet_v1.py", norm="linear",
        build=lambda a: build_resnet32(a.n_class, norm=a.norm, w_norm=a.w_norm, reg=False,
                                       orth=True, name="sphere_resnet32")),
    "baseline_resnet32": dict(
        original="sphere_resnet/baseline/baseline_resnet.py", norm="none",
        build=lambda a: build_resnet32(a.n_class, norm=a.norm, w_norm=a.w_norm, reg=True,
                                       orth=False, name="baseline_resnet32")),
}


def _widths(text):
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if len(widths) != 3 or min(widths) < 1:
        raise argparse.ArgumentTypeError(
            f"expected three positive stage widths like 128,196,256, got {text!r}")
    return widths


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="models: " + "; ".join(f"{k} = the original {v['original']} (norm {v['norm']!r})"
                                      for k, v in MODELS.items()),
    )
    parser.add_argument("checkpoint", help="the original's checkpoint prefix, e.g. models/16000 "
                        "(files models/16000.index, .data-00000-of-00001), or its folder")
    parser.add_argument("output", nargs="?", help="the .keras file to write")
    parser.add_argument("--model", choices=sorted(MODELS), help="the network the checkpoint was trained as")
    parser.add_argument("--norm", choices=NORMS, help="SphereConv type (default: the model's original)")
    parser.add_argument("--w_norm", choices=W_NORMS, default="none", help="score layer")
    parser.add_argument("--widths", type=_widths, default=(128, 192, 256),
                        help="stage widths of the 9-layer nets (the original's examples use 128,196,256)")
    parser.add_argument("--fc6_bn", action="store_true", help="BN after fc6 (the original's examples)")
    parser.add_argument("--n_class", type=int, default=10, help="number of classes")
    parser.add_argument("--inspect", action="store_true",
                        help="only say what the checkpoint holds (no model needed)")
    args = parser.parse_args(argv)
    if not args.inspect:
        if args.output is None or args.model is None:
            parser.error("give the checkpoint, the output .keras file and --model "
                         f"({', '.join(sorted(MODELS))}); or --inspect to look into a checkpoint")
        if not args.output.endswith(".keras"):
            parser.error(f"the output must be a .keras file (Keras 3's format); got {args.output!r}")
        resnet = args.model in ("sphere_resnet32", "baseline_resnet32")
        if resnet and (args.widths != (128, 192, 256) or args.fc6_bn):
            parser.error("--widths and --fc6_bn apply to the 9-layer nets (spherenet9, baseline_cnn)")
    if args.norm is None:
        args.norm = MODELS[args.model]["norm"] if args.model else None
    return args


def inspect(path):
    prefix, reader, shapes, _ = read_tf1_checkpoint(path)
    from spherenet_tf.tf1_checkpoint import adam_steps_from_powers

    lines = [f"{prefix}: {len(shapes)} variables; {describe(shapes)}."]
    if "beta2_power" in shapes:
        steps, exact = adam_steps_from_powers(reader.get_tensor("beta1_power"),
                                              reader.get_tensor("beta2_power"))
        if steps is not None:
            lines.append(f"Saved after {steps} Adam steps (iteration {steps - 1})"
                         + ("" if exact else ", approximately") + ".")
    return "\n".join(lines)


def convert(args):
    """Build the model, load the checkpoint, save the .keras file; returns (model, info)."""
    model = MODELS[args.model]["build"](args)
    info = load_tf1_checkpoint(model, args.checkpoint)
    folder = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(folder, exist_ok=True)
    model.save(args.output)
    return model, info


def main(argv=None):
    try:
        args = parse_args(argv)
        if args.inspect:
            print(inspect(args.checkpoint))
            return 0
        model, info = convert(args)
    except (TF1CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.output}: {model.name} ({model.count_params():,} parameters) from {info.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
