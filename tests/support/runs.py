"""A run as a training script's entry point makes it, for the tests that build a
`Trainer` in-process.

`spherenet_tf.training.main` sets the process's dtype policy, op determinism and seeds
(`set_process_state`) and then builds the `Trainer`; the `Trainer` itself changes
nothing process-wide.  Tests that compare runs (the same initial weights) or train under
mixed precision build theirs here; tests/conftest.py puts the dtype policy back after
every test.
"""

from spherenet_tf.training import Trainer, set_process_state


def script_trainer(settings, build_model, **kwargs):
    """`set_process_state(settings)`, then `Trainer(settings, build_model, **kwargs)`."""
    set_process_state(settings)
    return Trainer(settings, build_model, **kwargs)
