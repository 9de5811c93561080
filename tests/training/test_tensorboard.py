"""spherenet_tf/training/events.py: TensorBoard events equal to metrics.jsonl, across a
kill and resume, and off with --tensorboard off.

The events are read back with TensorFlow's own reader of event files
(`tf.compat.v1.train.summary_iterator`), every event counted, not through the module
under test."""

import collections
import glob
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from support.repo import TINY, script_env

ARGS = ["--max_epoch", "9", "--batch_sz", "8", "--log_every", "1", "--eval_every", "4",
        "--checkpoint_every", "3", "--save_every", "1000", "--progress", "off"]
TRAIN_KEYS = {"fit": "train/fit", "reg": "train/reg", "orth": "train/orth", "acc": "train/acc",
              "lr": "train/lr", "images_per_sec": "train/images_per_sec"}


def _run(binary_dir, model_file, fault=None, args=()):
    env = script_env()
    env.pop("SPHERENET_FAULT", None)
    if fault:
        env["SPHERENET_FAULT"] = fault
    cmd = [sys.executable, TINY, "--data_path", binary_dir, "--model_file", str(model_file),
           *ARGS, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _events(folder):
    """[(tag, step, value)] of every scalar event in every event file of `folder`."""
    out = []
    for path in glob.glob(str(folder / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                out.append((v.tag, event.step, float(tf.make_ndarray(v.tensor))))
    return out


def _expected(folder):
    """[(tag, step, value)] that metrics.jsonl says the events must hold."""
    out = []
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, tag in TRAIN_KEYS.items():
            if key in record:
                out.append((tag, record["iteration"], float(np.float32(record[key]))))
        if "test_acc" in record:
            out.append(("test/acc", record["iteration"], float(np.float32(record["test_acc"]))))
    return out


def _check_one_value_each(folder):
    events = _events(folder)
    counts = collections.Counter((tag, step) for tag, step, _ in events)
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    assert sorted(events) == sorted(_expected(folder))
    return events


@pytest.mark.slow
def test_events_hold_the_values_of_metrics_jsonl(binary_dir, tmp_path):
    run = _run(binary_dir, tmp_path / "run")
    assert run.returncode == 0, run.stderr[-3000:]
    events = _check_one_value_each(tmp_path / "run")
    tags = {tag for tag, _, _ in events}
    assert tags == set(TRAIN_KEYS.values()) | {"test/acc"}
    assert sorted(step for tag, step, _ in events if tag == "train/fit") == list(range(1, 10))
    assert sorted(step for tag, step, _ in events if tag == "test/acc") == [4, 8]
    assert {value for tag, _, value in events if tag == "train/lr"} == {float(np.float32(1e-3))}
    assert all(value > 0 for tag, _, value in events if tag == "train/images_per_sec")


@pytest.mark.slow
def test_a_killed_and_resumed_run_has_one_value_per_logged_iteration(binary_dir, tmp_path):
    """Killed after the step of iteration 8, the run has logged 1..7 and checkpointed 6;
    resumed, it redoes 7.. and the events hold each iteration once (7 is the value
    logged again, equal to metrics.jsonl's)."""
    folder = tmp_path / "run"
    killed = _run(binary_dir, folder, fault="step@8")
    assert killed.returncode == -9, killed.stderr[-3000:]
    before = _events(folder)
    assert max(step for tag, step, _ in before if tag == "train/fit") == 7
    resumed = _run(binary_dir, folder)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at iteration 7" in resumed.stderr
    events = _check_one_value_each(folder)
    assert sorted(step for tag, step, _ in events if tag == "train/fit") == list(range(1, 10))
    # the values logged before the kill are kept as they were
    kept = {(tag, step): value for tag, step, value in events}
    for tag, step, value in before:
        if step <= 6:
            assert kept[(tag, step)] == value, (tag, step)


def test_a_kill_after_more_steps_than_the_checkpoint_drops_their_values(tmp_path):
    """A run killed at iteration 8 logged 7 and 8 after its checkpoint of 6: resuming at
    7 drops them (they will be logged again), keeping 1..6."""
    from spherenet_tf.training.events import EventLog

    log = EventLog(str(tmp_path))
    for i in range(1, 9):
        log.scalars(i, {"train/fit": float(i)})
    log.close()
    EventLog(str(tmp_path)).truncate_after(6)
    assert sorted(_events(tmp_path)) == [("train/fit", i, float(i)) for i in range(1, 7)]


@pytest.mark.slow
def test_tensorboard_off_writes_no_events(binary_dir, tmp_path):
    run = _run(binary_dir, tmp_path / "run", args=["--tensorboard", "off", "--max_epoch", "2"])
    assert run.returncode == 0, run.stderr[-3000:]
    assert not glob.glob(str(tmp_path / "run" / "events.out.tfevents.*"))
    assert (tmp_path / "run" / "metrics.jsonl").exists()
