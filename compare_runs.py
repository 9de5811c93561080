"""Compare training runs from their logs: a table of test accuracies and convergence curves.

    python compare_runs.py results/*.log models/training.log          # table + comparison.png
    python compare_runs.py results/ --out curves.png --label ...       # a folder: its *.log files
    python compare_runs.py a.log b.log --no_plot --markdown            # a Markdown table only

Reads logs in the original's format, as the original training scripts of "Deep
Hyperspherical Learning" (Liu et al., NIPS 2017; wy1iu/SphereNet `train_spherenet.py`
and the others) printed them and as this port writes them to
`model_file/training.log`:

    ====iteration_100: fit=1.4002, reg=0.4845, orth=0.4476, acc=0.5078   (training batch)
    ++++iteration_500: test acc=0.1195                                   (whole test set)

Other lines are skipped, so a saved terminal session works too.  For each log the table
gives the best test accuracy and the iteration of its first occurrence (what the
original README reports), the accuracy at the last evaluation (64000 for a full run)
and the first iteration reaching 80/85/90 %.  The figure redraws the original README's
convergence plot from data: training loss (`fit`) and test accuracy against iteration,
one curve per log, with the learning-rate drops at 34000 and 54000 marked.
"""

import argparse
import dataclasses
import os
import sys

from spherenet_tf.training.runlog import TrainRecord, parse_line
from spherenet_tf.training.schedule import LR_BOUNDARIES as LR_DROPS

THRESHOLDS = (0.80, 0.85, 0.90)
#: File stems that say nothing about the run; the folder name is used instead.
GENERIC_STEMS = {"training", "train", "log", "output", "stdout"}


class LogError(ValueError):
    """A log cannot be read or holds no line of the original's format."""


@dataclasses.dataclass
class Run:
    """One log: `train` rows (iteration, fit, reg, orth or None, acc), `test` rows
    (iteration, accuracy), and how many lines were of another kind."""

    path: str
    label: str
    train: list
    test: list
    skipped: int = 0


def _keep_before(rows, iteration):
    """A log a restarted run appended to: later lines replace those from `iteration` on."""
    while rows and rows[-1][0] >= iteration:
        rows.pop()


