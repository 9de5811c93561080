"""The original's log lines, written out independently of spherenet_tf.training.runlog
(a test of the format must not read it from the code under test)."""

import re

ORIGINAL_LINE = re.compile(r"^====iteration_(\d+): fit=\d+\.\d{4}, reg=\d+\.\d{4}, orth=\d+\.\d{4}, "
                           r"acc=\d\.\d{4}$")
ORIGINAL_LINE_NO_ORTH = re.compile(r"^====iteration_(\d+): fit=\d+\.\d{4}, reg=\d+\.\d{4}, acc=\d\.\d{4}$")
TEST_LINE = re.compile(r"^\+\+\+\+iteration_(\d+): test acc=\d\.\d{4}$")


def iterations(text, pattern):
    """The iterations of the lines of `text` that match `pattern`."""
    return [int(m.group(1)) for m in map(pattern.match, text.splitlines()) if m]
