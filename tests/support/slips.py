"""What the tests catch: change one number of the original's in a copy, run the tests.

    cd tests && python -m support.slips                  # every slip, on the guard modules
    cd tests && python -m support.slips --list           # the slips, without running anything
    cd tests && python -m support.slips --only adam_epsilon_1e-8 lr_drop_34000
    cd tests && python -m support.slips --whole-suite adam_epsilon_1e-8   # the default suite instead

Issue 23: a port goes wrong in small ways (a constant copied wrong, a schedule off by
one boundary, a format with one digit fewer, the wrong padding), and every number the
port carries from "Deep Hyperspherical Learning" (Liu et al., NIPS 2017;
wy1iu/SphereNet) must have a test that fails when it changes. This is the maintainer's
experiment: each slip below is applied to a fresh copy of the repository (`git archive
HEAD`, or the working tree with `--worktree`; the checkout itself is never edited), the
old text must occur exactly once in its file, and the tests run on the copy with `-x`:
by default the modules that guard the original's numbers (GUARD_MODULES,
tests/test_original_numbers.py first, their tests not marked slow), with `--whole-suite`
the README's test command, every test on every core, as CI runs it. The copy's package
is imported through PYTHONPATH (it comes before the editable install), which
tests/conftest.py checks. Prints a Markdown table: slip, first test that failed, seconds
until pytest stopped; a slip that nothing catches is a missing guard.
docs/pinned-numbers.md says which test guards which number.
"""

import argparse
import collections
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from .repo import REPO

Slip = collections.namedtuple("Slip", "name path old new")

