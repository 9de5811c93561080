"""The run log: the original's log lines, written and read back.

The original training scripts (wy1iu/SphereNet `train_spherenet.py` and the others)
print, every 100 iterations, a line of the training batch and, every 500, the
accuracy over the whole test set:

    ====iteration_100: fit=1.4002, reg=0.4845, orth=0.4476, acc=0.5078
    ++++iteration_500: test acc=0.1195

(the baselines have no `orth=`).  This module defines those lines once: `train_line` /
`test_line` write them, `parse_line` reads them back (for resuming a run and for
`compare_runs.py`).  `RunLog` prints them, appends them to `model_file/training.log`
and keeps the same values at full precision in `model_file/metrics.jsonl` and, for
TensorBoard, in `model_file/events.out.tfevents.*` (`events`).
"""

import collections
import json
import os
import re
import sys
import time

from .events import EventLog

LOG_LINE = "====iteration_%d: fit=%.4f, reg=%.4f, orth=%.4f, acc=%.4f"
LOG_LINE_NO_ORTH = "====iteration_%d: fit=%.4f, reg=%.4f, acc=%.4f"
TEST_LINE = "++++iteration_%d: test acc=%.4f"
LOG_FILE = "training.log"
METRICS_FILE = "metrics.jsonl"

_NUMBER = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf)"
# Read leniently (spaces, NaN, a missing `orth=`) so that saved terminal sessions and
# the original's own logs parse too.
_TRAIN = re.compile(
    rf"^====iteration_(\d+):\s*fit={_NUMBER},\s*reg={_NUMBER},\s*(?:orth={_NUMBER},\s*)?acc={_NUMBER}\s*$",
    re.IGNORECASE,
)
_TEST = re.compile(rf"^\+\+\+\+iteration_(\d+):\s*test acc={_NUMBER}\s*$", re.IGNORECASE)

#: A training line; `orth` is None where the line has none (the baselines).
TrainRecord = collections.namedtuple("TrainRecord", "iteration fit reg orth acc")
TestRecord = collections.namedtuple("TestRecord", "iteration acc")


def train_line(iteration, fit, reg, orth, acc, with_orth=True):
    """The original's training line (`orth=` only for models that have the constraint)."""
    if with_orth:
        return LOG_LINE % (iteration, fit, reg, orth, acc)
    return LOG_LINE_NO_ORTH % (iteration, fit, reg, acc)


def test_line(iteration, accuracy):
    return TEST_LINE % (iteration, accuracy)


def parse_line(line):
    """A `TrainRecord` or `TestRecord` for a line of the original's format, else None."""
    line = line.strip()
    m = _TRAIN.match(line)
    if m:
        orth = float(m.group(4)) if m.group(4) is not None else None
        return TrainRecord(int(m.group(1)), float(m.group(2)), float(m.group(3)), orth,
                           float(m.group(5)))
    m = _TEST.match(line)
    if m:
        return TestRecord(int(m.group(1)), float(m.group(2)))
    return None


def atomic_write_text(path, text):
    """Replace `path` by `text` so that a kill leaves either the old or the new file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _metrics_iteration(line):
    try:
        return json.loads(line)["iteration"]
    except (ValueError, KeyError, TypeError):
        return None


class RunLog:
    """Prints the original's lines to stdout and appends them to model_file/training.log.

    Only the chief writes (`enabled`).  On resume the log is cut back to the resumed
    iteration, so the file reads as one uninterrupted run.  Informational notes go to
    stderr, so stdout holds exactly the original's lines.
    """

    def __init__(self, folder, enabled=True, progress=None, tensorboard=True):
        self.path = os.path.join(folder, LOG_FILE)
        self.metrics_path = os.path.join(folder, METRICS_FILE)
        self.enabled = enabled
        self.progress = progress
        self.events = EventLog(folder, enabled and tensorboard)

    def start_fresh(self):
        for path in (self.path, self.metrics_path):
            if self.enabled and os.path.exists(path):
                os.remove(path)
        self.events.start_fresh()

    def truncate_after(self, iteration):
        """Drop what a killed run logged after `iteration` (it will be redone)."""
        if not self.enabled:
            return
        for path, iteration_of in [(self.path, lambda l: getattr(parse_line(l), "iteration", None)),
                                   (self.metrics_path, _metrics_iteration)]:
            if not os.path.exists(path):
                continue
            kept = []
            with open(path) as f:
                for line in f:
                    it = iteration_of(line)
                    if (it is not None and it > iteration) or not line.endswith("\n"):
                        break  # later lines, or a line a kill cut short
                    kept.append(line)
            atomic_write_text(path, "".join(kept))
        self.events.truncate_after(iteration)

    def train(self, iteration, fit, reg, orth, acc, lr, images_per_sec, with_orth=True):
        """One training line, and its values at full precision (and for TensorBoard)."""
        self.metrics(iteration, fit=fit, reg=reg, orth=orth, acc=acc, lr=lr,
                     images_per_sec=images_per_sec)
        values = {"train/fit": fit, "train/reg": reg, "train/orth": orth, "train/acc": acc,
                  "train/lr": lr, "train/images_per_sec": images_per_sec}
        if not with_orth:
            del values["train/orth"]
        self.events.scalars(iteration, values)
        self.line(train_line(iteration, fit, reg, orth, acc, with_orth))

    def test(self, iteration, accuracy):
        """One test-accuracy line, and its value at full precision (and for TensorBoard)."""
        self.metrics(iteration, test_acc=accuracy)
        self.events.scalars(iteration, {"test/acc": accuracy})
        self.line(test_line(iteration, accuracy))

    def close(self):
        self.events.close()

    def metrics(self, iteration, **values):
        """Full-precision values, one JSON object per line (model_file/metrics.jsonl)."""
        if not self.enabled:
            return
        record = {"iteration": iteration, **values, "time": round(time.time(), 3)}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def line(self, text):
        if not self.enabled:
            return
        if self.progress:
            self.progress.clear()
        print(text, flush=True)
        with open(self.path, "a") as f:
            f.write(text + "\n")

    def note(self, text):
        """Informational text (stderr), kept out of the original-format log."""
        if self.enabled:
            if self.progress:
                self.progress.clear()
            print(text, file=sys.stderr, flush=True)
