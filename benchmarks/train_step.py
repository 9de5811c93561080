"""Full training-step time, images/s and peak memory of the four models.

    python benchmarks/train_step.py [--batch 32] [--repeats 7] [--models ...] [--memory]

Each step is the one the training scripts run (`ClassificationTask.train_step`, via
`train_step_bench`): the next batch of the training stream, forward in training mode,
loss2 + weight decay + orthogonality, gradients, the NaN/Inf guard, the original's Adam;
the networks are the models' own table (`build_original`).  Steps of all models are
timed side by side (interleaved repetitions, median).  `spherenet9_original`
is SphereNet-9 with the original formulation of SphereConv (ones-kernel patch norm,
autodiff through every division and angle).  `--memory` measures, for each model in a
fresh process, the peak allocator memory (BFC allocator statistics) during one training
step above the memory held before it (the step's working memory: activations, gradients
and temporaries), twice: with TF's default inter-op threads, where the executor may run
independent ops in any order and the peak varies from run to run, and with one inter-op
thread, where the order (and the peak) varies far less.  `--jit_compile`
compiles the steps with XLA and `--mixed_precision [auto|float16|bfloat16]` runs them
under the training scripts' policy of that flag (auto: `mixed_bfloat16` on GPUs of
compute capability 8.0 and above and on CPUs, `mixed_float16` with loss scaling on
older GPUs).
"""

import argparse
import json
import statistics
import os
import subprocess
import sys

import common
import keras
import tensorflow as tf

from spherenet_tf.training import PRECISIONS, precision_policy
from train_step_bench import MODELS, make_step

PAIRS = {  # model -> the baseline it is compared with
    "spherenet9": "baseline_cnn", "spherenet9_linear": "baseline_cnn",
    "spherenet9_original": "baseline_cnn", "spherenet9_sigmoid": "baseline_cnn",
    "spherenet9_lr_sigmoid": "baseline_cnn", "sphere_resnet32": "baseline_resnet32",
}


def build(name):
    return MODELS[name]()


def step_fn(name, batch, jit):
    """The model's compiled training step, traced (under the original formulation for
    `spherenet9_original`) and already run three times, so its optimizer slots exist."""
    run, _ = make_step(name, batch, repeats=1, jit_compile=jit, model=build(name))
    return run


def memory_child(name, batch, jit, inter_op=0):
    """Run in a fresh process: peak allocator growth (MiB) during one step.  `inter_op`
    is only recorded here; main() sets it before TF's runtime starts."""
    run = step_fn(name, batch, jit)
    device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
    before = tf.config.experimental.get_memory_info(device)["current"]
    tf.config.experimental.reset_memory_stats(device)
    run()
    peak = tf.config.experimental.get_memory_info(device)["peak"]
    print(json.dumps({"model": name, "growth_mib": (peak - before) / 2**20,
                      "peak_mib": peak / 2**20, "device": device}))


def time_steps(names, args, policy):
    """Print the table of step times, images/s and ratios to each model's baseline."""
    fns = [step_fn(n, args.batch, args.jit_compile) for n in names]
    times = common.interleaved_median_times(fns, repeats=args.repeats, warmup=2)
    t = dict(zip(names, times))
    rows = []
    for name in names:
        base = PAIRS.get(name)
        ratio = f"{t[name] / t[base]:.3f}x {base}" if base in t else ""
        rows.append((name, f"{t[name] * 1e3:9.1f}", f"{args.batch / t[name]:8.1f}", ratio))
    print(f"training step, batch {args.batch}, median of {args.repeats} interleaved repetitions"
          f"{', XLA' if args.jit_compile else ''}, policy {policy}; devices {[d.name for d in tf.config.list_logical_devices()]}")
    common.print_table(["model", "ms/step", "images/s", "ratio"], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="images per step (default 32)")
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed repetitions of each step; the median is reported (default 7)")
    parser.add_argument("--models", default="spherenet9,spherenet9_linear,spherenet9_original,baseline_cnn",
                        help=f"comma-separated, from {','.join(MODELS)}")
    parser.add_argument("--memory", action="store_true",
                        help="also measure each model's peak step memory in fresh processes")
    parser.add_argument("--no_timing", action="store_true",
                        help="skip the timed steps (with --memory: the memory table only)")
    parser.add_argument("--memory_repeats", type=int, default=3,
                        help="fresh processes per model and mode for --memory (median reported)")
    parser.add_argument("--jit_compile", action="store_true", help="compile the steps with XLA")
    parser.add_argument("--mixed_precision", nargs="?", const="auto", default="off",
                        choices=PRECISIONS,
                        help="the training scripts' --mixed_precision: off (default), auto (the flag "
                             "alone: bfloat16 on GPUs of compute capability >= 8.0 and on CPUs, "
                             "float16 on older GPUs), float16 or bfloat16")
    parser.add_argument("--memory-child", dest="child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--inter-op", dest="inter_op", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child and args.inter_op:  # before anything initialises TF's runtime
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    policy = precision_policy(args.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    if args.child:
        return memory_child(args.child, args.batch, args.jit_compile, args.inter_op)
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    if not args.no_timing:
        time_steps(names, args, policy)
    if args.memory:
        modes = {"default threads": 0, "1 inter-op thread": 1}
        mem = {mode: {} for mode in modes}
        for name in names:
            for mode, inter_op in modes.items():
                cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", name,
                       "--batch", str(args.batch), "--inter-op", str(inter_op)]
                cmd += ["--jit_compile"] if args.jit_compile else []
                cmd += ["--mixed_precision", args.mixed_precision]
                env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="true")
                growths = []
                for _ in range(args.memory_repeats):
                    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    line = [l for l in out.stdout.splitlines() if l.startswith("{")]
                    if not line:
                        print(f"memory child for {name} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                    growths.append(json.loads(line[-1])["growth_mib"] if line else float("nan"))
                mem[mode][name] = statistics.median(growths)
        rows = []
        for name in names:
            base = PAIRS.get(name)
            row = [name]
            for mode in modes:
                g = mem[mode][name]
                row += [f"{g:8.1f}", f"{g / mem[mode][base]:.3f}x" if base in names else ""]
            rows.append(tuple(row) + (base or "",))
        print("\npeak memory of one training step above the memory held between steps "
              f"(MiB; median of {args.memory_repeats} fresh processes per model and mode)")
        header = ["model"]
        for mode in modes:
            header += [f"MiB, {mode}", "ratio"]
        common.print_table(header + ["vs"], rows)

if __name__ == "__main__":
    main()