#: One plausible slip of each number the port carries from the original.
SLIPS = [
    # regularisation (REFERENCE.md: reg=True adds 5e-4 * l2_loss(W), l2_loss carries 1/2;
    # orth adds 2e-4 * l2_loss(W^T W - I); BN gamma and beta decayed with 5e-4 * l2_loss)
    Slip("weight_decay_5e-4", "spherenet_tf/regularizers.py", "WEIGHT_DECAY = 5e-4", "WEIGHT_DECAY = 4e-4"),
    Slip("orth_scale_2e-4", "spherenet_tf/regularizers.py", "ORTH_SCALE = 2e-4", "ORTH_SCALE = 1e-4"),
    Slip("l2_loss_half", "spherenet_tf/regularizers.py", "        return tf.nn.l2_loss(t)\n",
         "        return tf.reduce_sum(tf.square(t))\n"),
    Slip("bn_gamma_decay", "spherenet_tf/layers.py",
         "gamma_regularizer=regularizers.L2Loss(regularizers.WEIGHT_DECAY),", "gamma_regularizer=None,"),
    Slip("bn_beta_decay", "spherenet_tf/layers.py",
         "beta_regularizer=regularizers.L2Loss(regularizers.WEIGHT_DECAY),", "beta_regularizer=None,"),
    # batch norm (momentum 0.999, epsilon 1e-3, moving variance from zero)
    Slip("bn_decay_0.999", "spherenet_tf/layers.py", "BN_DECAY = 0.999", "BN_DECAY = 0.99"),
    Slip("bn_epsilon_1e-3", "spherenet_tf/layers.py", "BN_EPSILON = 1e-3", "BN_EPSILON = 1e-4"),
    Slip("bn_moving_variance_zeros", "spherenet_tf/layers.py",
         'moving_variance_initializer="zeros",', 'moving_variance_initializer="ones",'),
    # optimiser and learning rate (Adam 0.9 / 0.999 / 1e-8, lr 1e-3, /10 at 34000 and 54000)
    Slip("adam_epsilon_1e-8", "spherenet_tf/training/schedule.py", "epsilon=1e-8)", "epsilon=1e-7)"),
    Slip("adam_beta1_0.9", "spherenet_tf/training/schedule.py", "beta_1=0.9,", "beta_1=0.95,"),
    Slip("adam_beta2_0.999", "spherenet_tf/training/schedule.py", "beta_2=0.999,", "beta_2=0.99,"),
    Slip("lr_1e-3", "train_spherenet.py", "lr = 1e-3 ", "lr = 2e-3 "),
    Slip("lr_drop_34000", "spherenet_tf/training/schedule.py", "LR_BOUNDARIES = (34000, 54000)",
         "LR_BOUNDARIES = (32000, 54000)"),
    Slip("lr_drop_54000", "spherenet_tf/training/schedule.py", "LR_BOUNDARIES = (34000, 54000)",
         "LR_BOUNDARIES = (34000, 56000)"),
    Slip("lr_drop_after_the_step", "spherenet_tf/training/schedule.py", "tf.where(step >= boundary",
         "tf.where(step > boundary"),
    Slip("lr_drop_after_the_step_python", "spherenet_tf/training/schedule.py",
         "sum(iteration >= b for", "sum(iteration > b for"),
    # run length, batches, classes (max_epoch 64000 = 64001 steps, batch 128, test 100, 10)
    Slip("max_epoch_64000", "train_spherenet.py", "max_epoch = 64000 ", "max_epoch = 64001 "),
    Slip("max_epoch_resnet", "sphere_resnet/train_sphere_resnet.py", "max_epoch = 64000 ",
         "max_epoch = 64001 "),
    Slip("steps_0..max_epoch", "spherenet_tf/training/loop.py", "range(start, s.max_epoch + 1)",
         "range(start, s.max_epoch)"),
    Slip("batch_128", "train_spherenet.py", "batch_sz = 128 ", "batch_sz = 120 "),
    Slip("test_batch_100", "train_spherenet.py", "batch_test = 100 ", "batch_test = 128 "),
    Slip("settings_batch_128", "spherenet_tf/training/settings.py", "_setting(128, ", "_setting(100, "),
    Slip("n_class_10", "spherenet_tf/training/settings.py", "n_class: int = _setting(10,",
         "n_class: int = _setting(100,"),
    # SphereConv (0.63662, k 0.3, learnable k from 0.7 used as |k| + 0.05, 1e-4 in the norms,
    # filters from N(0, sqrt(2 / fan_in)), not truncated)
    Slip("linear_0.63662", "spherenet_tf/formulas.py", "LINEAR_SLOPE = 0.63662", "LINEAR_SLOPE = 0.63661"),
    Slip("sigmoid_k_0.3", "spherenet_tf/formulas.py", "SIGMOID_K = 0.3", "SIGMOID_K = 0.25"),
    Slip("lr_sigmoid_init_0.7", "spherenet_tf/formulas.py", "LR_SIGMOID_K_INIT = 0.7",
         "LR_SIGMOID_K_INIT = 0.6"),
    Slip("lr_sigmoid_offset_0.05", "spherenet_tf/formulas.py", "LR_SIGMOID_K_OFFSET = 0.05",
         "LR_SIGMOID_K_OFFSET = 0.04"),
    Slip("norm_epsilon_1e-4", "spherenet_tf/formulas.py", "NORM_EPS = 1e-4", "NORM_EPS = 1e-5"),
    Slip("init_scale_2", "spherenet_tf/layers.py", 'scale=2.0, mode="fan_in"', 'scale=1.0, mode="fan_in"'),
    Slip("init_untruncated", "spherenet_tf/layers.py", 'distribution="untruncated_normal"',
         'distribution="truncated_normal"'),
    # loss2 (softmax + 1e-4, targets 0.99 onehot + 0.01 / n_class)
    Slip("loss2_softmax_1e-4", "spherenet_tf/losses.py", "SOFTMAX_EPS = 1e-4", "SOFTMAX_EPS = 1e-5"),
    Slip("loss2_smoothing_0.01", "spherenet_tf/losses.py", "LABEL_SMOOTHING = 1e-2", "LABEL_SMOOTHING = 2e-2"),
    # data (flip only for SphereNet-9; CIFAR-10+: SYMMETRIC pad 4, random crop, flip; (x-127.5)/128)
    Slip("pad_4", "spherenet_tf/cifar10_input.py", "PLUS_PAD = 4", "PLUS_PAD = 2"),
    Slip("pad_symmetric", "spherenet_tf/cifar10_input.py", 'mode="SYMMETRIC"', 'mode="REFLECT"'),
    Slip("cifar10plus_flip", "spherenet_tf/cifar10_input.py", 'if augmentation in ("flip", "cifar10plus"):',
         'if augmentation in ("flip",):'),
    Slip("spherenet9_flip_only", "train_spherenet.py", "augmentation = 'flip' ", "augmentation = 'cifar10plus' "),
    Slip("resnet_cifar10plus", "sphere_resnet/train_sphere_resnet.py", "augmentation = 'cifar10plus' ",
         "augmentation = 'flip' "),
    Slip("standardise_127.5", "spherenet_tf/models.py", "offset=-127.5 / 128.0", "offset=-128.0 / 128.0"),
    # log lines and cadences (%.4f, every 100 but not at 0, test every 500, save every 16000)
    Slip("log_format_4_digits", "spherenet_tf/training/runlog.py",
         'LOG_LINE = "====iteration_%d: fit=%.4f, reg=%.4f, orth=%.4f, acc=%.4f"',
         'LOG_LINE = "====iteration_%d: fit=%.4f, reg=%.4f, orth=%.4f, acc=%.3f"'),
    Slip("log_format_baseline", "spherenet_tf/training/runlog.py",
         'LOG_LINE_NO_ORTH = "====iteration_%d: fit=%.4f, reg=%.4f, acc=%.4f"',
         'LOG_LINE_NO_ORTH = "====iteration_%d: fit=%.4f, reg=%.4f, orth=%.4f, acc=%.4f"'),
    Slip("test_line_format", "spherenet_tf/training/runlog.py", 'TEST_LINE = "++++iteration_%d: test acc=%.4f"',
         'TEST_LINE = "++++iteration_%d: test acc=%.3f"'),
    Slip("log_every_100", "spherenet_tf/training/settings.py", "log_every: int = _setting(100,",
         "log_every: int = _setting(50,"),
    Slip("no_log_at_0", "spherenet_tf/training/loop.py", "if i % s.log_every == 0 and i != 0:",
         "if i % s.log_every == 0:"),
    Slip("eval_every_500", "spherenet_tf/training/settings.py", "eval_every: int = _setting(500,",
         "eval_every: int = _setting(400,"),
    Slip("save_every_16000", "spherenet_tf/training/settings.py", "save_every: int = _setting(\n        16000,",
         "save_every: int = _setting(\n        15000,"),
    # networks (widths 128/192/256, fc6 256; examples 196 and fc6 BN; ResNet root 96, 3x5
    # units 96/192/384, stride 2 in unit 0 of stages 2 and 3, 1x1 shortcut only when the
    # width changes, 8x8 average pool)
    Slip("spherenet9_width_128", "spherenet.py", "widths = (128, 192, 256)", "widths = (120, 192, 256)"),
    Slip("cnn9_default_widths", "spherenet_tf/models.py", "widths=(128, 192, 256),", "widths=(128, 192, 192),"),
    Slip("fc6_256", "spherenet_tf/models.py", 'x, 4, 256, "fc6"', 'x, 4, 512, "fc6"'),
    Slip("examples_196", "examples/spherenet_linear_sphereconv.py", "widths = (128, 196, 256)",
         "widths = (128, 200, 256)"),
    Slip("examples_fc6_bn", "examples/spherenet_sigmoid_sphereconv.py", "fc6_bn = True ", "fc6_bn = False "),
    Slip("resnet_root_96", "spherenet_tf/models.py", "widths=(96, 192, 384),", "widths=(64, 192, 384),"),
    Slip("resnet_5_units", "spherenet_tf/models.py", "units_per_stage=5,", "units_per_stage=4,"),
    Slip("resnet_stride_in_unit_0", "spherenet_tf/models.py", "strides = 2 if (stage > 1 and i == 0) else 1",
         "strides = 2 if (stage > 1 and i == 1) else 1"),
    Slip("resnet_identity_shortcut", "spherenet_tf/models.py", "if x.shape[-1] == filters and strides == 1:",
         "if False:"),
    Slip("resnet_avg_pool_8", "spherenet_tf/models.py", "AveragePooling2D(8, 1,", "AveragePooling2D(4, 1,"),
]

