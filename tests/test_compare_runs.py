"""compare_runs.py: logs in the original's format -> table and convergence figure.

The original's own logs (results/*.log and sphere_resnet/results/*.log, copied from the
original repository) must
give the numbers of the original README (REFERENCE.md, "Reported results"); a short
run of this port's training loop must read back as its full-precision metrics.
"""

import json
import os

import numpy as np
import pytest

from support.repo import REPO, load_module
from support.fake_cifar import synthetic_images
from support.runs import script_trainer
from spherenet_tf.training import Settings

# The original README's table: log -> (best test accuracy %, accuracy % at iteration 64000)
ORIGINAL_README = {
    "results/baseline_training.log": (90.86, 90.61),
    "results/spherenet_cos_standard_training.log": (91.31, 91.29),
    "results/spherenet_linear_standard_training.log": (91.65, 91.16),
    "results/spherenet_sigmoid_standard_training.log": (91.81, 91.40),
    "results/spherenet_lr_sigmoid_standard_training.log": (91.66, 91.32),
    "results/spherenet_cos_wnsoftmax_training.log": (91.44, 91.22),
    "sphere_resnet/results/baseline_resnet.log": (93.09, 92.99),
    "sphere_resnet/results/linear_sphereconv_resnet.log": (94.68, 94.63),
}
RESULTS = REPO / "results"
RESNET_RESULTS = REPO / "sphere_resnet" / "results"


@pytest.fixture(scope="module")
def compare():
    return load_module("compare_runs.py")


def reference_logs():
    return [REPO / name for name in ORIGINAL_README]


