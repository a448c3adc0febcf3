"""Settings declared once.

A config dataclass field made with `setting(default, help, ...)` carries everything about one setting: its
default, its help text, its allowed values and its rule. `flags.cli` turns such fields into absl flags
(named after the field unless `flag=` says otherwise) and reads them back into the config; the config checks
every setting's rule when it is constructed, from flags or from Python alike. A config made of smaller
configs declares them with `group(...)`.

Plain Python: no TensorFlow and no absl here, so configs import in milliseconds.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable

_SETTING = "setting"
_GROUP = "group"


@dataclasses.dataclass(frozen=True)
class Rule:
    """A condition on one value and the words an error uses when the value breaks it."""

    holds: Callable[[Any], bool]
    text: str


POSITIVE = Rule(lambda v: v > 0, "must be positive")
NON_NEGATIVE = Rule(lambda v: v >= 0, "must be >= 0")


def within(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Rule:
    """low <= v <= high, either end open if asked."""
    def holds(v):
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    return Rule(holds, f"must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")


def each_of(choices: tuple) -> Rule:
    """Every item of a list-valued setting is one of `choices`."""
    return Rule(lambda values: all(v in choices for v in values), f"each must be one of {', '.join(choices)}")


@dataclasses.dataclass(frozen=True)
class Setting:
    help: str
    flag: str | None = None  # the flag's name where it differs from the field's (the reference's spelling)
    choices: tuple | None = None
    rule: Rule | None = None
    parse: Callable[[Any], Any] | None = None  # flag value -> field value; list-valued flags need one
    repeatable: bool = False  # a list flag that may also be given several times (values add up)


def setting(default: Any, help: str, *, flag: str | None = None, choices=None, rule: Rule | None = None,
            parse: Callable[[Any], Any] | None = None, repeatable: bool = False):
    """A config field that is also a command-line flag. None as a value means "not set" and skips the
    rule and the choices (the help says what None stands for). A `repeatable` list flag takes comma lists
    and repetitions alike: `--f a,b --f c` is [a, b, c]."""
    meta = {_SETTING: Setting(help, flag, tuple(choices) if choices is not None else None, rule, parse,
                              repeatable)}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def group(config_class: type):
    """A field holding a smaller config whose settings are flags of their own (e.g. TrainConfig.data)."""
    return dataclasses.field(default_factory=config_class, metadata={_GROUP: config_class})


def setting_of(field: dataclasses.Field) -> Setting | None:
    return field.metadata.get(_SETTING)


def group_of(field: dataclasses.Field) -> type | None:
    return field.metadata.get(_GROUP)


def flag_name(field: dataclasses.Field) -> str:
    s = setting_of(field)
    return (s.flag if s and s.flag else None) or field.name


def fail(flag: str, value: Any, rule: str):
    """The one error style of every setting: `--flag=value: rule` (entry points print it as a usage error)."""
    raise ValueError(f"--{flag}={value!r}: {rule}")


def notice(flag: str, value: Any, text: str):
    """A setting taken other than given, said on stderr in the error style: `note: --flag=value: text`."""
    print(f"note: --{flag}={value!r}: {text}", file=sys.stderr, flush=True)


def required(value: Any, flag: str, what: str = ""):
    """A setting without a usable default: `--flag is required (what)`."""
    if not value:
        raise ValueError(f"--{flag} is required" + (f" ({what})" if what else ""))


def require(ok: bool, flag: str, value: Any, rule: str):
    """A rule that involves more than one setting (checked in `Settings.validate`)."""
    if not ok:
        fail(flag, value, rule)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Base of every config: checks each setting's choices and rule, then the config's own `validate`."""

    def __post_init__(self):
        for field in dataclasses.fields(self):
            s = setting_of(field)
            value = getattr(self, field.name)
            if s is None or value is None:
                continue
            if s.choices is not None and value not in s.choices:
                fail(flag_name(field), value, "must be one of " + ", ".join(str(c) for c in s.choices if c))
            if s.rule is not None and not s.rule.holds(value):
                fail(flag_name(field), value, s.rule.text)
        self.validate()

    def validate(self):
        """Rules between settings; subclasses extend it (calling super().validate())."""

    def _resolve(self, name: str, value: Any):
        """Replaces a derived default (None -> its meaning) during validation of this frozen object."""
        object.__setattr__(self, name, value)
