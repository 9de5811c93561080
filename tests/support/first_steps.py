"""The first training iterations of train_spherenet.py, iteration 0 included.

A run logs from iteration 1, after one update; the loss of iteration 0 is the one
computed before any update, where a strategy can differ from one device only by
summation order.  `python -m support.first_steps OUT.json N ARGS...` (from tests/)
builds the script's Trainer from the command line ARGS (same settings, devices and
data as the script) and writes fit, reg, orth and accuracy of iterations 0..N-1,
run through the Trainer's compiled step.
"""

import json
import sys
from pathlib import Path

from spherenet_tf.training import parse_settings
from spherenet_tf.training.distribution import configure_devices

from .repo import REPO, load_module
from .runs import script_trainer


def main(argv):
    out, n, args = argv[0], int(argv[1]), argv[2:]
    module = load_module("train_spherenet.py")
    settings = parse_settings(vars(module), module.__file__, args)
    configure_devices(settings)
    trainer = script_trainer(settings, module.build_model, script=str(REPO / "train_spherenet.py"))
    iterator = trainer.task.train_iterator(0)
    steps = []
    for _ in range(n):
        fit, reg, orth, acc = trainer.task.train_step(iterator)
        steps.append({"fit": float(fit), "reg": float(reg), "orth": float(orth), "acc": float(acc)})
    Path(out).write_text(json.dumps({"steps": steps,
                                     "replicas": trainer.strategy.num_replicas_in_sync}))


if __name__ == "__main__":
    main(sys.argv[1:])
