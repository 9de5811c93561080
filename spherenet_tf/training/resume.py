"""Crash-safe resume checkpoints: a run killed at any moment restarts where it was.

The original scripts (wy1iu/SphereNet `train_*.py`) only save `model_file + str(i)`
every 16,000 iterations and cannot resume.  The port keeps the whole training state
(model weights, BN moving averages, Adam slots, the iteration counter that drives
the learning-rate schedule and the data stream) in `model_file/resume/ckpt-<N>`
(N = iterations done), written so that no kill -- SIGKILL, a lost machine, a full
disk -- can leave the run without a readable checkpoint:

1. the state is written under a temporary name (`.ckpt-<N>.partial*`) and flushed
   to disk (fsync);
2. it is renamed into place, data files first and the `.index` last, and the folder
   is flushed: a `ckpt-<N>.index` only ever names complete data;
3. the `checkpoint` state file (TensorFlow's format, so `tf.train.latest_checkpoint`
   reads it) is replaced atomically;
4. only then are checkpoints older than the last `keep` deleted: the previous good
   checkpoint survives until a newer one is complete.

On restore every candidate, newest first, is read in full (TensorFlow checks each
tensor's CRC32C) before it is loaded; an unreadable one is reported and skipped, so
a checkpoint torn by a crash falls back to the one before.
"""

import glob
import os
import re
import shutil

import tensorflow as tf

from ..messages import first_line

PREFIX = "ckpt"
STATE_FILE = "checkpoint"

_NUMBER = re.compile(rf"^{PREFIX}-(\d+)$")


def write_checkpoint(checkpoint, prefix):
    """Write `checkpoint` to `prefix` (.index and .data-*) so that a kill at any moment
    leaves either the complete files or none under that name: they are written under
    a temporary name and flushed (`_write_partial`), then renamed, the index last
    (`_publish`)."""
    directory, name = os.path.split(prefix)
    tmp = os.path.join(directory, f".{name}.partial")
    _write_partial(checkpoint, tmp)
    _publish(tmp, prefix)
    return prefix


def _write_partial(checkpoint, tmp):
    checkpoint.write(tmp)
    for path in _files_of(tmp):
        _fsync_path(path)


def _publish(tmp, prefix):
    for path in _files_of(tmp):  # data first, the index last
        os.replace(path, prefix + path[len(tmp):])
    _fsync_path(os.path.dirname(prefix) or ".", directory=True)


class CheckpointUnreadable(RuntimeError):
    """No candidate checkpoint could be read; the message lists each and why."""


def _fsync_path(path, directory=False):
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the rename order still holds
    finally:
        os.close(fd)


def _files_of(prefix):
    return sorted(glob.glob(glob.escape(prefix) + ".data-*")) + [prefix + ".index"]


def checkpoint_number(path):
    m = _NUMBER.match(os.path.basename(path))
    return int(m.group(1)) if m else None


class ResumeCheckpoints:
    """The resume checkpoints of one run, in `directory`.

    Args:
      checkpoint: the `tf.train.Checkpoint` (model and optimizer) to save / restore.
      directory: where this process writes (`model_file/resume`; a scratch folder for
        non-chief workers).
      keep: how many complete checkpoints to keep (at least 2: the newest may be the
        one a crash tore, as far as the storage is concerned).
      read_directory: where restores read from (the chief's folder, for every worker).
    """

    def __init__(self, checkpoint, directory, keep=2, read_directory=None):
        if keep < 2:
            raise ValueError(f"keep must be at least 2 (the previous checkpoint is the fallback); got {keep}")
        self.checkpoint = checkpoint
        self.directory = directory
        self.read_directory = read_directory or directory
        self.keep = keep
        os.makedirs(directory, exist_ok=True)

    # -- writing ---------------------------------------------------------------
    def remove_partial(self):
        """Delete what a save killed half-way left behind (temporary files only)."""
        for path in glob.glob(os.path.join(glob.escape(self.directory), f".{PREFIX}-*.partial*")):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                _remove(path)

    def clear(self):
        """Delete every resume checkpoint and the state file (a run started over)."""
        self.remove_partial()
        for prefix in self.complete():
            for f in _files_of(prefix):
                _remove(f)
        for f in glob.glob(os.path.join(glob.escape(self.directory), f"{PREFIX}-*.data-*")):
            _remove(f)  # data whose index is gone
        _remove(os.path.join(self.directory, STATE_FILE))

    def save(self, number):
        """Write checkpoint `number` crash-safely; returns its path prefix."""
        self.remove_partial()
        final = write_checkpoint(self.checkpoint, os.path.join(self.directory, f"{PREFIX}-{number}"))
        kept = [p for p in self.complete() if p != final][-(self.keep - 1):] + [final]
        self._write_state(kept)
        for path in self.complete():
            if path not in kept:
                for f in _files_of(path):
                    _remove(f)
        return final

    def _write_state(self, paths):
        lines = [f'model_checkpoint_path: "{os.path.basename(paths[-1])}"']
        lines += [f'all_model_checkpoint_paths: "{os.path.basename(p)}"' for p in paths]
        state = os.path.join(self.directory, STATE_FILE)
        tmp = f"{state}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, state)
        _fsync_path(self.directory, directory=True)

    # -- reading ---------------------------------------------------------------
    def complete(self, directory=None):
        """Checkpoints on disk whose index exists, oldest first (by iteration)."""
        return complete_checkpoints(directory or self.directory)

    def latest_readable(self, report=None):
        """The newest checkpoint of the read directory that reads in full; see
        `latest_readable`."""
        return latest_readable(self.read_directory, report)


def complete_checkpoints(directory):
    """Resume checkpoints in `directory` whose index exists, oldest first (by iteration)."""
    found = []
    for index in glob.glob(os.path.join(glob.escape(directory), f"{PREFIX}-*.index")):
        prefix = index[: -len(".index")]
        if checkpoint_number(prefix) is not None:
            found.append(prefix)
    return sorted(found, key=checkpoint_number)


def verify(prefix):
    """Read every tensor of checkpoint `prefix` (TensorFlow checks the CRC32C of
    each); raises (tf.errors.OpError, IndexError, ...) if any is missing or corrupt."""
    reader = tf.train.load_checkpoint(prefix)
    for key in reader.get_variable_to_shape_map():
        reader.get_tensor(key)


def latest_readable(directory, report=None):
    """The newest resume checkpoint in `directory` that reads in full, or None when there
    is none at all.

    Every complete checkpoint is a candidate, newest first (the state file may lag
    behind a save killed after publishing).  `report(message)` is told about every
    unreadable one skipped.  Raises CheckpointUnreadable when checkpoints exist but
    none can be read.
    """
    candidates = list(reversed(complete_checkpoints(directory)))
    problems = []
    for i, prefix in enumerate(candidates):
        try:
            verify(prefix)
        except Exception as e:  # noqa: BLE001 - corrupt files raise OpError, IndexError, ValueError, ...
            reason = first_line(e)
            problems.append(f"{prefix}: {reason}")
            if report is not None and i + 1 < len(candidates):
                report(f"resume checkpoint {prefix} is unreadable ({reason}); falling back to "
                       f"the one before it, {candidates[i + 1]}")
            continue
        return prefix
    if problems:
        raise CheckpointUnreadable("; ".join(problems))
    return None


def _remove(path):
    """Delete a file if it is there: another process (a second worker cleaning up, a
    user) may have removed it first, and a failed deletion must not stop a run."""
    try:
        os.remove(path)
    except OSError:
        pass
