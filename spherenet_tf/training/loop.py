"""The training loop of every script: restore, iterate, log, evaluate, checkpoint, save.

Ports the loop of the original `train_spherenet.py`, `baseline/train_baseline.py`,
`sphere_resnet/train_sphere_resnet.py` and `sphere_resnet/baseline/train_baseline.py`
(wy1iu/SphereNet), which the original copied into each folder: iterations
0 ... max_epoch; every 100 the training line, every 500 the whole-test-set accuracy,
every 16000 a snapshot `model_file + str(iteration)`.  What one iteration computes is
the task's (`task.ClassificationTask`); this module only decides when things happen.
"""

import os
import sys
import time

import keras
import tensorflow as tf

from ..tf1_checkpoint import load_tf1_checkpoint
from .checkpoints import RunFiles
from .distribution import is_multi_worker, make_strategy, worker_role
from .errors import TrainingError, WorkerLost
from .nonfinite import first_nonfinite_layer
from .progress import ProgressBar
from .runlog import RunLog
from .settings import settings_record
from .task import ClassificationTask

#: Errors of a collective op when another worker is gone.
_LOST_WORKER = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                tf.errors.AbortedError, tf.errors.CancelledError)


class Trainer:
    """One training run: strategy, task, log and checkpoints, and the loop over them.

    Args:
      settings: a `Settings`.
      build_model: `settings -> keras.Model` (called inside the strategy's scope).
      data: optional ((train_x, train_y), (test_x, test_y)) arrays; read from
        `settings.data_path` when omitted.
      script: the training script's path, recorded in settings.json.
    """

    def __init__(self, settings, build_model, data=None, script=None):
        self.s = s = settings
        self.script = script
        # first: see make_strategy.  The dtype policy, op determinism and the seeds are
        # the process's, set by the command-line entry point (`set_process_state`).
        self.strategy = make_strategy(s.strategy, s.cpu_replicas)
        self.is_chief, self.task_id = worker_role(self.strategy)
        self.progress = None
        if self.is_chief and (s.progress == "on" or (s.progress == "auto" and sys.stderr.isatty())):
            self.progress = ProgressBar(s.max_epoch + 1)
        self.log = RunLog(s.model_file, enabled=self.is_chief, progress=self.progress,
                          tensorboard=s.tensorboard == "on")
        self._speed_mark = None  # (iteration, time) of the last training line
        checkpoint = tf.train.Checkpoint()
        self.files = RunFiles(s.model_file, checkpoint, self.is_chief, self.task_id)
        self.task = ClassificationTask(s, build_model, self.strategy, data)
        self.log.note(f"precision: {self.task.precision_policy} ({self.task.precision_reason})")
        checkpoint.model, checkpoint.optimizer = self.task.model, self.task.optimizer

    @property
    def model(self):
        return self.task.model

    @property
    def optimizer(self):
        return self.task.optimizer

    @property
    def iteration(self):
        """Index of the next iteration to run (= Adam steps applied so far)."""
        return self.task.iteration

    def settings_record(self):
        record = settings_record(self.s)
        record.update(
            model=self.model.name,
            parameters=int(self.model.count_params()),
            replicas=self.task.n_replicas,
            strategy_class=type(self.strategy).__name__,
            precision_policy=self.task.precision_policy,
            script=os.path.abspath(self.script) if self.script else None,
            tensorflow=tf.__version__,
            keras=keras.__version__,
        )
        return record

    # -- start -----------------------------------------------------------------
    def restore_resume_state(self):
        """Continue a previous run of the same settings from its last resume checkpoint
        (the newest that reads in full; a torn one is reported and skipped), or start
        from --tf1_checkpoint, or from scratch.  Returns the iteration to run next."""
        if self.s.restart:
            self.files.clear_resume()
            return self._start_from_tf1_checkpoint() if self.s.tf1_checkpoint else 0
        latest = self.files.latest_resume_checkpoint(report=self.log.note)
        if latest is None:
            return self._start_from_tf1_checkpoint() if self.s.tf1_checkpoint else 0
        self.files.check_settings_compatible(self.settings_record())
        self.files.restore(latest, self.model.name, lambda: self.iteration)
        return self.iteration

    def _start_from_tf1_checkpoint(self):
        """Weights and Adam state of the original's checkpoint; returns the iteration to
        run next (the original's step count)."""
        info = load_tf1_checkpoint(self.model, self.s.tf1_checkpoint, optimizer=self.optimizer)
        self.log.note(f"continuing the original's checkpoint {info.summary()}")
        if self.is_chief:
            self.log.start_fresh()
        return self.iteration

    # -- checks before anything is saved ---------------------------------------
    def check_nonfinite(self, when="continuing"):
        """Stop (TrainingError) if a step since the start had a NaN/Inf loss or gradient.

        Such steps are not applied (see `ClassificationTask.train_step`); the message
        names the first one's iteration and values and the first layer concerned.
        """
        report = self.task.nonfinite_report()
        if report:
            raise TrainingError(f"{report}; stopped before {when}. {self.files.last_good()}")

    def _check_finite_weights(self, when):
        self.check_nonfinite(when)
        bad = first_nonfinite_layer(self.model)
        if bad:
            raise TrainingError(
                f"non-finite weights in {bad} at iteration {self.iteration - 1}; stopped before "
                f"{when}. {self.files.last_good()}"
            )

    def save_resume_checkpoint(self):
        self._check_finite_weights("saving a checkpoint")
        self.files.save_resume(self.iteration)

    # -- the loop ----------------------------------------------------------------
    def fit(self):
        """Run iterations from the current one to `max_epoch`; returns the last test accuracy."""
        s = self.s
        start = self.restore_resume_state()
        self.files.check_workers_agree(self.strategy, start)
        if self.is_chief:
            if start == 0:
                self.log.start_fresh()
            self.log.truncate_after(start - 1)
            self.files.write_settings(self.settings_record())
        self.log.note(
            f"{self.model.name}: {self.model.count_params():,} parameters; "
            f"{type(self.strategy).__name__} with {self.task.n_replicas} replica(s); "
            f"{len(self.task.train_x)} training / {len(self.task.test_x)} test images; "
            + (f"resuming at iteration {start}" if start else "starting at iteration 0")
            + f" of 0..{s.max_epoch}"
        )
        if self.progress:
            self.progress.restart(start)
        iterator = self.task.train_iterator(start)
        test_acc = None
        self._speed_mark = (start, time.perf_counter())
        try:
            for i in range(start, s.max_epoch + 1):
                test_acc = self.run_iteration(i, iterator, test_acc)
        except _LOST_WORKER as e:
            if not is_multi_worker(self.strategy):
                raise
            raise self._worker_lost(e) from None
        if self.progress:
            self.progress.clear()
        self.log.close()
        self.check_nonfinite("saving the final model")
        path = self.files.save_final_model(self.model)
        self.log.note(f"done: final model saved to {path}")
        return test_acc

    def run_iteration(self, i, iterator, test_acc=None):
        """Iteration i: one training step, then the log line, evaluation and checkpoints
        due at i.  Returns the latest test accuracy."""
        s = self.s
        fit, reg, orth, acc = self.task.train_step(iterator)
        if i % s.log_every == 0 and i != 0:
            self.check_nonfinite(f"logging iteration {i}")
            self.log.train(i, float(fit), float(reg), float(orth), float(acc),
                           lr=self.task.schedule.at(i), images_per_sec=self._images_per_sec(i),
                           with_orth=self.task.has_orth)
        if i % s.eval_every == 0 and i != 0:
            test_acc = self.task.evaluate()
            self.log.test(i, test_acc)
        if i % s.save_every == 0 and i != 0:
            self._check_finite_weights("saving a snapshot")
            self.files.save_snapshot(i)
        if (i % s.checkpoint_every == 0 and i != 0) or i == s.max_epoch:
            self.save_resume_checkpoint()
        if self.progress:
            self.progress.update(i, f"lr={self.task.schedule.at(i):.0e}")
        return test_acc

    def _images_per_sec(self, i):
        """Training images per second since the last training line (or the start)."""
        (last, since), now = self._speed_mark, time.perf_counter()
        self._speed_mark = (i + 1, now)
        return round(self.s.batch_sz * (i + 1 - last) / max(now - since, 1e-9), 1)

    def _worker_lost(self, error):
        lines = str(error).strip().splitlines()
        reason = next((line for line in lines if "unhealthy" in line or "aborted" in line),
                      lines[0] if lines else type(error).__name__)
        return WorkerLost(
            f"worker {self.task_id} lost contact with another worker after iteration "
            f"{self.iteration - 1} ({reason.strip()[:300]}). The run cannot continue without "
            "it: start every worker again with the same command; they resume from the last "
            f"checkpoint in {self.files.resume_folder}."
        )
