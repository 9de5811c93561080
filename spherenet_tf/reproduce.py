"""Reproduce the results table of the original README (wy1iu/SphereNet, "Deep Hyperspherical
Learning", Liu et al., NIPS 2017): every row's script run on the user's GPUs, resumed after
an interruption, compared with the original's logs (`results/`, `sphere_resnet/results/`).

Each run is its script as a user starts it (`python <script> --model_file runs/<row>/`, from
the repository root): it writes its `training.log`, `metrics.jsonl`, `settings.json` and
checkpoints into its folder and continues from its newest checkpoint when started again.
The scheduler only reads those files; it finds GPUs with `nvidia-smi -L`, not TensorFlow.
"""

import argparse
import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

from .messages import closest
from .training.checkpoints import FINAL_MODEL, RESUME_DIR, SETTINGS_FILE
from .training.resume import checkpoint_number, complete_checkpoints
from .training.runlog import LOG_FILE, METRICS_FILE, TestRecord, atomic_write_text, parse_line

#: The folder the scheduler's runs go to, beside the scripts.
RUNS_DIR = "runs"
#: Written into a run's folder when its command exits with 0: the command that finished.
DONE_FILE = "reproduce.json"
#: The run's own stdout and stderr, every attempt appended.
OUTPUT_FILE = "run.log"
#: A row whose best test accuracy is this many points below the original's is marked.
MARK_BELOW = 0.5
#: How often a failed run is started again (it continues from its checkpoint) before it
#: is reported: a second failure is a problem to look at.
RETRIES = 1


class ReproduceError(ValueError):
    """Bad input to reproduce.py; the message says what was received and what to do."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the results table."""

    name: str          # what --rows selects; the run's folder is runs/<name>/
    title: str         # the row as the README names it
    script: str        # its training script, relative to the repository root
    original_log: str  # the original's log of the row, relative to the repository root
    args: tuple = ()   # settings the row gives its script beyond --model_file


# ---- Commands and the state of a run's folder --------------------------------
@dataclasses.dataclass(frozen=True)
class Runs:
    """Where the runs go and what every run's command adds."""

    repo: str                 # the repository root, the runs' working folder
    runs_dir: str = RUNS_DIR  # relative to repo (as the commands show it) or absolute
    extra: tuple = ()         # settings added to every run's command (--max_epoch 4 ...)

    def folder(self, row):
        return os.path.join(self.repo, self.runs_dir, row.name)

    def command(self, row):
        """The command a user would type from the repository root (`python` for the interpreter)."""
        model_file = os.path.join(self.runs_dir, row.name) + "/"
        return ["python", row.script, "--model_file", model_file, *row.args, *self.extra]

    def finished(self, row):
        """Its command exited with 0 and left its final model (a run finished with other
        settings, another `--max_epoch`, is not: its script continues it)."""
        done = _read_json(os.path.join(self.folder(row), DONE_FILE))
        return (done.get("command") == self.command(row)
                and os.path.exists(os.path.join(self.folder(row), FINAL_MODEL)))

    def state(self, row):
        """'finished', 'resume at N' (N: its newest resume checkpoint) or 'new'."""
        if self.finished(row):
            return "finished"
        found = complete_checkpoints(os.path.join(self.folder(row), RESUME_DIR))
        return f"resume at {checkpoint_number(found[-1])}" if found else "new"


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def progress(runs, row):
    """What a run's own files say: its last logged iteration, last test accuracy and
    images/s, its last iteration and training batch (each None where not known yet)."""
    folder, records, speeds = runs.folder(row), [], []
    try:
        with open(os.path.join(folder, LOG_FILE)) as f:
            records = [r for r in map(parse_line, f) if r is not None]
        with open(os.path.join(folder, METRICS_FILE)) as f:
            speeds = [json.loads(line).get("images_per_sec") for line in f if "images_per_sec" in line]
    except (OSError, ValueError):  # not written yet, or a line being written
        pass
    settings = _read_json(os.path.join(folder, SETTINGS_FILE))
    return {"iteration": records[-1].iteration if records else None,
            "test_acc": next((r.acc for r in reversed(records) if isinstance(r, TestRecord)), None),
            "images_per_sec": next((v for v in reversed(speeds) if v), None),
            "max_epoch": settings.get("max_epoch"), "batch_sz": settings.get("batch_sz")}