def test_table_reproduces_the_original_readme(compare, capsys, tmp_path):
    paths = reference_logs()
    for path, (best, at_64k) in zip(paths, ORIGINAL_README.values()):
        run = compare.parse_log(str(path))
        summary = compare.summarize(run)
        assert round(summary["best"][0] * 100, 2) == best, path.name
        assert summary["last"] == (pytest.approx(at_64k / 100), 64000), path.name
        assert len(run.test) == 128 and len(run.train) == 640 and run.skipped == 0
        # REFERENCE.md: SphereNets pass 80 % after 3-4.5k iterations, the baseline CNN after 11.5k
        reach80 = summary["reach"][0.80]
        if path.name == "baseline_training.log":
            assert reach80 == 11500
        elif path.name.startswith("spherenet_"):
            assert 3000 <= reach80 <= 4500
        assert all(acc < 0.80 for it, acc in run.test if it < reach80)
    out_png = tmp_path / "original.png"
    assert compare.main([str(RESULTS), str(RESNET_RESULTS),
                         "--out", str(out_png)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["run", "best", "%"] and len(table) == 2 + 8
    rows = {row.split()[0]: row.split() for row in table[2:]}
    for name, (best, at_64k) in ORIGINAL_README.items():
        row = rows[os.path.splitext(os.path.basename(name))[0]]
        assert (row[1], row[3], row[4]) == (f"{best:.2f}", f"{at_64k:.2f}", "64000")
    _check_png(out_png)


def _check_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 400 and image.shape[1] > 1200
    assert image[..., :3].std() > 0.05  # not blank


def test_logs_without_a_final_newline_and_other_lines(compare, tmp_path):
    """The original's logs end without a newline; saved terminal output has other lines,
    blank lines and Windows line ends; a restarted run appends from its restart point."""
    text = "\r\n".join([
        "2017-08-01 12:00:00 I tensorflow/core/...: Found device 0",
        "====iteration_100: fit=1.4002, reg=0.4845, orth=0.4476, acc=0.5078",
        "",
        "====iteration_200: fit=1.2340, reg=0.4622, orth=0.3472, acc=0.6016",
        "++++iteration_200: test acc=0.8100",
        "   ",
        "====iteration_300: fit=1.0207, reg=0.4393, orth=0.2859, acc=0.6953",
        "++++iteration_300: test acc=0.7000",
        "Traceback (most recent call last):",
        "====iteration_300: fit=0.9000, reg=0.4000, orth=0.2000, acc=0.7000",  # restarted at 300
        "++++iteration_300: test acc=0.9000",
        "====iteration_400: fit=nan, reg=0.4168, acc=0.7422",  # a baseline-style line
        "++++iteration_400: test acc=0.9000",
    ])  # no final newline
    path = tmp_path / "session.txt"
    path.write_bytes(text.encode())
    run = compare.parse_log(str(path))
    assert run.skipped == 2 and run.label == "session"
    assert [r[0] for r in run.train] == [100, 200, 300, 400]
    assert run.train[2] == (300, 0.9, 0.4, 0.2, 0.7)
    assert run.train[3][1] != run.train[3][1] and run.train[3][3] is None  # nan fit, no orth
    assert run.test == [(200, 0.81), (300, 0.9), (400, 0.9)]
    s = compare.summarize(run)
    assert s["best"] == (0.9, 300) and s["last"] == (0.9, 400)
    assert s["reach"] == {0.80: 200, 0.85: 300, 0.90: 300}


def test_unreadable_inputs_are_refused_clearly(compare, tmp_path, capsys):
    (tmp_path / "empty_dir").mkdir()
    binary = tmp_path / "model.data"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    other = tmp_path / "notes.log"
    other.write_text("hello\nworld")
    good = tmp_path / "good.log"
    good.write_text("++++iteration_500: test acc=0.5000")
    cases = [
        ([str(tmp_path / "nope.log")], f"error: cannot read {tmp_path}/nope.log: No such file or directory"),
        ([str(tmp_path / "empty_dir")], "is a folder without *.log files"),
        ([str(binary)], "is not a text file (it contains NUL bytes)"),
        ([str(other)], "holds no line of the original's log format ('====iteration_N: fit=..., "
                       "reg=..., acc=...' or '++++iteration_N: test acc=...'); 2 other non-empty line(s)"),
        ([str(good), "--label", "a", "--label", "b"], "2 --label for 1 logs"),
    ]
    for argv, message in cases:
        assert compare.main(argv + ["--no_plot"]) == 2
        assert message in capsys.readouterr().err, message
    with pytest.raises(SystemExit):
        compare.main([str(good), "--thresholds", "80,abc"])
    assert "expected percentages like 80,85,90, got '80,abc'" in capsys.readouterr().err


def _synthetic(n_train=40, n_test=20):
    labels = (np.arange(n_train) % 10).astype(np.int32)
    test_labels = (np.arange(n_test) % 10).astype(np.int32)
    return ((synthetic_images(labels, 0), labels), (synthetic_images(test_labels, 1), test_labels))


def test_a_short_port_run_reads_back_as_its_metrics(compare, tmp_path, capsys):
    module = load_module("train_spherenet.py")
    run_dir = tmp_path / "port_run"
    s = Settings(max_epoch=4, batch_sz=4, batch_test=10, log_every=1, eval_every=2,
                 save_every=1000, checkpoint_every=1000, model_file=str(run_dir) + "/",
                 progress="off")
    script_trainer(s, module.build_model, data=_synthetic()).fit()
    capsys.readouterr()
    run = compare.parse_log(str(run_dir / "training.log"))
    assert run.label == "port_run"  # 'training' says nothing: the folder names the run
    metrics = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if "fit" in m]
    test = [m for m in metrics if "test_acc" in m]
    assert [r[0] for r in run.train] == [m["iteration"] for m in train] == [1, 2, 3, 4]
    for row, m in zip(run.train, train):  # the log's 4 decimals of the full-precision values
        assert row[1:] == tuple(float(f"{m[k]:.4f}") for k in ("fit", "reg", "orth", "acc"))
    assert run.test == [(m["iteration"], float(f"{m['test_acc']:.4f}")) for m in test]
    best = max(m["test_acc"] for m in test)
    summary = compare.summarize(run)
    assert summary["best"][0] == float(f"{best:.4f}") and summary["last"][1] == 4

    reference = RESULTS / "spherenet_cos_standard_training.log"
    logs = [str(run_dir / "training.log"), str(reference)]
    out_png = tmp_path / "port_vs_original.png"
    labels = ["port (4 iterations)", "original cosine"]
    argv = logs + ["--out", str(out_png), "--smooth", "1"] + [a for l in labels for a in ("--label", l)]
    assert compare.main(argv) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[2].startswith("port (4 iterations)")
    _check_png(out_png)
