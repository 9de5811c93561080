"""Interrupted runs: real training processes killed with SIGKILL at several points
(between steps, while a checkpoint is being written, after it is renamed into place
but before the state file names it, a checkpoint torn by a lost machine) restart
with the same command and end with weights identical, bit for bit, to an
uninterrupted run; two workers on localhost (MultiWorkerMirroredStrategy, CPU)
compute what one process computes, and resume after one of them dies.

The kills are deterministic: SPHERENET_FAULT, read by tests/support/tiny_train.py
(which patches the kill points in; nothing of them is in spherenet_tf), makes the
process SIGKILL itself at a named point.  Runs use tests/support/tiny_train.py
(the shared training loop on a SphereNet-9 of widths 8, 8, 16).
"""

import json
import signal
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from support.repo import REPORT, TINY, script_env
from support.tolerances import FIRST_STEP_TOL, LATER_TOL
from spherenet_tf.training.resume import verify

ARGS = ["--max_epoch", "12", "--batch_sz", "8", "--log_every", "1", "--eval_every", "1000",
        "--checkpoint_every", "3", "--save_every", "1000", "--progress", "off", "--deterministic"]
FIGURES = {}
REPORT["interrupted runs"] = lambda: "; ".join(f"{k}: {v}" for k, v in FIGURES.items())


def _run(binary_dir, model_file, fault=None, env_extra=None, args=(), wait=True):
    env = script_env()
    env.pop("SPHERENET_FAULT", None)
    if fault:
        env["SPHERENET_FAULT"] = fault
    env.update(env_extra or {})
    cmd = [sys.executable, TINY, "--data_path", binary_dir, "--model_file", str(model_file)]
    cmd += ARGS + list(args)
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _weights(path):
    return keras.models.load_model(path).get_weights()


def _checkpoint_tensors(prefix):
    reader = tf.train.load_checkpoint(str(prefix))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if not k.startswith("save_counter")}


def _assert_identical(run_a, run_b):
    """final.keras weights and the last resume checkpoint (model, BN statistics, Adam
    slots, iteration counter) equal bit for bit; returns the number of values compared."""
    wa, wb = _weights(run_a / "final.keras"), _weights(run_b / "final.keras")
    assert len(wa) == len(wb)
    for a, b in zip(wa, wb):
        np.testing.assert_array_equal(a, b)
    ca, cb = (_checkpoint_tensors(r / "resume" / "ckpt-13") for r in (run_a, run_b))
    assert sorted(ca) == sorted(cb)
    for key in ca:
        np.testing.assert_array_equal(ca[key], cb[key], err_msg=key)
    return sum(a.size for a in wa) + sum(np.size(v) for v in ca.values())


@pytest.fixture(scope="module")
def reference(binary_dir, tmp_path_factory):
    """One uninterrupted single-process run: 13 iterations (0..12), checkpoints every 3."""
    model_file = tmp_path_factory.mktemp("reference") / "run"
    out = _run(binary_dir, model_file)
    assert out.returncode == 0, out.stderr[-3000:]
    return model_file


@pytest.mark.slow
def test_killed_runs_resume_to_identical_weights(binary_dir, reference, tmp_path, capsys):
    run = tmp_path / "run"
    resume = run / "resume"
    kills = 0

    def killed(fault):
        nonlocal kills
        out = _run(binary_dir, run, fault)
        assert out.returncode == -signal.SIGKILL, (fault, out.returncode, out.stderr[-3000:])
        kills += 1
        return out

    # 1. between two steps, after iteration 4 (checkpoint ckpt-4 was saved after iteration 3)
    killed("step@4")
    assert sorted(p.name for p in resume.glob("ckpt-*.index")) == ["ckpt-4.index"]
    # 2. while checkpoint 7 is being written: its files exist under a temporary name only
    out = killed("save_written@7")
    assert "resuming at iteration 4" in out.stderr
    assert list(resume.glob(".ckpt-7.partial*")) and not (resume / "ckpt-7.index").exists()
    verify(str(resume / "ckpt-4"))  # the previous one is intact
    # 3. after checkpoint 10 is renamed into place, before the state file names it
    out = killed("save_published@10")
    assert "resuming at iteration 4" in out.stderr
    assert not list(resume.glob(".ckpt-*.partial*"))  # the torn save was cleaned up
    assert 'model_checkpoint_path: "ckpt-7"' in (resume / "checkpoint").read_text()
    assert (resume / "ckpt-10.index").exists()
    # 4. a lost machine: the newest checkpoint's data never reached the disk
    data = next(resume.glob("ckpt-10.data-*"))
    data.write_bytes(data.read_bytes()[:100])
    out = _run(binary_dir, run)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resume checkpoint {resume / 'ckpt-10'} is unreadable" in out.stderr
    assert f"falling back to the one before it, {resume / 'ckpt-7'}" in out.stderr
    assert "resuming at iteration 7" in out.stderr

    values = _assert_identical(reference, run)
    # the log reads as one uninterrupted run, line for line, with the same full-precision values
    assert (run / "training.log").read_text() == (reference / "training.log").read_text()
    assert _metrics(run, timeless=True) == _metrics(reference, timeless=True)
    FIGURES["single process"] = (f"{kills} SIGKILLs + 1 torn checkpoint survived, final weights and "
                                 f"last checkpoint identical to the uninterrupted run ({values} values, "
                                 "max difference 0)")


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _two_workers(binary_dir, model_file, fault_worker1=None, args=()):
    """Start two workers of one cluster on localhost; returns their completed processes."""
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for index in (0, 1):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(_run(binary_dir, model_file, fault_worker1 if index == 1 else None,
                          {"TF_CONFIG": tf_config}, ["--strategy", "multi_worker", *args], wait=False))
    results = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return results


