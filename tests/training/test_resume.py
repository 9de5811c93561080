"""Resume checkpoints (spherenet_tf/resume.py and Trainer.restore_resume_state):
crash-safe writing, fallback past damaged checkpoints, refusal of another model's
checkpoint or of other settings, and the stop on NaN that keeps the last good one.

Killed processes are tested in test_interruptions.py; these run in-process.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from support.fake_cifar import synthetic_images
from spherenet_tf.models import build_cnn9
from spherenet_tf.training.resume import CheckpointUnreadable, ResumeCheckpoints
from support.runs import script_trainer
from spherenet_tf.training import SETTINGS_FILE, RunLog, Settings, TrainingError


# ---------------------------------------------------------------------------
# ResumeCheckpoints on its own
# ---------------------------------------------------------------------------
def _store(tmp_path, size=50_000):
    v = tf.Variable(np.arange(size, dtype=np.float32))
    return v, ResumeCheckpoints(tf.train.Checkpoint(v=v), str(tmp_path / "resume"))


def test_saves_keep_the_previous_checkpoint_and_a_readable_state(tmp_path):
    v, store = _store(tmp_path)
    for n in (3, 6, 9):
        v.assign(np.full(v.shape, n, np.float32))
        store.save(n)
    folder = tmp_path / "resume"
    assert sorted(p.name for p in folder.iterdir()) == [
        "checkpoint", "ckpt-6.data-00000-of-00001", "ckpt-6.index",
        "ckpt-9.data-00000-of-00001", "ckpt-9.index"]
    assert tf.train.latest_checkpoint(str(folder)) == str(folder / "ckpt-9")  # TF's own reader
    # leftovers of a save killed half-way are removed by the next one
    (folder / ".ckpt-12.partial.index").write_bytes(b"half")
    (folder / ".ckpt-12.partial_temp").mkdir()
    v.assign(np.full(v.shape, 12, np.float32))
    store.save(12)
    assert not list(folder.glob(".ckpt-*"))
    v.assign(tf.zeros_like(v))
    prefix = store.latest_readable()
    tf.train.Checkpoint(v=v).read(prefix).assert_existing_objects_matched()
    assert prefix.endswith("ckpt-12") and float(v[0]) == 12.0


DAMAGES = {
    "flipped byte (CRC32C)": lambda p: _flip(p + ".data-00000-of-00001"),
    "truncated data": lambda p: _truncate(p + ".data-00000-of-00001", 1000),
    "empty data": lambda p: _truncate(p + ".data-00000-of-00001", 0),
    "missing data": lambda p: os.remove(p + ".data-00000-of-00001"),
    "garbage index": lambda p: open(p + ".index", "wb").write(b"not a table"),
}


def _flip(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _truncate(path, n):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:n])


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
    v, store = _store(tmp_path)
    for n in (3, 6):
        v.assign(np.full(v.shape, n, np.float32))
        store.save(n)
    newest = str(tmp_path / "resume" / "ckpt-6")
    DAMAGES[damage](newest)
    notes = []
    assert store.latest_readable(report=notes.append) == str(tmp_path / "resume" / "ckpt-3")
    assert len(notes) == 1 and notes[0].startswith(f"resume checkpoint {newest} is unreadable (")
    assert notes[0].endswith(f"falling back to the one before it, {tmp_path / 'resume' / 'ckpt-3'}")
    DAMAGES[damage](str(tmp_path / "resume" / "ckpt-3"))
    with pytest.raises(CheckpointUnreadable, match=r"ckpt-6: .*; .*ckpt-3: "):
        store.latest_readable()


def test_the_log_is_cut_back_to_the_resumed_iteration_and_drops_a_torn_line(tmp_path):
    lines = ["====iteration_5: fit=1.0000, reg=0.1000, orth=0.2000, acc=0.5000\n",
             "++++iteration_5: test acc=0.1000\n",
             "====iteration_10: fit=0.9000, reg=0.1000, orth=0.2000, acc=0.6000\n"]
    (tmp_path / "training.log").write_text("".join(lines))
    # a kill while writing iteration 15's record left '{"iteration": 1' behind
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 5, "fit": 1.0}\n{"iteration": 1')
    RunLog(str(tmp_path)).truncate_after(9)
    assert (tmp_path / "training.log").read_text() == "".join(lines[:2])
    assert (tmp_path / "metrics.jsonl").read_text() == '{"iteration": 5, "fit": 1.0}\n'


# ---------------------------------------------------------------------------
# Trainer: restore, another model, other settings
# ---------------------------------------------------------------------------
def _data(n_train=64, n_test=20):
    labels = (np.arange(n_train) % 10).astype(np.int32)
    test_labels = (np.arange(n_test) % 10).astype(np.int32)
    return ((synthetic_images(labels, 0), labels), (synthetic_images(test_labels, 1), test_labels))


def _tiny(widths=(8, 8, 16), name="tiny9"):
    return lambda s: build_cnn9(s.n_class, norm=s.norm, widths=widths, name=name)


def _settings(tmp_path, **kw):
    base = dict(max_epoch=12, batch_sz=8, batch_test=10, log_every=5, eval_every=1000,
                save_every=1000, checkpoint_every=5, model_file=str(tmp_path / "run") + "/",
                progress="off")
    base.update(kw)
    return Settings(**base)


def _trainer_with_checkpoints(tmp_path, numbers=(3, 6), widths=(8, 8, 16), name="tiny9", **kw):
    trainer = script_trainer(_settings(tmp_path, **kw), _tiny(widths, name), data=_data())
    for n in numbers:
        trainer.optimizer.iterations.assign(n)
        trainer.save_resume_checkpoint()
    return trainer


def test_trainer_resumes_from_the_newest_readable_checkpoint(tmp_path, capsys):
    first = _trainer_with_checkpoints(tmp_path)
    saved = first.model.get_layer("conv2_0").kernel.numpy()
    _truncate(str(tmp_path / "run" / "resume" / "ckpt-6.data-00000-of-00001"), 10)
    again = script_trainer(_settings(tmp_path), _tiny(), data=_data())
    assert again.restore_resume_state() == 3
    np.testing.assert_array_equal(again.model.get_layer("conv2_0").kernel.numpy(), saved)
    assert "ckpt-6 is unreadable" in capsys.readouterr().err

    _truncate(str(tmp_path / "run" / "resume" / "ckpt-3.data-00000-of-00001"), 10)
    with pytest.raises(TrainingError, match=r"no resume checkpoint in .*resume can be read \(.*ckpt-6: "
                                            r".*ckpt-3: .*\)\. They were damaged .* Start over with "
                                            r"--restart \(deletes them\), or use another --model_file\."):
        script_trainer(_settings(tmp_path), _tiny(), data=_data()).restore_resume_state()


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    _trainer_with_checkpoints(tmp_path, numbers=(3,), widths=(8, 8, 16))
    other = script_trainer(_settings(tmp_path), _tiny(widths=(8, 8, 8)), data=_data())
    with pytest.raises(TrainingError, match=r"resume checkpoint .*ckpt-3 does not fit the model 'tiny9' "
                                            r"\(.*shape.*\): it was written by another model or other "
                                            r"settings\. Use another --model_file, or --restart"):
        other.restore_resume_state()


def test_other_settings_are_refused_with_the_differences(tmp_path):
    trainer = _trainer_with_checkpoints(tmp_path, numbers=(3,), name="tiny_a")
    (tmp_path / "run" / SETTINGS_FILE).write_text(json.dumps(trainer.settings_record()))
    other = script_trainer(_settings(tmp_path, lr=1e-4), _tiny(name="tiny_b"), data=_data())
    with pytest.raises(TrainingError, match=r"holds a run with other settings \(model: 'tiny_a' then, "
                                            r"'tiny_b' now; lr: 0\.001 then, 0\.0001 now\), so it cannot "
                                            r"be resumed with these\. Use another --model_file, or "
                                            r"--restart"):
        other.restore_resume_state()
    # --restart starts over and deletes the old checkpoints
    restarted = script_trainer(_settings(tmp_path, lr=1e-4, restart=True), _tiny(name="tiny_b"), data=_data())
    assert restarted.restore_resume_state() == 0
    assert not list((tmp_path / "run" / "resume").glob("ckpt-*"))


# ---------------------------------------------------------------------------
# NaN in training: stop with the iteration and the layer, keep the last good checkpoint
# ---------------------------------------------------------------------------
def test_nan_in_a_layer_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    trainer = script_trainer(_settings(tmp_path), _tiny(), data=_data())
    real_step = trainer.task.train_step

    def step_with_nan(iterator):  # a NaN appears in conv2_1's filter before iteration 7
        if trainer.iteration == 7:
            kernel = trainer.model.get_layer("conv2_1").kernel
            kernel.assign(tf.tensor_scatter_nd_update(kernel, [[0, 0, 0, 0]], [np.nan]))
        return real_step(iterator)

    trainer.task.train_step = step_with_nan
    with pytest.raises(TrainingError) as e:
        trainer.fit()
    message = str(e.value)
    assert message.startswith("the loss became non-finite at iteration 7 (fit=")
    assert "first layer concerned: conv2_1 (its weight 'kernel' holds NaN/Inf)" in message
    assert "stopped before logging iteration 10" in message
    last_good = tmp_path / "run" / "resume" / "ckpt-6"
    assert f"The last good checkpoint, {last_good}, is kept" in message
    assert sorted(p.name for p in last_good.parent.glob("*.index")) == ["ckpt-6.index"]
    # the kept checkpoint is whole and finite: the NaN step was never applied or saved
    reader = tf.train.load_checkpoint(str(last_good))
    for key in reader.get_variable_to_shape_map():
        value = reader.get_tensor(key)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.isfinite(value).all(), key
    log = (tmp_path / "run" / "training.log").read_text()
    assert log.splitlines() and log.splitlines()[-1].startswith("====iteration_5:")
    assert not (tmp_path / "run" / "final.keras").exists()


def test_a_diverging_learning_rate_names_the_overflowing_weights(tmp_path):
    trainer = script_trainer(_settings(tmp_path, lr=1e30), _tiny(), data=_data())
    with pytest.raises(TrainingError, match=r"the loss became non-finite at iteration 1 \(.*reg=inf.*\); "
                                            r"first layer concerned: conv1_0_bn/gamma \(its weight decay "
                                            r"overflows: weights too large, lower --lr\)\..* No checkpoint "
                                            r"had been written yet"):
        trainer.fit()


# ---------------------------------------------------------------------------
# Defects of issue 13 (each test fails on the code before it)
# ---------------------------------------------------------------------------
def test_eval_only_skips_a_damaged_newest_checkpoint_as_resume_does(tmp_path, capsys):
    """--eval_only took tf.train.latest_checkpoint, so a torn newest checkpoint made it
    fail where training resumes from the one before; now both read the newest readable."""
    from spherenet_tf.training.eval_only import evaluate_accuracy, run_eval_only

    trainer = _trainer_with_checkpoints(tmp_path, numbers=(3,))
    for v in trainer.model.trainable_variables:  # ckpt-6 holds other weights than ckpt-3
        v.assign(v * 0.5)
    trainer.optimizer.iterations.assign(6)
    trainer.save_resume_checkpoint()
    _flip(str(tmp_path / "run" / "resume" / "ckpt-6.data-00000-of-00001"))
    capsys.readouterr()
    s = _settings(tmp_path, eval_only=True)
    iteration, accuracy = run_eval_only(s, _tiny(), data=_data())
    out, err = capsys.readouterr()
    assert iteration == 2  # ckpt-3 is numbered with the next iteration to run
    assert out == f"++++iteration_2: test acc={accuracy:.4f}\n"
    assert f"{tmp_path / 'run' / 'resume' / 'ckpt-6'} is unreadable" in err
    expected = _tiny()(s)
    tf.train.Checkpoint(model=expected).read(str(tmp_path / "run" / "resume" / "ckpt-3")).expect_partial()
    (_, _), (test_x, test_y) = _data()
    assert accuracy == evaluate_accuracy(expected, test_x, test_y, s.batch_test)


def test_a_baseline_run_records_no_norm_setting(tmp_path):
    """A baseline has no norm / w_norm switch: settings.json must not claim one (it said
    norm='cosine' and compared it on resume)."""
    from support.repo import load_module
    from spherenet_tf.training import parse_settings

    baseline = load_module("baseline/train_baseline.py")
    s = parse_settings(vars(baseline), baseline.__file__,
                       ["--model_file", str(tmp_path / "run"), "--max_epoch", "1", "--batch_sz", "8",
                        "--batch_test", "10", "--progress", "off"])
    assert (s.norm, s.w_norm) == (None, None)
    trainer = script_trainer(s, lambda s: build_cnn9(s.n_class, norm="none", reg=True, orth=False,
                                              widths=(8, 8, 16), name="tiny_baseline"), data=_data())
    trainer.fit()
    record = json.loads((tmp_path / "run" / SETTINGS_FILE).read_text())
    assert "norm" not in record and "w_norm" not in record
    assert record["model"] == "tiny_baseline" and record["max_epoch"] == 1


def test_clearing_checkpoints_tolerates_a_file_removed_meanwhile(tmp_path, monkeypatch):
    """--restart deletes the old checkpoints; one file vanishing in between (another
    process, a network file system) must not stop it (one removal lacked the guard)."""
    import glob as glob_module

    v, store = _store(tmp_path, size=10)
    store.save(3)
    real_glob = glob_module.glob
    ghost = str(tmp_path / "resume" / "ckpt-1.data-00000-of-00001")  # listed, already gone

    def glob_with_a_ghost(pattern, *args, **kwargs):
        found = real_glob(pattern, *args, **kwargs)
        return found + [ghost] if pattern.endswith(".data-*") else found

    monkeypatch.setattr(glob_module, "glob", glob_with_a_ghost)
    store.clear()
    assert sorted(p.name for p in (tmp_path / "resume").iterdir()) == []