def parse_log(path, label=None):
    """Read one log in the original's format into a `Run`; raises LogError saying why
    when it is not a readable text file or holds no line of that format."""
    if os.path.isdir(path):
        raise LogError(f"{path} is a folder, not a log file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise LogError(f"cannot read {path}: {e.strerror}") from None
    if b"\0" in raw[:4096]:
        raise LogError(f"{path} is not a text file (it contains NUL bytes); give a training log")
    text = raw.decode("utf-8", errors="replace")
    train, test, skipped = [], [], 0
    for line in text.splitlines():  # also takes a last line without newline, and \r\n
        line = line.strip()
        if not line:
            continue
        record = parse_line(line)
        if record is None:
            skipped += 1
            continue
        rows = train if isinstance(record, TrainRecord) else test
        _keep_before(rows, record.iteration)
        rows.append(tuple(record))
    if not train and not test:
        raise LogError(
            f"{path} holds no line of the original's log format ('====iteration_N: fit=..., "
            "reg=..., acc=...' or '++++iteration_N: test acc=...'); "
            f"{skipped} other non-empty line(s)"
        )
    return Run(path=path, label=label or default_label(path), train=train, test=test, skipped=skipped)


def default_label(path):
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem.lower() in GENERIC_STEMS:
        parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
        return parent or stem
    return stem


def _disambiguate(runs):
    seen = {}
    for run in runs:
        seen.setdefault(run.label, []).append(run)
    for label, same in seen.items():
        if len(same) > 1:
            for run in same:
                parent = os.path.basename(os.path.dirname(os.path.abspath(run.path)))
                run.label = f"{parent}/{label}"


def expand(paths):
    """Log files named on the command line; a folder stands for its *.log files."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".log"))
            if not found:
                raise LogError(f"{path} is a folder without *.log files")
            files.extend(found)
        else:
            files.append(path)
    return files


# ---------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------
def summarize(run, thresholds=THRESHOLDS):
    """Dict: best (accuracy, iteration of its first occurrence), last (accuracy,
    iteration), reach {threshold: first iteration >= threshold or None}, final_fit."""
    out = {"label": run.label, "best": None, "last": None,
           "reach": {t: None for t in thresholds}, "final_fit": None, "last_iteration": None}
    if run.test:
        best_acc = max(acc for _, acc in run.test)
        best_it = next(it for it, acc in run.test if acc == best_acc)
        out["best"] = (best_acc, best_it)
        out["last"] = (run.test[-1][1], run.test[-1][0])
        for t in thresholds:
            # the logs print 4 decimals: compare in those units, not in float
            out["reach"][t] = next((it for it, acc in run.test if round(acc * 1e4) >= round(t * 1e4)), None)
    if run.train:
        out["final_fit"] = run.train[-1][1]
    iterations = [r[0] for r in run.train] + [r[0] for r in run.test]
    out["last_iteration"] = max(iterations)
    return out


def _pct(acc):
    return "-" if acc is None else f"{acc * 100:.2f}"


def _it(it):
    return "-" if it is None else str(it)


def table(runs, thresholds=THRESHOLDS, markdown=False):
    """The comparison table as text (aligned columns) or Markdown."""
    header = (["run", "best %", "at iteration", "last %", "at iteration"]
              + [f"first >= {t * 100:g} %" for t in thresholds])
    rows = []
    for run in runs:
        s = summarize(run, thresholds)
        best, last = s["best"] or (None, None), s["last"] or (None, None)
        rows.append([run.label, _pct(best[0]), _it(best[1]), _pct(last[0]), _it(last[1])]
                    + [_it(s["reach"][t]) for t in thresholds])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


# ---------------------------------------------------------------------------
# Figure
# ---------------------------------------------------------------------------
def _smooth(values, window):
    if window <= 1 or len(values) < 2:
        return list(values)
    out, total, queue = [], 0.0, []
    for v in values:
        queue.append(v)
        total += v
        if len(queue) > window:
            total -= queue.pop(0)
        out.append(total / len(queue))
    return out


def plot(runs, out_path, smooth=10, title=None):
    """Write a PNG: training loss (fit, raw and smoothed) and test accuracy (full range
    and a close-up of the top) against iteration, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.6), constrained_layout=True)
    loss_ax, acc_ax, zoom_ax = axes
    cmap = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    last = max(summarize(r)["last_iteration"] for r in runs)
    best_accs = []
    for k, run in enumerate(runs):
        color = cmap(k % cmap.N)
        if run.train:
            its = [r[0] for r in run.train]
            fits = [r[1] for r in run.train]
            marker = "o" if len(its) <= 20 else None  # a short run stays visible
            loss_ax.plot(its, fits, color=color, alpha=0.18, linewidth=0.8)
            loss_ax.plot(its, _smooth(fits, smooth), color=color, linewidth=1.6, marker=marker,
                         markersize=3)
        if run.test:
            its = [r[0] for r in run.test]
            accs = [r[1] for r in run.test]
            marker = "o" if len(its) <= 20 else None
            acc_ax.plot(its, accs, color=color, linewidth=1.4, marker=marker, markersize=3)
            zoom_ax.plot(its, accs, color=color, linewidth=1.4, marker=marker, markersize=3)
            best = max(accs)
            best_accs.append(best)
            best_it = its[accs.index(best)]
            zoom_ax.plot([best_it], [best], marker="o", color=color, markersize=5)
    for ax in axes:
        for drop in LR_DROPS:
            if drop <= last:
                ax.axvline(drop, color="0.6", linestyle=":", linewidth=1)
        ax.set_xlabel("iteration")
        ax.grid(True, alpha=0.3)
        ax.set_xlim(0, last * 1.01 if last else 1)
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("training loss (fit, log scale)")
    loss_ax.set_title(f"training loss (faint: every log line; solid: mean of {smooth})"
                      if smooth > 1 else "training loss")
    acc_ax.set_ylabel("test accuracy")
    acc_ax.set_title("test accuracy")
    acc_ax.set_ylim(0, 1)
    if best_accs:
        top = max(best_accs)
        low = min(best_accs) - 0.06
        zoom_ax.set_ylim(max(low, 0), min(top + 0.01, 1.0))
        zoom_ax.set_title("test accuracy, close-up (dot: best)")
        zoom_ax.set_ylabel("test accuracy")
    else:
        zoom_ax.set_visible(False)
    for drop, text in zip(LR_DROPS, (" lr/10", " lr/100")):
        if drop <= last:
            loss_ax.text(drop, 0.97, text, color="0.35", fontsize=9, va="top",
                         transform=loss_ax.get_xaxis_transform())
    # one legend entry per run, also for runs with only training or only test lines
    handles = [Line2D([], [], color=cmap(k % cmap.N), linewidth=2, label=run.label)
               for k, run in enumerate(runs)]
    acc_ax.legend(handles=handles, loc="lower right", fontsize=9, framealpha=0.9)
    if title:
        fig.suptitle(title)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def _thresholds(text):
    try:
        values = tuple(float(v) / 100 for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected percentages like 80,85,90, got {text!r}") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"percentages must lie in (0, 100], got {text!r}")
    return values


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("logs", nargs="+", help="log files in the original's format, or folders of *.log")
    parser.add_argument("--label", action="append", default=None,
                        help="legend/table name of each log, in order (give it once per log)")
    parser.add_argument("--out", default="comparison.png", help="PNG file to write")
    parser.add_argument("--no_plot", action="store_true", help="print the table only")
    parser.add_argument("--markdown", action="store_true", help="print the table in Markdown")
    parser.add_argument("--smooth", type=int, default=10,
                        help="training-loss curve: mean over this many log lines (1 = raw)")
    parser.add_argument("--thresholds", type=_thresholds, default="80,85,90",
                        help="test accuracies (%%) whose first iteration the table gives")
    parser.add_argument("--title", default=None, help="figure title")
    args = parser.parse_args(argv)
    if args.smooth < 1:
        parser.error(f"--smooth must be at least 1, got {args.smooth}")
    try:
        files = expand(args.logs)
        if args.label is not None and len(args.label) != len(files):
            raise LogError(f"{len(args.label)} --label for {len(files)} logs ({', '.join(files)}); "
                           "give one --label per log, in order, or none")
        runs = [parse_log(f, label) for f, label in zip(files, args.label or [None] * len(files))]
    except LogError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.label is None:
        _disambiguate(runs)
    print(table(runs, args.thresholds, markdown=args.markdown))
    for run in runs:
        if not run.test:
            print(f"note: {run.path} has no test-accuracy line", file=sys.stderr)
    if not args.no_plot:
        folder = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(folder, exist_ok=True)
        plot(runs, args.out, smooth=args.smooth, title=args.title)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
