"""The one training loop behind every training script, as small modules.

Ports the training scripts of "Deep Hyperspherical Learning" (Liu et al., NIPS 2017;
wy1iu/SphereNet `train_spherenet.py`, `baseline/train_baseline.py`,
`sphere_resnet/train_sphere_resnet.py`, `sphere_resnet/baseline/train_baseline.py`),
which the original copied into each folder.  One module per job:

* `settings`     every setting, its meaning and its valid values
* `cli`          the command line over a script's settings block; `main`
* `schedule`     Adam and the learning-rate schedule of the original
* `distribution` devices, tf.distribute strategy, precision policy
* `task`         model, optimiser, data, the compiled train and eval steps
* `loop`         the loop: restore, iterate, log, evaluate, checkpoint, save (`Trainer`)
* `runlog`       the original's log lines, written and read back
* `checkpoints`  settings.json, resume checkpoints, snapshots, the final model
* `resume`       crash-safe writing and reading of resume checkpoints
* `nonfinite`    the NaN / Inf guard and its diagnosis
* `eval_only`    `--eval_only`: the test accuracy of a checkpoint
* `errors`       why a run stops, and the exit codes
"""

from .checkpoints import FINAL_MODEL, RESUME_DIR, SETTINGS_FILE
from .cli import main, parse_settings
from .distribution import PRECISIONS, choose_precision, make_strategy, precision_policy, set_process_state
from .errors import EXIT_ERROR, EXIT_RESTART, TrainingError, WorkerLost
from .loop import Trainer
from .runlog import LOG_LINE, LOG_LINE_NO_ORTH, TEST_LINE, RunLog, parse_line
from .schedule import ADAM, LR_BOUNDARIES, OriginalSchedule
from .settings import Settings
from .task import ClassificationTask

__all__ = [
    "ADAM", "ClassificationTask", "EXIT_ERROR", "EXIT_RESTART", "FINAL_MODEL", "LOG_LINE",
    "LOG_LINE_NO_ORTH", "LR_BOUNDARIES", "OriginalSchedule", "RESUME_DIR", "RunLog",
    "SETTINGS_FILE", "Settings", "TEST_LINE", "Trainer", "TrainingError", "WorkerLost", "main",
    "PRECISIONS", "choose_precision", "make_strategy", "parse_line", "parse_settings",
    "precision_policy", "set_process_state",
]
