"""`--eval_only`: the test accuracy of a checkpoint, as the original printed it.

Port of the test-set evaluation inside the original training scripts of "Deep
Hyperspherical Learning" (Liu et al., NIPS 2017; wy1iu/SphereNet `train_spherenet.py`).

Every training script accepts `--eval_only`: it builds the script's model with its
settings, loads a checkpoint of the original TF1 code (`--tf1_checkpoint models/16000`,
see `tf1_checkpoint`) or else the latest checkpoint of this port's own run in
`model_file`, evaluates the whole test set in batches of `batch_test`, and prints the
line the original training scripts print every 500 iterations:

    ++++iteration_16000: test acc=0.9131

(the original evaluates its checkpoints this way inside `train_spherenet.py`; its
`test.py` is a leftover of another project).  Nothing is written, so `model_file` may be
read-only.
"""

import os
import sys

import tensorflow as tf

from .. import cifar10_input
from ..tf1_checkpoint import load_tf1_checkpoint
from .checkpoints import RESUME_DIR
from .errors import TrainingError
from .resume import CheckpointUnreadable, checkpoint_number, latest_readable
from .runlog import test_line
from .task import evaluate_accuracy  # the task's evaluation loop, on one device


def _load_port_checkpoint(model, model_file):
    """Weights of this port's newest readable resume checkpoint in `model_file` (a torn
    newest one is skipped, as when training resumes); returns (iteration, path)."""
    folder = os.path.join(model_file, RESUME_DIR)
    checkpoint = tf.train.Checkpoint(model=model)

    def report(message):
        print(message, file=sys.stderr)

    try:
        latest = latest_readable(folder, report=report)
    except CheckpointUnreadable as e:
        raise TrainingError(f"--eval_only: no checkpoint in {folder} can be read ({e}).") from None
    if latest is None:
        raise TrainingError(
            f"--eval_only: no checkpoint of this port in {folder}. Give --tf1_checkpoint PATH "
            "for a checkpoint of the original TF1 code (e.g. its models/16000), or --model_file "
            "for the folder of a run of this port."
        )
    checkpoint.read(latest).assert_existing_objects_matched().expect_partial()
    # resume checkpoints are numbered with the next iteration to run
    return checkpoint_number(latest) - 1, latest


def run_eval_only(settings, build_model, data=None, out=None):
    """Build the model, load the checkpoint, evaluate the whole test set and print the
    original's test line to `out` (stdout); returns (iteration, accuracy)."""
    out = out or sys.stdout
    model = build_model(settings)
    if settings.tf1_checkpoint:
        info = load_tf1_checkpoint(model, settings.tf1_checkpoint)
        iteration, source = info.iteration, info.summary()
    else:
        iteration, latest = _load_port_checkpoint(model, settings.model_file)
        source = f"{latest} (this port's checkpoint)"
    if data is None:
        data = cifar10_input.load_dataset(settings.data_path, settings.dataset, download=settings.download)
    _, (test_x, test_y) = data
    print(f"{model.name}: evaluating {source} on {len(test_x)} test images", file=sys.stderr)
    if iteration is None:
        print("the checkpoint does not say its iteration (no Adam beta powers, no number in "
              "its name): printing iteration 0", file=sys.stderr)
        iteration = 0
    accuracy = evaluate_accuracy(model, test_x, test_y, settings.batch_test)
    print(test_line(iteration, accuracy), file=out, flush=True)
    return iteration, accuracy
