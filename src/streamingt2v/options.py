"""Options declared once: a dataclass field carries its command-line flag and help text.

``option(default, help, ...)`` declares a field of a run's config dataclass
(``GenerateConfig``, ``EnhanceFileConfig``); ``add_options`` builds the command's flags from
those declarations and ``from_args`` builds the config from the parsed flags. So an option
is written in one place, its field, and the CLI cannot drift from the Python API.

Help texts may name values known only when the parser is built (the embedded default's
settings) as ``{name}`` fields, filled by ``add_options(..., name=value)``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    positional: bool = False,
    cli: bool = True,
    **argparse_kwargs: Any,
) -> Any:
    """A config field with its command-line declaration.

    ``flag``: the option's name (default: ``--`` + the field's name with dashes); a flag
    whose ``action`` is ``store_false`` (``--quiet`` for ``progress``) sets the field to
    False. ``positional``: a positional argument. ``cli=False``: a Python-only field.
    ``argparse_kwargs``: ``action``, ``choices``, ``type``, ``required``, ``metavar``.
    """
    metadata = {
        "help": help,
        "flag": flag,
        "positional": positional,
        "cli": cli,
        "argparse": argparse_kwargs,
    }
    if isinstance(default, (dict, list)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are command-line options, in declaration order; the
    keyword-only ones (options shared by several commands, from a base class) last."""
    options = [f for f in dataclasses.fields(cls) if f.metadata.get("cli")]
    return sorted(options, key=lambda f: f.kw_only is True)


class _ModelDefault(dict):
    """Help values: a name not given reads "the model's"."""

    def __missing__(self, key: str) -> str:
        return "the model's"


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    only: tuple[str, ...] | None = None,
    **help_values: Any,
) -> None:
    """Add one argument per option of ``cls`` to ``parser`` (``only``: those fields alone,
    for a script that takes some of a command's options)."""
    for f in cli_fields(cls):
        if only is not None and f.name not in only:
            continue
        meta = f.metadata
        kwargs = dict(meta["argparse"])
        kwargs["help"] = meta["help"].format_map(_ModelDefault(help_values))
        action = kwargs.get("action")
        if action is None or action is argparse.BooleanOptionalAction:
            kwargs.setdefault("type", _type_of(f))
            if kwargs["type"] is None:
                del kwargs["type"]
        if meta["positional"]:
            parser.add_argument(f.name, **kwargs)
            continue
        kwargs["default"] = None if f.default is dataclasses.MISSING else f.default
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        parser.add_argument(flag, dest=f.name, **kwargs)


def from_args(cls: type[C], args: argparse.Namespace, **values: Any) -> C:
    """``cls`` from the parsed options (and ``values`` for fields that are not options)."""
    for f in cli_fields(cls):
        values.setdefault(f.name, getattr(args, f.name))
    return cls(**values)


def _type_of(f: dataclasses.Field) -> Any:
    """The argparse ``type`` for a field's annotation (a string: postponed annotations)."""
    annotation = str(f.type)
    if annotation.startswith("bool"):
        return None
    for name, parse in (("int", parse_int), ("float", parse_float), ("Path", Path)):
        if annotation.startswith(name):
            return parse
    return None


def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
