"""Declarative search spaces: one TOML file per study design, loaded and validated here.

A space file has four parts::

    description = "what the study asks"

    [fixed]                    # TrainConfig values every trial shares (role: fixed)
    model = "swin-micro"
    epochs = 20

    [budget.quick]             # overrides of [fixed] for a budget (quick: a few CPU minutes)
    model = "swin-nano"
    train_subset = 4000        # capped at the dataset's training split

    [budget.cpu]               # the science at CPU scale (needs its own table to be offered)

    [params.base_lr]           # one table per searched TrainConfig field
    type = "float"             # int, float or categorical
    low = 1e-4
    high = 3e-3
    log = true
    role = "nuisance"          # scientific or nuisance (Deep Learning Tuning Playbook)

    [baseline]                 # the first, enqueued trial of a new study (the paper protocol)
    accumulation_steps = 1
    lr_scaling = "none"

Any mistake is a ``SpaceError`` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

SPACES_DIR = Path(__file__).resolve().parent
PARAM_TYPES = ("int", "float", "categorical")
ROLES = ("scientific", "nuisance")
# quick: smoke runs in CPU minutes; cpu: the science at CPU scale (a preset and subset chosen
# because the baseline learns the task); standard: the space as written (GPU preset, full data).
BUDGETS = ("quick", "cpu", "standard")
_TOP_LEVEL = {"description", "fixed", "budget", "params", "baseline"}


class SpaceError(ValueError):
    """A search-space file is missing, unreadable or invalid."""


@dataclass(frozen=True)
class Param:
    """One searched TrainConfig field."""

    name: str
    type: str
    role: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @classmethod
    def from_distribution(cls, name: str, dist: BaseDistribution, role: str = "") -> Param:
        """The Param of a stored trial's distribution (for analysing a study without its TOML)."""
        if isinstance(dist, CategoricalDistribution):
            return cls(name, "categorical", role, choices=tuple(dist.choices))
        kind = "int" if isinstance(dist, IntDistribution) else "float"
        return cls(name, kind, role, low=dist.low, high=dist.high, step=dist.step, log=dist.log)

    def distribution(self) -> BaseDistribution:
        if self.type == "categorical":
            return CategoricalDistribution(self.choices)
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, self.choices)
        if self.type == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def parse(self, text: str) -> Any:
        """A value of this parameter from its text (a categorical choice by its text)."""
        if self.type == "categorical":
            by_text = {str(c): c for c in self.choices}
            if text not in by_text:
                raise SpaceError(f"{self.name}={text}: not one of its choices {', '.join(by_text)}")
            return by_text[text]
        try:
            return int(text) if self.type == "int" else float(text)
        except ValueError:
            raise SpaceError(f"{self.name}={text}: not a number") from None

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in self.choices
        return isinstance(value, int | float) and self.low <= value <= self.high

    def at_edge(self, value: Any, *, fraction: float = 0.1) -> str | None:
        """'low'/'high' when ``value`` lies in the outer ``fraction`` of the range (log-aware)."""
        if self.type == "categorical":
            return None
        lo, hi, v = float(self.low), float(self.high), float(value)
        if self.log:
            lo, hi, v = math.log(lo), math.log(hi), math.log(v)
        position = (v - lo) / (hi - lo)
        return "low" if position <= fraction else "high" if position >= 1 - fraction else None