def _metrics(model_file, timeless=False):
    records = [json.loads(line) for line in (model_file / "metrics.jsonl").read_text().splitlines()]
    return ([{k: v for k, v in r.items() if k not in ("time", "images_per_sec")} for r in records]
            if timeless else records)


@pytest.mark.slow
def test_two_workers_match_one_process_and_resume_after_a_worker_dies(binary_dir, reference, tmp_path):
    """MultiWorkerMirroredStrategy, two processes on localhost: each computes half of the
    global batch of 8; BN statistics and gradients are all-reduced.

    Tolerance: the first step differs from one process only by summation order; Adam's
    sign-like early steps amplify that: the tolerances of two replicas in one process
    (support/tolerances.py, with the measured spread).  A killed and resumed
    cluster run equals the uninterrupted one bit for bit.
    """
    whole = tmp_path / "whole"
    w0, w1 = _two_workers(binary_dir, whole)
    assert w0.returncode == 0 and w1.returncode == 0, (w0.stderr[-2000:], w1.stderr[-2000:])
    assert "CollectiveAllReduceStrategy with 2 replica(s)" in w0.stderr
    # the chief prints and logs the original's lines; the other worker stays silent
    assert w0.stdout == (whole / "training.log").read_text() and w1.stdout == ""
    assert w0.stdout.splitlines()[0].startswith("====iteration_1: fit=")
    names = sorted(p.name for p in whole.iterdir())
    # TensorBoard events: one file, from the chief; worker 1 writes none (not even in its own folder)
    events = [n for n in names if n.startswith("events.out.tfevents.")]
    assert len(events) == 1 and not any(p.name.startswith("events.out") for p in (whole / ".worker-1").rglob("*"))
    assert [n for n in names if n not in events] == [
        ".worker-1", "final.keras", "metrics.jsonl", "resume", "settings.json", "training.log"]
    one, two = _metrics(reference), _metrics(whole)
    assert [m["iteration"] for m in one] == [m["iteration"] for m in two] == list(range(1, 13))
    worst = 0.0
    for a, b in zip(one, two):
        for key in ("fit", "reg", "orth"):
            rel = abs(b[key] - a[key]) / abs(a[key])
            worst = max(worst, rel)
            assert rel <= (FIRST_STEP_TOL if a["iteration"] == 1 else LATER_TOL), (a["iteration"], key, a[key], b[key])
        assert abs(b["acc"] - a["acc"]) <= 1 / 8

    # worker 1 dies (SIGKILL) after iteration 5; worker 0 stops with a clear error
    run = tmp_path / "killed"
    w0, w1 = _two_workers(binary_dir, run, fault_worker1="step@5")
    assert w1.returncode == -signal.SIGKILL
    assert w0.returncode == 75, w0.stderr[-3000:]
    assert "error: worker 0 lost contact with another worker" in w0.stderr
    assert "start every worker again with the same command" in w0.stderr
    # both started again with the same command: they resume from ckpt-4 and finish
    w0, w1 = _two_workers(binary_dir, run)
    assert w0.returncode == 0 and w1.returncode == 0, (w0.stderr[-2000:], w1.stderr[-2000:])
    assert "resuming at iteration 4" in w0.stderr
    _assert_identical(whole, run)
    assert (run / "training.log").read_text() == (whole / "training.log").read_text()
    FIGURES["two workers"] = (f"losses within {worst:.2g} (relative) of one process; after worker 1 "
                              "was killed, worker 0 exited 75 and the restarted pair ended identical "
                              "to the uninterrupted pair")