#: The modules that guard the original's numbers, in the order they run (fast first).
GUARD_MODULES = [
    "tests/test_original_numbers.py",
    "tests/training/test_schedule.py",
    "tests/test_golden_layers.py",
    "tests/test_data.py",
    "tests/test_models.py",
    "tests/test_golden_models.py",
    "tests/test_examples.py",
    "tests/training/test_scripts.py",
]


def make_copy(worktree):
    """A fresh copy of the repository in a temporary folder: HEAD's files, or (worktree)
    the tracked and untracked, not ignored, files as they are now.  Returns its path."""
    folder = Path(tempfile.mkdtemp(prefix="spherenet-slip-")) / "repo"
    folder.mkdir()
    if worktree:
        names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                               cwd=REPO, capture_output=True, text=True, check=True).stdout
        for name in filter(None, names.split("\0")):
            source = REPO / name
            if source.is_file():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, folder / name)
    else:
        archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=REPO,
                                 capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(folder, filter="data")
    return folder


class StaleSlip(Exception):
    """The text a slip changes is not (exactly once) in its file: the number moved."""


def apply(copy, slip):
    path = copy / slip.path
    text = path.read_text() if path.exists() else ""
    count = text.count(slip.old)
    if count != 1:
        raise StaleSlip(f"slip {slip.name}: {slip.path} holds {count} copies of {slip.old!r}, "
                        "not exactly one: update the slip to the file's current text")
    path.write_text(text.replace(slip.old, slip.new))


def environment(copy):
    env = dict(os.environ, PYTHONPATH=str(copy), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("SPHERENET_GOLDEN", None)
    return env


def check_import(copy):
    """The copy's spherenet_tf is the one Python imports there (before the editable install)."""
    out = subprocess.run([sys.executable, "-c", "import spherenet_tf; print(spherenet_tf.__file__)"],
                         cwd=copy, env=environment(copy), capture_output=True, text=True, check=True)
    where = Path(out.stdout.strip()).resolve()
    if copy.resolve() not in where.parents:
        raise SystemExit(f"the copy's spherenet_tf is not the one imported ({where}): PYTHONPATH did not win")
    return where


FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)