@dataclass(frozen=True)
class SearchSpace:
    name: str
    path: Path
    description: str
    params: dict[str, Param]
    fixed: dict[str, Any]
    budgets: dict[str, dict[str, Any]]
    baseline: dict[str, Any] = field(default_factory=dict)
    # (budget, dataset) -> overrides of the budget for one dataset ([budget.cpu.cifar10])
    dataset_budgets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Ask the trial for every parameter; returns {name: value}."""
        return {name: p.suggest(trial) for name, p in self.params.items()}

    def distributions(self) -> dict[str, BaseDistribution]:
        return {name: p.distribution() for name, p in self.params.items()}

    def settings(self, budget: str, dataset: str | None = None) -> dict[str, Any]:
        """Fixed TrainConfig values for a budget: [fixed] updated by [budget.<budget>], then by
        [budget.<budget>.<dataset>]."""
        return {
            **self.fixed,
            **self.budgets.get(budget, {}),
            **self.dataset_budgets.get((budget, dataset), {}),
        }

    def offers(self, budget: str) -> bool:
        """``standard`` is the space as written; ``quick`` falls back to it; ``cpu`` is a designed
        scale and needs its own [budget.cpu] table."""
        return budget != "cpu" or "cpu" in self.budgets

    def roles(self) -> dict[str, str]:
        return {name: p.role for name, p in self.params.items()} | dict.fromkeys(self.fixed, "fixed")

    def fixing(self, values: dict[str, str]) -> SearchSpace:
        """The space with some searched parameters fixed (``{"accumulation_steps": "4"}``, values as
        typed on a command line): one stratum of a search, a study per value. The baseline keeps
        its other parameters.

        Raises:
            SpaceError: a name that is not a searched parameter, or a value outside its range.
        """
        params, fixed = dict(self.params), dict(self.fixed)
        for name, text in values.items():
            if name not in params:
                raise SpaceError(
                    f"{self.path}: --fix {name}: not a searched parameter; searched: {', '.join(self.params)}"
                )
            param = params.pop(name)
            value = param.parse(text)
            if not param.contains(value):
                raise SpaceError(
                    f"{self.path}: --fix {name}={text}: outside the parameter's range or choices"
                )
            fixed[name] = value
        if not params:
            raise SpaceError(f"{self.path}: --fix leaves no parameter to search")
        baseline = {k: v for k, v in self.baseline.items() if k in params}
        return dataclasses.replace(self, params=params, fixed=fixed, baseline=baseline)


def resolve_path(name_or_path: str) -> Path:
    """A name in search_spaces/ (``quick``) or a path to a TOML file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.parent != Path("."):
        return candidate
    return SPACES_DIR / f"{name_or_path}.toml"


def available() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.toml"))