# ---- Devices and the plan ----------------------------------------------------
def visible_gpus(env=os.environ):
    """GPU ids the runs may use: CUDA_VISIBLE_DEVICES when set, else those `nvidia-smi -L`
    lists (not TensorFlow's: it would start CUDA in this process), else none (the CPU)."""
    if "CUDA_VISIBLE_DEVICES" in env:
        ids = [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
        return [] if ids[:1] == ["-1"] else ids
    try:
        found = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(k) for k, _ in enumerate(l for l in found.splitlines() if l.startswith("GPU "))]


def slots(devices, per_run_gpus=1):
    """The CUDA_VISIBLE_DEVICES value of each place a run can go: groups of
    `per_run_gpus` GPUs (a run uses them all through tf.distribute), or [None], the CPU."""
    if per_run_gpus < 1:
        raise ReproduceError(f"--per_run_gpus must be at least 1, got {per_run_gpus}")
    if not devices:
        return [None]
    if per_run_gpus > len(devices):
        raise ReproduceError(
            f"--per_run_gpus {per_run_gpus} but {len(devices)} GPU(s) are visible "
            f"({','.join(devices)}); give at most {len(devices)}, or name more GPUs with --devices")
    return [",".join(devices[k:k + per_run_gpus])
            for k in range(0, len(devices) - per_run_gpus + 1, per_run_gpus)]


