"""The command line of every training script: its settings block, overridden by flags.

A script is a short file of settings, as the original's were (nanoGPT-style: plain
globals, each commented), ending in `training.main(globals(), build_model, __file__)`.
Every setting of its block, and every option the port adds, can be given on the
command line (`--lr 1e-4`); `--help` lists them with their meaning (`Settings`) and
the script's default.
"""

import argparse
import os
import sys

from .. import cifar10_input
from ..checks import InputError
from ..messages import closest
from ..tf1_checkpoint import TF1CheckpointError, resolve_checkpoint_path
from .distribution import configure_devices, set_process_state
from .errors import TrainingError, exit_code
from .eval_only import run_eval_only
from .loop import Trainer
from .settings import BARE_FLAG_VALUES, Settings, SettingsError, fields, validate_settings

#: Paths in a settings block are relative to the script's folder (the original's
#: scripts were run from there); given on the command line, to the current folder.
PATH_SETTINGS = ("data_path", "model_file")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose unknown-flag error names the closest known flag."""

    def __init__(self, *args, known=(), **kwargs):
        super().__init__(*args, **kwargs)
        self._known = list(known)

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            flags = [u for u in unknown if u.startswith("-")] or unknown
            hints = []
            for flag in flags:
                match = closest(flag.lstrip("-").split("=")[0].removeprefix("no-"), self._known, 0.6)
                hints.append(f"{flag} (did you mean --{match}?)" if match else flag)
            self.error(
                "unrecognized arguments: " + ", ".join(hints) + ". Run with --help for the "
                "settings and options this script accepts."
            )
        return parsed


def _parse_bool(text):
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _typed(kind, name):
    def parse(text):
        if kind is bool:
            return _parse_bool(text)
        try:
            return kind(text)
        except ValueError:
            what = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
            raise argparse.ArgumentTypeError(f"--{name} expects {what}, got {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


def accepted_settings(block):
    """The settings a script with this settings block accepts: its block, and the
    port's options that fit its model (no `--norm` for a baseline, no `--loss` without
    a `w_norm` score layer)."""
    names = []
    for name in fields():
        if name in ("norm", "w_norm", "augmentation") and name not in block:
            continue  # only where the script's model has them
        if name in ("loss", "margin") and "w_norm" not in block:
            continue  # GA-softmax needs a weight-normalised score (--w_norm)
        names.append(name)
    return names


def build_parser(block, description=None):
    """The parser of a script whose settings block is `block` (name -> value).

    Flags default to argparse.SUPPRESS, so the parsed namespace holds exactly the
    flags given; `--help` shows each default from the block (or `Settings`)."""
    known = accepted_settings(block)
    parser = _Parser(description=description, allow_abbrev=False, known=known)
    original = parser.add_argument_group("settings (the script's settings block; override any)")
    port = parser.add_argument_group("options added by the port")
    defaults = Settings()
    for name, field in fields().items():
        if name not in known:
            continue
        default = block.get(name, getattr(defaults, name))
        kind = type(getattr(defaults, name))
        group = original if name in block else port
        help_text = f"{field.metadata['help']} (default: {default if default != '' else 'empty'})"
        if kind is bool:
            group.add_argument(f"--{name}", action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        elif name in BARE_FLAG_VALUES:
            bare, off = BARE_FLAG_VALUES[name]
            group.add_argument(f"--{name}", nargs="?", const=bare, default=argparse.SUPPRESS,
                               help=f"{help_text}; the flag alone means {bare}",
                               metavar=kind.__name__.upper())
            group.add_argument(f"--no-{name}", dest=name, action="store_const", const=off,
                               default=argparse.SUPPRESS, help=f"the same as --{name} {off}")
        else:
            group.add_argument(f"--{name}", type=_typed(kind, name), default=argparse.SUPPRESS,
                               help=help_text, metavar=kind.__name__.upper())
    return parser


def parse_settings(script_settings, script, argv=None, description=None):
    """Settings of a run: the script's settings block, overridden by the command line.

    `script_settings` maps setting names to their values in the script (e.g. its
    `globals()`); names that are not settings are ignored.  A setting the script's
    model does not have (`norm` / `w_norm` of a baseline) is None.
    """
    names = fields()
    block = {k: script_settings[k] for k in names if k in script_settings}
    parser = build_parser(block, description)
    given = vars(parser.parse_args(argv))
    values = {**block, **given}
    base = os.path.dirname(os.path.abspath(script))
    for key in PATH_SETTINGS:
        if key in block and key not in given and not os.path.isabs(block[key]):
            keep_slash = block[key].endswith(("/", os.sep))
            values[key] = os.path.normpath(os.path.join(base, block[key])) + (os.sep if keep_slash else "")
    if "dataset" in given:
        # the number of classes and the default folder follow the dataset chosen here
        spec = cifar10_input.DATASETS.get(given["dataset"])
        if spec and "n_class" not in given:
            values["n_class"] = spec.n_class
        if spec and "data_path" not in given and os.path.basename(
                os.path.normpath(values.get("data_path", ""))) in cifar10_input.DATASETS:
            values["data_path"] = os.path.join(os.path.dirname(os.path.normpath(values["data_path"])),
                                               spec.name) + os.sep
    for switch in ("norm", "w_norm"):
        values.setdefault(switch, None)  # no such switch in this script's model
    settings = Settings(**values)
    try:
        validate_settings(settings)
    except SettingsError as e:
        parser.error(str(e))
    return settings


def main(script_settings, build_model, script, argv=None, description=None):
    """Entry point of a training script: parse the command line over the script's
    settings block, then train (or evaluate).  Errors about the user's input exit with
    one line `error: ...`, not a traceback."""
    settings = parse_settings(script_settings, script, argv, description)
    configure_devices(settings)
    try:
        if settings.tf1_checkpoint:
            resolve_checkpoint_path(settings.tf1_checkpoint)  # a wrong path fails at once
        if settings.eval_only:
            run_eval_only(settings, build_model)
            return
        set_process_state(settings)  # the policy, determinism and seeds of the run
        Trainer(settings, build_model, script=script).fit()
    except (TrainingError, cifar10_input.DatasetError, TF1CheckpointError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(exit_code(e))