def run_tests(copy, whole_suite, timeout, modules=GUARD_MODULES):
    """Run the tests on `copy` with -x; (rc, first failing test or None, seconds, output)."""
    if whole_suite:
        args = ["-x"]  # the README's command: every test, slow ones included
    else:
        args = ["-x", "-n", "0", "-m", "not slow", *modules]
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--durations=0", *args]
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=copy, env=environment(copy), capture_output=True, text=True,
                             timeout=timeout)
        rc, text = out.returncode, out.stdout + out.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = "timeout", (e.stdout or b"").decode(errors="replace")
    seconds = time.perf_counter() - start
    if rc == 4 or "UsageError" in text:
        raise SystemExit(f"pytest refused to run on the copy {copy}:\n{text[-2000:]}")
    failed = FAILED.findall(text)
    return rc, (failed[0] if failed else None), seconds, text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--list", action="store_true", help="list the slips and exit")
    parser.add_argument("--only", nargs="+", default=None, help="run these slips (names)")
    parser.add_argument("--whole-suite", nargs="*", default=[],
                        help="slips to run on the README's test command (every test, every core)")
    parser.add_argument("--baseline", action="store_true",
                        help="first run the tests on an unchanged copy (they must pass)")
    parser.add_argument("--worktree", action="store_true",
                        help="copy the working tree as it is, not HEAD's files")
    parser.add_argument("--modules", nargs="+", default=GUARD_MODULES,
                        help="test modules of a guard-module run (default: GUARD_MODULES)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    parser.add_argument("--out", default=None, help="append one JSON line per run to this file")
    parser.add_argument("--outputs", default=None,
                        help="folder to keep each run's pytest output in (<slip>.<tests>.txt)")
    args = parser.parse_args(argv)
    by_name = {s.name: s for s in SLIPS}
    if args.list:
        for s in SLIPS:
            print(f"{s.name:32s} {s.path}: {s.old!r} -> {s.new!r}")
        return
    unknown = [n for n in (args.only or []) + args.whole_suite if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown slip(s) {', '.join(unknown)}; --list shows them")
    # --whole-suite alone runs only those; --only picks the guard-module runs
    guard_runs = args.only if args.only is not None else ([] if args.whole_suite else list(by_name))
    runs = [(by_name[n], False) for n in guard_runs]
    runs += [(by_name[n], True) for n in args.whole_suite]
    if args.baseline:
        runs.insert(0, (None, False))
    rows = []
    for slip, whole in runs:
        copy = make_copy(args.worktree)
        try:
            if slip is not None:
                try:
                    apply(copy, slip)
                except StaleSlip as e:
                    print(e, flush=True)
                    rows.append((slip.name, f"{slip.path}: `{slip.old.strip()}`", "-",
                                 "stale: text not found", 0.0))
                    continue
            where = check_import(copy)
            rc, failed, seconds, text = run_tests(copy, whole, args.timeout, args.modules)
        finally:
            shutil.rmtree(copy.parent, ignore_errors=True)
        name = slip.name if slip else "(no slip)"
        change = f"{slip.path}: `{slip.old.strip()}` -> `{slip.new.strip()}`" if slip else "-"
        tests = "default suite" if whole else "guard modules"
        rows.append((name, change, tests, failed or ("none: passed" if rc == 0 else f"rc {rc}"), seconds))
        print(f"{name}: {tests}: first failure {failed} after {seconds:.0f} s (rc {rc}; package from "
              f"{where.parent})", flush=True)
        if args.outputs:
            Path(args.outputs).mkdir(parents=True, exist_ok=True)
            (Path(args.outputs) / f"{name.strip('()').replace(' ', '_')}.{'suite' if whole else 'guards'}.txt"
             ).write_text(text)
        if slip is None and rc != 0:
            raise SystemExit(f"the unchanged copy fails:\n{text[-3000:]}")
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps({"slip": name, "change": change, "tests": tests, "rc": rc,
                                    "first_failure": failed, "seconds": round(seconds, 1)}) + "\n")
    print("\n| slip | change | tests run | first test that failed | seconds to fail |")
    print("|---|---|---|---|---|")
    for name, change, tests, failed, seconds in rows:
        print(f"| {name} | {change} | {tests} | `{failed}` | {seconds:.0f} |")
    missed = [r[0] for r in rows if r[0] != "(no slip)" and r[3].startswith(("none", "rc", "stale"))]
    if missed:
        print(f"\nNOT CAUGHT: {', '.join(missed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
