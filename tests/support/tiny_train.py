"""A training script like `train_spherenet.py` on a tiny SphereNet-9 (widths 8, 8, 16),
for the tests that run, kill and resume real training processes.

The loop, command line, log lines, checkpoints and distribution are those of every
training script (`spherenet_tf.training.main`); only the widths are small, so that a
subprocess run of a few iterations takes seconds on a CPU.
"""

import os
import signal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from spherenet_tf import training  # noqa: E402
from spherenet_tf.models import build_cnn9  # noqa: E402
from spherenet_tf.training import loop, resume  # noqa: E402

n_class = 10               # number of classes
batch_sz = 8               # training batch of one iteration
batch_test = 100           # batch size of the test-set evaluation
max_epoch = 12             # last iteration
lr = 1e-3                  # Adam learning rate
data_path = 'cifar10/'     # CIFAR-10 binary files or a tensorflow-datasets copy
model_file = 'models/'     # checkpoints, final.keras, settings.json and training.log
norm = 'cosine'            # SphereConv type
w_norm = 'none'            # score layer


def build_model(s):
    return build_cnn9(s.n_class, norm=s.norm, w_norm=s.w_norm, widths=(8, 8, 16), name="tiny9")


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def install_faults(spec):
    """The tests' kill points, from SPHERENET_FAULT ("point@N,..."), patched in here so
    that nothing of them runs in real training:

    * ``step@N``: after the training step of iteration N, before its log line;
    * ``save_written@N``: resume checkpoint N flushed under its temporary name, not
      yet renamed;
    * ``save_published@N``: checkpoint N renamed into place, the state file not yet
      rewritten.
    """
    points = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        name, _, at = item.partition("@")
        points[name] = int(at)
    if "step" in points:
        run_iteration = loop.Trainer.run_iteration

        def killing_run_iteration(self, i, iterator, test_acc=None):
            if i == points["step"]:
                step = self.task.train_step
                self.task.train_step = lambda it: (step(it)[0].numpy(), _die())
            return run_iteration(self, i, iterator, test_acc)

        loop.Trainer.run_iteration = killing_run_iteration
    if "save_written" in points:
        publish = resume._publish

        def killing_publish(tmp, prefix):
            if prefix.endswith(f"{resume.PREFIX}-{points['save_written']}"):
                _die()
            publish(tmp, prefix)

        resume._publish = killing_publish
    if "save_published" in points:
        write_state = resume.ResumeCheckpoints._write_state

        def killing_write_state(self, paths):
            if paths[-1].endswith(f"{resume.PREFIX}-{points['save_published']}"):
                _die()
            write_state(self, paths)

        resume.ResumeCheckpoints._write_state = killing_write_state


if __name__ == '__main__':
    install_faults(os.environ.get("SPHERENET_FAULT", ""))
    training.main(globals(), build_model, __file__)
