"""TensorBoard events of a run, written with `tf.summary` into `model_file`.

Beyond the original, which only printed its lines: every value of a training line
(`train/fit`, `train/reg`, `train/orth`, `train/acc`), the learning rate (`train/lr`)
and the training speed (`train/images_per_sec`) at each logged iteration, and the test
accuracy (`test/acc`) at each evaluation, with the iteration as the step: the values
`metrics.jsonl` holds.  `tensorboard --logdir models/` shows every run under it.

A resumed run continues the same curves: what a killed run wrote after the iteration
it resumes from is dropped (the events are rewritten without it, through
`tf.summary`, before the run goes on), so each logged iteration has one value.
"""

import glob
import os

import tensorflow as tf

#: Event files of this writer (TensorBoard reads every such file in a folder).
PATTERN = "events.out.tfevents.*"


def read_scalars(folder):
    """{tag: {step: value}} of the scalar events in `folder` (TensorBoard's view of it:
    a later file's value for a (tag, step) replaces an earlier one's)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, PATTERN)), key=os.path.getmtime):
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    number = tf.make_ndarray(value.tensor) if value.HasField("tensor") else value.simple_value
                    out.setdefault(value.tag, {})[event.step] = float(number)
        except tf.errors.DataLossError:
            pass  # the end of a file a kill cut short: the events before it are kept
    return out


class EventLog:
    """The run's TensorBoard events; only the chief writes (`enabled`)."""

    def __init__(self, folder, enabled=True):
        self.folder = folder
        self.enabled = enabled
        self._writer = None

    def _files(self):
        return glob.glob(os.path.join(self.folder, PATTERN))

    def start_fresh(self):
        if self.enabled:
            for path in self._files():
                os.remove(path)

    def truncate_after(self, iteration):
        """Keep only the values of iterations <= `iteration`, in one new event file
        (written and closed before the old files are removed, so a kill in between
        leaves the values, at worst twice)."""
        old = self._files() if self.enabled else []
        if not old:
            return
        kept = read_scalars(self.folder)
        if len(old) == 1 and all(step <= iteration for steps in kept.values() for step in steps):
            return
        writer = tf.summary.create_file_writer(self.folder, filename_suffix=".resumed")
        with writer.as_default():
            for tag, steps in kept.items():
                for step, value in sorted(steps.items()):
                    if step <= iteration:
                        tf.summary.scalar(tag, value, step=step)
        writer.close()
        for path in old:
            os.remove(path)

    def scalars(self, iteration, values):
        """Write {tag: value} at step `iteration` and flush (a kill loses nothing logged)."""
        if not self.enabled:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.folder)
        with self._writer.as_default():
            for tag, value in values.items():
                tf.summary.scalar(tag, value, step=iteration)
        self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
