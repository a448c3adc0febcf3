"""Command lines from configs: absl flags generated from a config's settings (flags.settings), the config read
back from them, and the one runner every entry point uses.

An entry point is

    from flags import cli
    from loops.config import TrainConfig

    def work(cfg: TrainConfig) -> int: ...          # imports TensorFlow and does the job

    if __name__ == "__main__":
        cli.run("train.py", TrainConfig, work)

and gets: `--help` listing each setting with its default, a bad value refused before TensorFlow loads with a
one-line `--flag=value: rule`, and the errors the job raises for bad input (missing files, damaged
checkpoints, ...) printed as one line and exit code 1 instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable

from absl import app, flags

from flags.settings import Settings, flag_name, group_of, setting_of

FLAGS = flags.FLAGS

# Errors whose message says everything a user needs (the job names the file, flag or record at fault).
USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError)


def _kind(field: dataclasses.Field) -> str:
    """'bool', 'int', 'float', 'str' or 'list' from the field's annotation (a string: PEP 563)."""
    text = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    base = text.replace(" | None", "").replace("None | ", "").strip()
    if base in ("bool", "int", "float", "str"):
        return base
    if base.startswith(("tuple", "list", "dict")):
        return "list"
    raise TypeError(f"setting {field.name}: no flag type for annotation {text!r}")


def _settings(config_class: type):
    """(field, setting) of the config and of its groups, depth first."""
    for field in dataclasses.fields(config_class):
        if group_of(field) is not None:
            yield from _settings(group_of(field))
        elif setting_of(field) is not None:
            yield field, setting_of(field)


def _flag_default(field: dataclasses.Field, kind: str):
    default = field.default_factory() if field.default is dataclasses.MISSING else field.default
    if kind == "list":
        if isinstance(default, dict):
            return [f"{k}={v}" for k, v in default.items()]
        return [str(v) for v in default] if default else []
    return default


def define(config_class: type, flag_values: flags.FlagValues = FLAGS):
    """Defines one absl flag per setting of the config and of its groups."""
    definers = {"bool": flags.DEFINE_boolean, "int": flags.DEFINE_integer, "float": flags.DEFINE_float,
                "list": flags.DEFINE_list, "str": flags.DEFINE_string}
    for field, s in _settings(config_class):
        kind = _kind(field)
        args = (flag_name(field), _flag_default(field, kind))
        if kind == "str" and s.choices is not None:
            flags.DEFINE_enum(*args, list(s.choices), s.help, flag_values=flag_values)
        elif kind == "list" and s.repeatable:
            # absl's list flag keeps only the last of repeated flags; a multi flag keeps them all.
            flags.DEFINE_multi_string(*args, s.help, flag_values=flag_values)
        else:
            definers[kind](*args, s.help, flag_values=flag_values)


def _value(field: dataclasses.Field, s, flag_values: flags.FlagValues) -> Any:
    raw = flag_values[flag_name(field)].value
    if _kind(field) == "str" and raw == "":
        return None  # an empty string flag means "not set", as its default None does
    if s.repeatable and raw is not None:
        raw = [item.strip() for value in raw for item in value.split(",") if item.strip()]
    if s.parse is None or raw is None:
        return raw
    try:
        return s.parse(raw)
    except ValueError as e:
        raise ValueError(f"--{flag_name(field)}={raw!r}: {e}") from None


def build(config_class: type, flag_values: flags.FlagValues = FLAGS) -> Settings:
    """The config (and its groups) from parsed flags; raises ValueError naming the flag at fault."""
    values = {}
    for field in dataclasses.fields(config_class):
        if group_of(field) is not None:
            values[field.name] = build(group_of(field), flag_values)
        elif setting_of(field) is not None:
            values[field.name] = _value(field, setting_of(field), flag_values)
    return config_class(**values)


def run(program: str, config_class: type, work: Callable[[Any], int | None], *,
        errors: tuple[type[BaseException], ...] = ()):
    """Parses the command line into `config_class` and runs `work(config)`.

    Exit codes: work's return value (0 when None); 1 with `program: error: <message>` for USER_ERRORS and
    `errors`; absl's usage error (exit 1, the message and a pointer to --help) for a bad flag."""
    define(config_class)

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        try:
            config = build(config_class)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
        try:
            return work(config) or 0
        except USER_ERRORS + tuple(errors) as e:
            print(f"{program}: error: {e}", file=sys.stderr)
            return 1

    app.run(main)
