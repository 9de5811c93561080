"""reproduce.py: the README's eight rows planned over 0, 1, 2 and 8 GPUs, scheduled one run
per device, resumed after the scheduler is killed, a failing run retried once and
reported, and the comparison table with the original's logs.

The rows must be the README's (its Results table, read here as text: scripts, best and
final accuracies of the original).  Scheduling is checked with a stand-in script that
records its CUDA_VISIBLE_DEVICES and times; the kill, the resume, the failure and the
report run the real training scripts on tiny data (binary CIFAR files of 20 images,
batch 4, 9 iterations).
"""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from support.fake_cifar import TRAIN_FILES, records, synthetic_images
from support.lines import TEST_LINE, iterations
from support.repo import REPO, load_module, script_env
from spherenet_tf import reproduce as rp
from spherenet_tf.cifar10_input import TEST_FILE

#: Tiny settings for every real run: 0..8, a resume checkpoint after iteration 4 (and 8).
LAST = 8
TINY = ["--max_epoch", str(LAST), "--batch_sz", "4", "--batch_test", "20", "--log_every", "2",
        "--eval_every", "2", "--checkpoint_every", "4", "--save_every", "1000", "--progress", "off",
        "--tensorboard", "off"]
KILL_ROWS = ["cnn9", "spherenet9_linear"]


@pytest.fixture(scope="module")
def script():
    return load_module("reproduce.py")


def readme_rows():
    """The README's Results table: run title -> (script path from the root, best, at 64k)."""
    table = {}
    for line in (REPO / "README.md").read_text().splitlines():
        m = re.match(r"^\| (.+?) \| `(?:cd (\S+) && )?python (\S+)` \| ([\d.]+) \| ([\d.]+) \|$", line)
        if m:
            title, folder, file, best, final = m.groups()
            table[title] = (f"{folder}/{file}" if folder else file, float(best), float(final))
    return table