def load_space(name_or_path: str) -> SearchSpace:
    """Load and validate a space; ``SpaceError`` names the file and the key on any mistake."""
    from study.lib.config import DATASET_SIZES, TrainConfig

    path = resolve_path(name_or_path)
    where = str(path)
    if not path.is_file():
        hint = f"; known spaces: {', '.join(available())}" if path.parent == SPACES_DIR else ""
        raise SpaceError(f"{where}: no such search-space file{hint}")
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise SpaceError(f"{where}: cannot read it ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpaceError(f"{where}: not valid TOML ({exc})") from None

    def error(key: str, message: str) -> SpaceError:
        return SpaceError(f"{where}: {key}: {message}")

    config_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    # Chosen per run by the CLI, never by a space file.
    per_run = {"dataset", "data_dir", "device", "seed"}
    for key in doc:
        if key not in _TOP_LEVEL:
            raise error(key, f"unknown key; allowed: {', '.join(sorted(_TOP_LEVEL))}")

    def config_table(key: str, table: Any) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise error(key, "must be a table")
        for name in table:
            if name not in config_fields or name in per_run:
                raise error(f"{key}.{name}", "not a TrainConfig field a space may set")
        return dict(table)

    fixed = config_table("fixed", doc.get("fixed", {}))
    budgets_doc = doc.get("budget", {})
    if not isinstance(budgets_doc, dict):
        raise error("budget", "must be a table of budgets")
    budgets, dataset_budgets = {}, {}
    for budget, table in budgets_doc.items():
        if budget not in BUDGETS:
            raise error(f"budget.{budget}", f"unknown budget; allowed: {', '.join(BUDGETS)}")
        if not isinstance(table, dict):
            raise error(f"budget.{budget}", "must be a table")
        for dataset, sub in ((k, v) for k, v in table.items() if isinstance(v, dict)):
            if dataset not in DATASET_SIZES:
                raise error(
                    f"budget.{budget}.{dataset}", f"unknown dataset; allowed: {', '.join(DATASET_SIZES)}"
                )
            dataset_budgets[(budget, dataset)] = config_table(f"budget.{budget}.{dataset}", sub)
        budgets[budget] = config_table(
            f"budget.{budget}", {k: v for k, v in table.items() if not isinstance(v, dict)}
        )

    params_doc = doc.get("params")
    if not isinstance(params_doc, dict) or not params_doc:
        raise error("params", "missing: at least one [params.<field>] table is needed")
    params = {}
    for name, spec in params_doc.items():
        key = f"params.{name}"
        if name not in config_fields or name in per_run:
            raise error(key, "not a TrainConfig field a space may search")
        if name in fixed:
            raise error(key, "is also in [fixed]; a field is either searched or fixed")
        params[name] = _param(name, spec, error)

    baseline = doc.get("baseline", {})
    if not isinstance(baseline, dict):
        raise error("baseline", "must be a table")
    for name, value in baseline.items():
        if name not in params:
            raise error(f"baseline.{name}", "not a searched parameter")
        if not params[name].contains(value):
            raise error(f"baseline.{name}", f"{value!r} is outside the parameter's range")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise error("description", "must be a string")
    return SearchSpace(path.stem, path, description, params, fixed, budgets, dict(baseline), dataset_budgets)


def _param(name: str, spec: Any, error) -> Param:
    key = f"params.{name}"
    if not isinstance(spec, dict):
        raise error(key, "must be a table with type, role and a range or choices")
    allowed = {"type", "role", "low", "high", "step", "log", "choices"}
    for k in spec:
        if k not in allowed:
            raise error(f"{key}.{k}", f"unknown key; allowed: {', '.join(sorted(allowed))}")
    for k in ("type", "role"):
        if k not in spec:
            raise error(f"{key}.{k}", "missing")
    kind, role = spec["type"], spec["role"]
    if kind not in PARAM_TYPES:
        raise error(f"{key}.type", f"unknown type {kind!r}; allowed: {', '.join(PARAM_TYPES)}")
    if role not in ROLES:
        raise error(
            f"{key}.role", f"unknown role {role!r}; allowed: {', '.join(ROLES)} (fixed values go in [fixed])"
        )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise error(f"{key}.choices", "missing or empty: a categorical needs a list of choices")
        if len(set(map(repr, choices))) != len(choices):
            raise error(f"{key}.choices", "has duplicates")
        for k in ("low", "high", "log", "step"):
            if k in spec:
                raise error(f"{key}.{k}", "not allowed for a categorical")
        return Param(name, kind, role, choices=tuple(choices))
    if "choices" in spec:
        raise error(f"{key}.choices", f"not allowed for type {kind}; use low and high")
    for k in ("low", "high"):
        if k not in spec:
            raise error(f"{key}.{k}", "missing")
        if not isinstance(spec[k], int | float) or isinstance(spec[k], bool):
            raise error(f"{key}.{k}", f"must be a number; got {spec[k]!r}")
        if kind == "int" and not isinstance(spec[k], int):
            raise error(f"{key}.{k}", f"must be an integer for type int; got {spec[k]!r}")
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    if not isinstance(log, bool):
        raise error(f"{key}.log", "must be true or false")
    if low >= high:
        raise error(key, f"low ({low}) must be < high ({high})")
    if log and low <= 0:
        raise error(f"{key}.low", f"must be > 0 on a log range; got {low}")
    step = spec.get("step")
    if step is not None and (log or not isinstance(step, int | float) or step <= 0):
        raise error(f"{key}.step", "must be a positive number and cannot go with log")
    return Param(name, kind, role, low=low, high=high, step=step, log=log)