def plan(rows, places):
    """(row, place, wave) of each row in the table's order, were all runs equally long."""
    return [(row, places[k % len(places)], k // len(places) + 1) for k, row in enumerate(rows)]


def _place(value):
    return "CPU" if value is None else f"GPU {value}"


def print_plan(runs, rows, places, out):
    states = {row.name: runs.state(row) for row in rows}
    todo = [row for row in rows if states[row.name] != "finished"]
    where = (f"{len(places)} places ({'; '.join(map(_place, places))}), one run on each"
             if places != [None] else "the CPU, one run")
    print(f"{len(todo)} of {len(rows)} run(s) to do on {where} at a time; in this order (waves "
          "as if all took equally long):", file=out)
    steps = {row.name: (place, wave) for row, place, wave in plan(todo, places)}
    for row in rows:
        place, wave = steps.get(row.name, (None, None))
        when = f"wave {wave:<2d} {_place(place):8s}" if wave else f"{'skipped':16s}"
        print(f"  {when}  {row.name:28s} {states[row.name]:16s}  {' '.join(runs.command(row))}", file=out)


# ---- The status table --------------------------------------------------------
def _eta(p):
    if None in (p["iteration"], p["images_per_sec"], p["max_epoch"], p["batch_sz"]):
        return "-"
    seconds = max(p["max_epoch"] - p["iteration"], 0) * p["batch_sz"] / p["images_per_sec"]
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 3600:.0f} h"


def status_table(runs, rows, states):
    """Row, state, iteration, last test accuracy, images/s and ETA, from each run's files."""
    fmt = "{:28s} {:22s} {:>13s} {:>10s} {:>9s} {:>9s}".format
    lines = [fmt("row", "state", "iteration", "test acc %", "images/s", "ETA")]
    for row in rows:
        p = progress(runs, row)
        it = "-" if p["iteration"] is None else f"{p['iteration']}/{p['max_epoch'] or '?'}"
        acc = "-" if p["test_acc"] is None else f"{p['test_acc'] * 100:.2f}"
        speed = "-" if p["images_per_sec"] is None else f"{p['images_per_sec']:.1f}"
        eta = _eta(p) if states[row.name].startswith("running") else "-"
        lines.append(fmt(row.name, states[row.name], it, acc, speed, eta))
    return lines


class Screen:
    """The status table, redrawn in place on a terminal; elsewhere (a log file) printed
    again when a row changes state, and every `every` seconds."""

    def __init__(self, out, every=600.0):
        self.out, self.tty, self.every = out, getattr(out, "isatty", bool)(), every
        self.shown, self.last, self.when = 0, None, 0.0

    def draw(self, lines, key):
        if self.tty or key != self.last or time.time() - self.when > self.every:
            self.say("\n".join(lines))
            self.shown, self.last, self.when = (len(lines) if self.tty else 0), key, time.time()

    def say(self, text):
        if self.shown:  # back up to the table's first line and erase it
            self.out.write(f"\033[{self.shown}F\033[J")
        self.shown, self.last = 0, None
        print(text, file=self.out, flush=True)


# ---- Running -----------------------------------------------------------------
def _die_with_parent(parent):
    """In the child (Linux): be killed when the scheduler dies, so that a scheduler killed
    and started again never starts a second run on a folder the first still writes."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child
    except (OSError, AttributeError, TypeError):  # not Linux
        return None

    def setup():
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the scheduler died before prctl
            os._exit(1)
    return setup


def start(runs, row, place, attempt):
    """Start a row's command on `place`; its stdout and stderr go to runs/<row>/run.log."""
    argv = runs.command(row)
    os.makedirs(runs.folder(row), exist_ok=True)
    env = dict(os.environ, **({} if place is None else {"CUDA_VISIBLE_DEVICES": place}))
    with open(os.path.join(runs.folder(row), OUTPUT_FILE), "a") as log:
        log.write(f"==== reproduce.py, {time.strftime('%Y-%m-%d %H:%M:%S')}, attempt {attempt} of "
                  f"{RETRIES + 1}, {_place(place)}: {' '.join(argv)}\n")
        log.flush()
        return subprocess.Popen([sys.executable, *argv[1:]], cwd=runs.repo, env=env, stdout=log,
                                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent(os.getpid()))


def run_all(runs, rows, places, out=None, poll=2.0):
    """Run every unfinished row, one per place at a time; a failed run is started again
    once (it resumes), then reported while the others go on.  Returns {row name: the
    last lines of its output} for the rows that failed (empty when all finished)."""
    states = {row.name: "finished (skipped)" if runs.finished(row) else "waiting" for row in rows}
    queue = [row for row in rows if states[row.name] == "waiting"]
    free, running, attempts, failed = list(places), {}, {}, {}
    screen = Screen(out or sys.stdout)
    screen.draw(status_table(runs, rows, states), tuple(sorted(states.items())))
    try:
        while queue or running:
            while queue and free:
                row, place = queue.pop(0), free.pop(0)
                attempts[row.name] = attempts.get(row.name, 0) + 1
                screen.say(f"{row.name}: started on {_place(place)} ({runs.state(row)}), "
                           f"attempt {attempts[row.name]}")
                running[row.name] = (row, place, start(runs, row, place, attempts[row.name]))
                states[row.name] = f"running, {_place(place)}"
            for name, (row, place, proc) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[name]
                free.append(place)
                if code == 0:
                    done = {"command": runs.command(row), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
                    atomic_write_text(os.path.join(runs.folder(row), DONE_FILE), json.dumps(done) + "\n")
                    states[name] = "finished"
                elif attempts[name] <= RETRIES:
                    states[name] = "waiting (retry)"
                    queue.insert(0, row)
                    screen.say(f"{name}: exited with {code}; starting it again (it resumes)")
                else:
                    states[name] = f"failed (exit {code})"
                    with open(os.path.join(runs.folder(row), OUTPUT_FILE), errors="replace") as f:
                        failed[name] = [line.rstrip("\n") for line in f.readlines()[-15:]]
                    screen.say(f"{name}: failed again (exit {code}); the others go on (its last "
                               "lines follow the report)")
            screen.draw(status_table(runs, rows, states), tuple(sorted(states.items())))
            if running:
                time.sleep(poll)
    finally:  # interrupted (Ctrl-C): stop the runs; started again, they resume
        for _, _, proc in running.values():
            proc.terminate()
    return failed


# ---- The comparison with the original's logs ---------------------------------
def compare_rows(runs, rows, compare):
    """Per row: best and final test accuracy (%) of the port and the original, and the mark;
    writes runs/<row>/comparison.png.  `compare` is the module compare_runs.py."""
    results = []
    for row in rows:
        original = compare.parse_log(os.path.join(runs.repo, row.original_log),
                                     label=f"original: {row.original_log}")
        try:
            port = compare.parse_log(os.path.join(runs.folder(row), LOG_FILE), label=f"port: {row.name}")
        except compare.LogError:  # not started, or no log line yet
            port = None
        o, p = compare.summarize(original), compare.summarize(port) if port else {"best": None}
        r = {"row": row.name, "orig_best": o["best"][0] * 100, "orig_final": o["last"][0] * 100,
             "best": None, "best_it": None, "final": None, "final_it": None, "png": None}
        if p["best"]:
            r.update(best=p["best"][0] * 100, best_it=p["best"][1], final=p["last"][0] * 100,
                     final_it=p["last"][1], png=compare.plot(
                         [port, original], os.path.join(runs.folder(row), "comparison.png"),
                         title=f"{row.title}: the port against the original"))
        # compared in the logs' units (two decimals of a percent), not in float
        r["marked"] = r["best"] is not None and round(r["orig_best"] - r["best"], 2) > MARK_BELOW
        results.append(r)
    return results


def report_table(results):
    """The comparison as a Markdown table, in percent with two decimals (as the original README)."""
    def cells(value, it, original):
        if value is None:
            return ["-", "-", f"{original:.2f}", "-"]
        return [f"{value:.2f}", str(it), f"{original:.2f}", f"{value - original:+.2f}"]

    lines = ["| row | port best % | at iteration | original best % | difference | port final % "
             "| at iteration | original at 64k % | difference | more than 0.5 below |", "|" + " --- |" * 10]
    for r in results:
        row = ([r["row"]] + cells(r["best"], r["best_it"], r["orig_best"])
               + cells(r["final"], r["final_it"], r["orig_final"]) + ["**yes**" if r["marked"] else ""])
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_report(runs, rows, compare, out=None):
    """Print the comparison table and write it to runs/report.md, with a PNG per row."""
    results = compare_rows(runs, rows, compare)
    text = report_table(results)
    os.makedirs(os.path.join(runs.repo, runs.runs_dir), exist_ok=True)
    atomic_write_text(os.path.join(runs.repo, runs.runs_dir, "report.md"), text + "\n")
    pngs = [os.path.join(runs.runs_dir, r["row"], "comparison.png") for r in results if r["png"]]
    wrote = f" and the curves {', '.join(pngs)}" if pngs else " (no run has a test accuracy yet)"
    print(f"{text}\nwrote {os.path.join(runs.runs_dir, 'report.md')}{wrote}", file=out or sys.stdout)
    return results


# ---- Command line ------------------------------------------------------------
def select(rows, names):
    """The rows named in a comma-separated list, in the table's order."""
    by_name = {row.name: row for row in rows}
    wanted = [n.strip() for n in names.split(",") if n.strip()] or list(by_name)
    for name in [n for n in wanted if n not in by_name]:
        hint = closest(name, by_name)
        raise ReproduceError(
            f"--rows: no row named {name!r}" + (f" (did you mean {hint!r}?)" if hint else "")
            + f"; the rows are {', '.join(by_name)} (python reproduce.py --list)")
    return [row for row in rows if row.name in wanted]


def build_parser(description):
    parser = argparse.ArgumentParser(
        description=description, usage="python reproduce.py [options] [-- settings of every run]",
        epilog="Settings after `--` go to every run's command (e.g. -- --max_epoch 4000).")
    parser.add_argument("--rows", default="", help="comma-separated row names (default: all; see --list)")
    parser.add_argument("--list", action="store_true", help="print the rows and their commands")
    parser.add_argument("--dry_run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--report", action="store_true",
                        help="only compare with the original's logs (at any time)")
    parser.add_argument("--devices", help="GPU ids for the runs, e.g. 0,1,2,3 ('' = the CPU); default: "
                        "CUDA_VISIBLE_DEVICES if set, else the GPUs nvidia-smi -L lists")
    parser.add_argument("--per_run_gpus", type=int, default=1,
                        help="GPUs per run (its tf.distribute strategy mirrors it over them)")
    parser.add_argument("--runs_dir", default=RUNS_DIR,
                        help="the runs' folder, relative to the repository root")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between status updates")
    return parser


def main(rows, compare, repo, argv=None, description=None, out=None):
    """reproduce.py's command line; `argv` after a `--` goes to every run's command."""
    out = out or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = build_parser(description).parse_args(argv[:cut])
    runs = Runs(repo=repo, runs_dir=args.runs_dir, extra=tuple(argv[cut + 1:]))
    try:
        chosen = select(rows, args.rows)
        devices = visible_gpus(os.environ if args.devices is None else {"CUDA_VISIBLE_DEVICES": args.devices})
        places = slots(devices, args.per_run_gpus)
    except ReproduceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.list:
        for row in chosen:
            print(f"{row.name:28s} {row.title}\n{'':28s} {' '.join(runs.command(row))}", file=out)
        return 0
    if args.dry_run:
        print_plan(runs, chosen, places, out)
        return 0
    try:
        failed = {} if args.report else run_all(runs, chosen, places, out=out, poll=args.poll)
    except KeyboardInterrupt:
        print("\ninterrupted: the same command continues every unfinished run from its checkpoint",
              file=sys.stderr)
        return 130
    write_report(runs, chosen, compare, out=out)
    for name, lines in failed.items():
        log = os.path.join(runs.runs_dir, name, OUTPUT_FILE)
        print(f"{name} failed twice; the last lines of {log}:\n    " + "\n    ".join(lines), file=out)
    return 1 if failed else 0