def test_the_rows_are_the_readmes_eight(script, capsys):
    readme = readme_rows()
    assert len(readme) == 8 and [row.title for row in script.ROWS] == list(readme)
    runs = rp.Runs(repo=str(REPO))
    for row in script.ROWS:
        assert runs.command(row) == ["python", readme[row.title][0], "--model_file", f"runs/{row.name}/"]
        assert (REPO / row.script).exists() and (REPO / row.original_log).exists()
    page = (REPO / "docs" / "reproducing.md").read_text()
    docs = re.findall(r"^\| `(\w+)` \| `(python .+)` \|$", page, re.M)
    assert docs == [(row.name, " ".join(runs.command(row))) for row in script.ROWS]
    # --dry_run on this CPU machine: the eight rows, one at a time, with their commands
    assert rp.main(script.ROWS, None, str(REPO), ["--dry_run", "--devices", "", "--runs_dir",
                                                   "never_written"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("8 of 8 run(s) to do on the CPU, one run at a time;")
    for k, (line, row) in enumerate(zip(out[1:], script.ROWS)):
        assert line.split()[:4] == ["wave", str(k + 1), "CPU", row.name]
        assert line.endswith(f"python {readme[row.title][0]} --model_file never_written/{row.name}/")
    assert not (REPO / "never_written").exists()
    assert rp.main(script.ROWS, None, str(REPO), ["--rows", "cnn9,spherenet_linear"]) == 2
    assert ("error: --rows: no row named 'spherenet_linear' (did you mean 'spherenet9_linear'?); "
            "the rows are cnn9, ") in capsys.readouterr().err


@pytest.mark.parametrize("devices, places, waves", [
    ([], [None] * 8, [1, 2, 3, 4, 5, 6, 7, 8]),
    (["0"], ["0"] * 8, [1, 2, 3, 4, 5, 6, 7, 8]),
    (["0", "1"], ["0", "1"] * 4, [1, 1, 2, 2, 3, 3, 4, 4]),
    ([str(k) for k in range(8)], [str(k) for k in range(8)], [1] * 8),
])
def test_plan_over_0_1_2_and_8_devices(script, devices, places, waves):
    plan = rp.plan(script.ROWS, rp.slots(devices))
    assert [row.name for row, _, _ in plan] == [row.name for row in script.ROWS]
    assert [place for _, place, _ in plan] == places and [wave for _, _, wave in plan] == waves


def test_devices_and_gpus_per_run(tmp_path, monkeypatch):
    assert rp.slots([str(k) for k in range(8)], per_run_gpus=2) == ["0,1", "2,3", "4,5", "6,7"]
    assert rp.slots(["0", "1", "2"], per_run_gpus=2) == ["0,1"]  # the third stays idle
    with pytest.raises(rp.ReproduceError, match=r"--per_run_gpus 3 but 2 GPU\(s\) are visible \(0,1\)"):
        rp.slots(["0", "1"], per_run_gpus=3)
    assert rp.visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 5"}) == ["2", "5"]
    assert rp.visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert rp.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    fake = tmp_path / "nvidia-smi"  # no CUDA_VISIBLE_DEVICES: the GPUs nvidia-smi -L lists
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\n"
                    "echo 'GPU 1: NVIDIA H100 (UUID: GPU-b)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert rp.visible_gpus({}) == ["0", "1"]
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    assert rp.visible_gpus({}) == []


STAND_IN = """import json, os, sys, time
model_file = sys.argv[sys.argv.index("--model_file") + 1]
start = time.time()
time.sleep(1.0)
with open(os.path.join(model_file, "stand_in.json"), "w") as f:
    json.dump({"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time(),
               "cwd": os.getcwd()}, f)
open(os.path.join(model_file, "final.keras"), "w").close()
"""


def _stand_in_rows(tmp_path, names):
    path = tmp_path / "stand_in.py"
    path.write_text(STAND_IN)
    return [rp.Row(name, name, str(path), "results/baseline_training.log") for name in names]


def test_two_runs_on_two_devices_at_once_then_skipped(tmp_path):
    rows = _stand_in_rows(tmp_path, ["a", "b"])
    runs = rp.Runs(repo=str(REPO), runs_dir=str(tmp_path / "runs"))
    out = io.StringIO()
    assert rp.run_all(runs, rows, rp.slots(["3", "5"]), out=out, poll=0.05) == {}
    seen = {row.name: json.loads((tmp_path / "runs" / row.name / "stand_in.json").read_text())
            for row in rows}
    assert {seen["a"]["cuda"], seen["b"]["cuda"]} == {"3", "5"}  # each its own GPU
    assert max(s["start"] for s in seen.values()) < min(s["end"] for s in seen.values())  # side by side
    assert all(s["cwd"] == str(REPO) for s in seen.values())
    for row in rows:
        assert runs.finished(row) and runs.state(row) == "finished"
    # started again: both finished, nothing runs
    out = io.StringIO()
    assert rp.run_all(runs, rows, rp.slots(["3", "5"]), out=out, poll=0.05) == {}
    assert "started" not in out.getvalue() and out.getvalue().count("finished (skipped)") == 2
    assert all((tmp_path / "runs" / n / "run.log").read_text().count("==== reproduce.py") == 1 for n in "ab")


def _tiny_cifar(path, corrupt=False):
    rng = np.random.RandomState(0)
    path.mkdir()
    for name in TRAIN_FILES + [TEST_FILE]:
        labels = rng.randint(0, 10, 20)
        data = records(synthetic_images(labels, len(name)), labels)
        (path / name).write_bytes(data[:-100] if corrupt and name == TEST_FILE else data)
    return str(path)


@pytest.mark.slow
def test_a_failing_run_is_retried_once_then_reported_while_the_other_completes(tmp_path):
    bad_data = _tiny_cifar(tmp_path / "bad_data", corrupt=True)
    bad = rp.Row("bad", "bad", "baseline/train_baseline.py", "results/baseline_training.log",
                 args=("--data_path", bad_data, *TINY))
    rows = [bad] + _stand_in_rows(tmp_path, ["good"])
    runs = rp.Runs(repo=str(REPO), runs_dir=str(tmp_path / "runs"))
    out = io.StringIO()
    failed = rp.run_all(runs, rows, rp.slots(["0", "1"]), out=out, poll=0.1)
    assert list(failed) == ["bad"] and runs.finished(rows[1]) and not runs.finished(bad)
    log = (tmp_path / "runs" / "bad" / "run.log").read_text()
    assert log.count("==== reproduce.py") == 2 and "attempt 2 of 2" in log
    expected = f"error: {bad_data}/{TEST_FILE} is truncated or not a CIFAR-10 binary file"
    assert log.count(expected) == 2 and any(line.startswith(expected) for line in failed["bad"])
    text = out.getvalue()
    assert "bad: exited with 2; starting it again (it resumes)" in text
    assert "bad: failed again (exit 2)" in text


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """reproduce.py on two rows, SIGKILLed while the second runs, then started again."""
    tmp = tmp_path_factory.mktemp("reproduce")
    data = _tiny_cifar(tmp / "data")
    runs = tmp / "runs"
    cmd = [sys.executable, str(REPO / "reproduce.py"), "--rows", ",".join(KILL_ROWS), "--devices", "",
           "--runs_dir", str(runs), "--poll", "0.2", "--", "--data_path", data, *TINY]
    first = subprocess.Popen(cmd, cwd=tmp, env=script_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    second_resume = runs / KILL_ROWS[1] / "resume"
    try:
        deadline = time.time() + 300
        while not list(second_resume.glob("ckpt-*.index")) and first.poll() is None:
            assert time.time() < deadline, "the second run wrote no checkpoint in 300 s"
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)  # the scheduler only: its run must die with it
        first.wait()
        for _ in range(100):  # the run's process is in the scheduler's session: gone?
            try:
                os.killpg(first.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the training run outlived the killed scheduler")
    finally:
        try:
            os.killpg(first.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    before = {name: {f: (runs / name / f).read_text() for f in ("training.log", "metrics.jsonl", "run.log")}
              for name in KILL_ROWS}
    checkpoints = sorted(int(p.name[5:-6]) for p in second_resume.glob("ckpt-*.index"))
    again = subprocess.run(cmd, cwd=tmp, env=script_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    return {"runs": runs, "before": before, "checkpoints": checkpoints, "out": again.stdout}


@pytest.mark.slow
def test_killed_then_started_again_skips_the_finished_run_and_resumes_the_other(killed_and_resumed):
    runs, before = killed_and_resumed["runs"], killed_and_resumed["before"]
    first, second = (runs / name for name in KILL_ROWS)
    out = killed_and_resumed["out"]
    # the finished run is not started again: its files are as they were
    assert f"{KILL_ROWS[0]}: started" not in out and "finished (skipped)" in out
    for f in ("training.log", "metrics.jsonl", "run.log"):
        assert (first / f).read_text() == before[KILL_ROWS[0]][f]
    assert iterations((first / "training.log").read_text(), TEST_LINE) == list(range(2, LAST + 1, 2))
    # the other continues from its newest checkpoint, not from iteration 0
    resumed_at = killed_and_resumed["checkpoints"][-1]
    assert 0 < resumed_at < LAST
    assert f"{KILL_ROWS[1]}: started on CPU (resume at {resumed_at}), attempt 1" in out
    run_log = (second / "run.log").read_text()
    assert run_log.count("==== reproduce.py") == 2
    assert f"resuming at iteration {resumed_at} of 0..{LAST}" in run_log.split("==== reproduce.py")[-1]
    # its log reads as one run: the lines before the checkpoint are those written before the kill
    log = (second / "training.log").read_text()
    assert iterations(log, TEST_LINE) == list(range(2, LAST + 1, 2))
    kept = [line for line in before[KILL_ROWS[1]]["training.log"].splitlines()
            if int(re.search(r"iteration_(\d+)", line).group(1)) < resumed_at]
    assert kept and log.splitlines()[:len(kept)] == kept
    def times(text):
        return {m["iteration"]: m["time"] for m in map(json.loads, text.splitlines())}

    now, then = times((second / "metrics.jsonl").read_text()), times(before[KILL_ROWS[1]]["metrics.jsonl"])
    assert all(now[i] == then[i] for i in then if i < resumed_at)  # not redone


@pytest.mark.slow
def test_the_report_table_reads_back_as_the_runs_logs_and_the_originals(script, killed_and_resumed):
    runs, out = killed_and_resumed["runs"], killed_and_resumed["out"]
    readme = readme_rows()
    table = (runs / "report.md").read_text()
    assert table in out + "\n"  # printed at the end, as written
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    assert [r[0] for r in rows] == KILL_ROWS
    by_name = {row.name: row for row in script.ROWS}
    for r in rows:
        text = (runs / r[0] / "training.log").read_text()
        accs = {int(m.group(1)): float(m.group(2)) * 100
                for m in re.finditer(r"^\+\+\+\+iteration_(\d+): test acc=(\d\.\d{4})$", text, re.M)}
        best = max(accs.values())
        first_best = min(i for i, a in accs.items() if a == best)
        _, original_best, original_final = readme[by_name[r[0]].title]
        final = accs[LAST]
        assert r[1:5] == [f"{best:.2f}", str(first_best), f"{original_best:.2f}",
                          f"{best - original_best:+.2f}"]
        assert r[5:9] == [f"{final:.2f}", str(LAST), f"{original_final:.2f}",
                          f"{final - original_final:+.2f}"]
        assert r[9] == ("**yes**" if original_best - best > 0.5 else "")
        png = runs / r[0] / "comparison.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    # --report alone, at any time: the same table again
    again = io.StringIO()
    assert rp.main(script.ROWS, load_module("compare_runs.py"), str(REPO),
                   ["--report", "--rows", ",".join(KILL_ROWS), "--runs_dir", str(runs)], out=again) == 0
    assert again.getvalue().startswith(table)
