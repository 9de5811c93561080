"""What a run keeps in `model_file`: settings.json, resume checkpoints, the original's
snapshots `model_file/<iteration>` and the final model.

The original saves `tf.train.Saver().save(sess, model_file + str(i))` every 16,000
iterations and cannot resume (wy1iu/SphereNet `train_spherenet.py`).  The port keeps
those snapshots and adds crash-safe resume checkpoints (`resume`), restored on the
next start of the same command; a run with other settings is refused rather than
mixed with it.
"""

import json
import os

import numpy as np
import tensorflow as tf

from ..messages import first_line
from .distribution import is_multi_worker
from .errors import TrainingError
from .resume import CheckpointUnreadable, ResumeCheckpoints, checkpoint_number, write_checkpoint
from .runlog import atomic_write_text

SETTINGS_FILE = "settings.json"
FINAL_MODEL = "final.keras"
RESUME_DIR = "resume"
#: Settings that must be the same to continue a run.
RESUME_KEYS = ("model", "n_class", "norm", "w_norm", "batch_sz", "lr", "seed", "augmentation",
               "dataset")
#: The value of a key that settings.json files of earlier versions do not record.
RECORDED_BEFORE = {"dataset": "cifar10"}


class RunFiles:
    """The files of one run in `model_file`.

    Only the chief writes there; the other workers of a multi-worker run write their
    copies into `model_file/.worker-N/` (TensorFlow has every worker save) and read the
    chief's.
    """

    def __init__(self, model_file, checkpoint, is_chief=True, task_id=0):
        self.model_file = model_file
        self.is_chief = is_chief
        self.task_id = task_id
        self.checkpoint = checkpoint
        self.folder = model_file if is_chief else os.path.join(model_file, f".worker-{task_id}")
        self._make_writable(self.folder)
        self.resume_folder = os.path.join(model_file, RESUME_DIR)
        self.resume = ResumeCheckpoints(checkpoint, os.path.join(self.folder, RESUME_DIR),
                                        read_directory=self.resume_folder)
        if is_chief:
            self.resume.remove_partial()

    @staticmethod
    def _make_writable(path):
        try:
            os.makedirs(path, exist_ok=True)
            probe = os.path.join(path, f".write-test-{os.getpid()}")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as e:
            raise TrainingError(
                f"model_file folder {path!r} cannot be written ({e.strerror}). Checkpoints, the "
                "log and the final model go there: choose a writable folder with --model_file."
            ) from None

    # -- settings.json ---------------------------------------------------------
    def write_settings(self, record):
        if self.is_chief:
            atomic_write_text(os.path.join(self.model_file, SETTINGS_FILE),
                              json.dumps(record, indent=2) + "\n")

    def check_settings_compatible(self, record):
        """Refuse to continue a run recorded with other settings."""
        path = os.path.join(self.model_file, SETTINGS_FILE)
        if not os.path.exists(path):
            return
        with open(path) as f:
            previous = json.load(f)
        # A setting the current run does not have (a baseline's norm) is not compared.
        previous = {**RECORDED_BEFORE, **previous}
        diffs = [f"{k}: {previous.get(k)!r} then, {record[k]!r} now" for k in RESUME_KEYS
                 if k in record and previous.get(k) != record[k]]
        if diffs:
            raise TrainingError(
                f"{self.model_file} holds a run with other settings ({'; '.join(diffs)}), so "
                "it cannot be resumed with these. Use another --model_file, or --restart to "
                "start over (deletes its resume checkpoints)."
            )

    # -- resume ----------------------------------------------------------------
    def latest_resume_checkpoint(self, report=None):
        """The newest resume checkpoint that reads in full, or None when there is none."""
        try:
            return self.resume.latest_readable(report=report)
        except CheckpointUnreadable as e:
            raise TrainingError(
                f"no resume checkpoint in {self.resume_folder} can be read ({e}). They were "
                "damaged (a full disk or failing storage?). Start over with --restart (deletes "
                "them), or use another --model_file."
            ) from None

    def restore(self, latest, model_name, iteration_of):
        """Load resume checkpoint `latest`; `iteration_of()` reads the restored counter."""
        try:
            self.checkpoint.read(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise TrainingError(
                f"resume checkpoint {latest} does not fit the model {model_name!r} "
                f"({first_line(e)}): it was written by another model or other settings. Use "
                "another --model_file, or --restart to start over (deletes the old checkpoints)."
            ) from None
        if iteration_of() != checkpoint_number(latest):
            raise TrainingError(
                f"resume checkpoint {latest} holds iteration {iteration_of()}, not "
                f"{checkpoint_number(latest)}: it was renamed or mixed with another run's. Use "
                "another --model_file, or --restart to start over."
            )

    def clear_resume(self):
        if self.is_chief:
            self.resume.clear()

    def save_resume(self, iteration):
        self.resume.save(iteration)

    def last_good(self):
        """A sentence naming the checkpoint a restart would use."""
        good = self.resume.complete(self.resume.read_directory)
        return (f"The last good checkpoint, {good[-1]}, is kept: resuming repeats the same "
                "iterations, so lower --lr or fix the data or model first." if good else
                f"No checkpoint had been written yet in {self.resume_folder}.")

    def check_workers_agree(self, strategy, start):
        """All workers of a multi-worker run must resume at the same iteration (they read
        the chief's checkpoints, so model_file must be shared storage)."""
        if not is_multi_worker(strategy):
            return
        value = tf.constant([float(start), float(start) ** 2], tf.float64)

        @tf.function
        def all_workers_sum():
            return strategy.reduce(tf.distribute.ReduceOp.SUM,
                                   strategy.run(lambda: tf.identity(value)), axis=None)

        total = all_workers_sum()
        n = strategy.num_replicas_in_sync
        if not np.array_equal(total.numpy(), [start * n, start**2 * n]):
            raise TrainingError(
                f"worker {self.task_id} would resume at iteration {start}, but the workers do not "
                f"agree (mean {total.numpy()[0] / n:g}): every worker must see the chief's "
                f"{self.resume_folder}, so model_file must be on storage shared by all machines "
                "(docs/distributed.md, 'Several machines'), and every worker must be started "
                "with the same command."
            )

    # -- the original's snapshots and the final model ----------------------------
    def save_snapshot(self, iteration):
        """The original's `Saver().save(sess, model_file + str(i))`: the full training
        state (model, optimizer) as `model_file/<iteration>.index/.data-*`."""
        write_checkpoint(self.checkpoint, os.path.join(self.folder, str(iteration)))

    def save_final_model(self, model):
        path = os.path.join(self.folder, FINAL_MODEL)
        tmp = path + ".partial.keras"
        model.save(tmp)
        os.replace(tmp, path)
        return path
