"""Shared command-line plumbing: the flags every command declares the same way, one-line errors
with exit code 2, TrainConfig flags, and the one table renderer."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from typing import Any, NoReturn

from study.lib.config import FAMILIES, LR_SCALING_EXPONENTS, TrainConfig
from study.lib.storage import STORAGE_ENV

EXIT_USAGE = 2
DEVICES = ("auto", "cpu", "cuda")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (``prog: error: ...``) and exit 2."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, message)


def fail(prog: str, message: str) -> NoReturn:
    """Print ``prog: error: message`` as one line on stderr and exit 2."""
    one_line = " ".join(str(message).split())
    print(f"{prog}: error: {one_line}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


# --- flags declared the same way by every command ----------------------------------------------
def add_storage_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        help=f"SQLAlchemy URL (default: ${STORAGE_ENV} or sqlite:///storage/studies.db); PostgreSQL: "
        f"postgresql+psycopg://user@host/db, with the password in ${STORAGE_ENV} to keep it off the "
        "command line",
    )


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--data-dir`` and ``--quiet``: the flags of every command that trains."""
    parser.add_argument("--device", default="auto", choices=DEVICES, help="training device (default: auto)")
    parser.add_argument("--data-dir", default="data", help="where datasets live (default: ./data)")
    add_quiet_flag(parser)


def add_quiet_flag(parser: argparse.ArgumentParser, help: str = "no progress bar") -> None:
    parser.add_argument("--quiet", action="store_true", help=help)


def add_workers_flags(parser: argparse.ArgumentParser, *, what: str) -> None:
    """``--workers N`` and the internal ``--worker-index`` of the processes it starts."""
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help=f"worker processes on this machine sharing {what}, each with cores/N threads (default: 1); "
        "a killed worker is replaced",
    )
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)


def add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint-every``, ``--artifacts`` and ``--keep-checkpoints``: how trials checkpoint."""
    parser.add_argument("--checkpoint-every", type=int, default=1, metavar="K",
                        help="a running trial checkpoints after every K-th evaluated epoch, so that a killed or "
                        "preempted trial resumes there (default: 1; 0: never)")  # fmt: skip
    parser.add_argument("--artifacts", help="the checkpoints' folder (default: beside a SQLite storage, else "
                        "storage/artifacts; a shared folder for several machines)")  # fmt: skip
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep the checkpoints of finished trials (default: deleted)")  # fmt: skip


def checkpoints(prog: str, args: argparse.Namespace, url: str):
    """The ``study.lib.checkpoint.Checkpoints`` the flags ask for, or None for ``--checkpoint-every 0``."""
    from study.lib.checkpoint import Checkpoints, default_folder

    if args.checkpoint_every < 0:
        fail(prog, f"--checkpoint-every must be >= 0; got {args.checkpoint_every}")
    if args.checkpoint_every == 0:
        return None
    folder = args.artifacts or default_folder(url)
    return Checkpoints(folder, every=args.checkpoint_every, keep=args.keep_checkpoints)


def resolve_budget(args: argparse.Namespace) -> str:
    """Fill ``args.budget`` from the device when not given; returns how it was chosen."""
    if args.budget is not None:
        return "given"
    import torch  # local: the analysis commands need no torch

    on_gpu = args.device != "cpu" and torch.cuda.is_available()
    args.budget = "standard" if on_gpu else "quick"
    return "chosen: CUDA device found" if on_gpu else "chosen: no CUDA device"


def parse_choices(prog: str, flag: str, text: str, choices, what: str) -> tuple[str, ...]:
    """Comma-separated values of ``choices``, in order, without repeats; one line, exit 2, on
    anything else."""
    values = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    if not values or any(v not in choices for v in values):
        fail(prog, f"{flag} takes {what} of {', '.join(choices)}; got {text!r}")
    return values


def parse_arms(prog: str, flag: str, text: str, *, empty: bool = False) -> tuple[str, ...]:
    """Comma-separated lr-scaling arms (none, linear, sqrt); with ``empty``, a blank value is no arm."""
    if empty and not text.strip():
        return ()
    return parse_choices(prog, flag, text, tuple(LR_SCALING_EXPONENTS), "arms")


def parse_families(prog: str, flag: str, text: str) -> tuple[str, ...]:
    """Comma-separated model families (swin, vit, bn-cnn)."""
    return parse_choices(prog, flag, text, FAMILIES, "model families")


def worker_argv(module: str, argv: list[str] | None, *, index: int, resolved: list[str]) -> list[str]:
    """The command line of worker process ``index`` of ``--workers``: the parent's own arguments
    (``argv``, or this process's), without ``--workers``, then what the parent resolved (a default
    study name, the budget, the worker's share), which win over the parent's, and the worker flags."""
    own = list(sys.argv[1:] if argv is None else argv)
    kept: list[str] = []
    skip = False
    for arg in own:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            kept.append(arg)
    return [sys.executable, "-m", module, *kept, *resolved, "--worker-index", str(index), "--quiet"]


def check_common(prog: str, args: argparse.Namespace) -> None:
    """Checks shared by the study CLIs (one line, exit 2)."""
    if getattr(args, "n_trials", 1) < 1:
        fail(prog, f"--n-trials must be >= 1; got {args.n_trials}")
    if getattr(args, "timeout", None) is not None and args.timeout <= 0:
        fail(prog, f"--timeout must be > 0 seconds; got {args.timeout:g}")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        fail(prog, "--device cuda was requested but no CUDA device is available; use --device cpu")


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
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    lines = [header, *rows]
    return (
        "\n".join(
            indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines
        )
        + "\n"
    )
