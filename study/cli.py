"""Shared command-line plumbing: one-line errors with exit code 2, and TrainConfig flags."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from typing import Any, NoReturn

from study.config import TrainConfig

EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (``prog: error: ...``) and exit 2."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, message)


def fail(prog: str, message: str) -> NoReturn:
    """Print ``prog: error: message`` as one line on stderr and exit 2."""
    one_line = " ".join(str(message).split())
    print(f"{prog}: error: {one_line}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _field_help() -> dict[str, str]:
    """Field descriptions from the ``Args:`` section of TrainConfig's docstring."""
    doc = TrainConfig.__doc__ or ""
    args = doc.split("Args:", 1)[-1]
    out: dict[str, str] = {}
    for match in re.finditer(r"^\s{8}(\w+): (.*?)(?=^\s{8}\w+: |\Z)", args, re.M | re.S):
        out[match.group(1)] = " ".join(match.group(2).split())
    return out


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "all") else int(text)


def _number(text: str) -> float:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def add_config_arguments(parser: argparse.ArgumentParser, *, exclude: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` flag per TrainConfig field; defaults are TrainConfig's."""
    hints = typing.get_type_hints(TrainConfig)
    helps = _field_help()
    for f in dataclasses.fields(TrainConfig):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        text = f"{helps.get(f.name, '')} (default: {f.default})"
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=text)
            continue
        converter: Any = {int: int, float: float, str: str}.get(hint)
        if f.name == "val_size":
            converter = _number
        elif converter is None:  # int | None
            converter = _optional_int
        parser.add_argument(flag, type=converter, default=f.default, metavar=f.name.upper(), help=text)


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """Build (and so validate) a TrainConfig from parsed flags; ValueError on a bad value."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    values.update(overrides)
    return TrainConfig(**values)


def render_table(
    header: list[str], rows: list[list[str]], *, markdown: bool = False, indent: str = ""
) -> str:
    """Rows of strings as a markdown table, or as left-aligned columns for a terminal."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [header, *rows]
    return (
        "\n".join(
            indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines
        )
        + "\n"
    )
