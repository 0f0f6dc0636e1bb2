"""Run configuration: dataclasses, a TOML file, and ``section.key=value`` overrides.

The resolved configuration is saved with every run (``config.json``); a run directory only resumes
under the configuration it was started with.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path
from typing import Any

from .checks import ConfigValueError, check_numbers
from .prune import PruneConfig
from .registry import closest_name, unknown_name_error
from .train import TrainConfig
from .unprune import UnpruneConfig


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is split (all from one ``seed``).

    ``name`` is ``fashion_mnist`` (the IDX files in ``data_dir``, default the Debian package's
    directory), ``synthetic``, or ``tfds:<name>``. Sizes of None take everything available.
    The forget set is ``forget_classes`` (every training example of these labels) or a random
    ``forget_fraction`` of the training set, never both; with neither, ``forget_fraction`` is
    :data:`~unprune_jax.data.DEFAULT_FORGET_FRACTION` (0.1), filled in here so the saved config
    says what was used.
    """

    name: str = "fashion_mnist"
    data_dir: str | None = None
    seed: int = 0
    train_size: int | None = None
    val_size: int = 0
    test_size: int | None = None
    forget_fraction: float | None = None
    forget_classes: tuple[int, ...] | None = None

    def __post_init__(self):
        from .data import DEFAULT_FORGET_FRACTION

        if self.forget_classes is None:
            if self.forget_fraction is None:
                object.__setattr__(self, "forget_fraction", DEFAULT_FORGET_FRACTION)
        elif not self.forget_classes:
            raise ValueError("data.forget_classes is empty: list the class labels to forget, or "
                             "leave it out for a random forget set (data.forget_fraction, "
                             f"default {DEFAULT_FORGET_FRACTION})")
        elif self.forget_fraction is not None:
            raise ValueError(f"data.forget_fraction ({self.forget_fraction}) and "
                             f"data.forget_classes ({list(self.forget_classes)}) are both set; "
                             "the forget set is one or the other: remove one of them")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model, its initialisation seed (θ_0) and which parameter paths are prunable."""

    name: str = "small_cnn"
    kwargs: dict = dataclasses.field(default_factory=dict)
    seed: int = 0
    prunable_include: tuple[str, ...] | None = None  # None: the architecture's own predicate
    prunable_exclude: tuple[str, ...] | None = None

    def __post_init__(self):
        from .models import check_model_kwargs, default_prunable

        include, exclude = default_prunable(self.name)  # also rejects an unknown model name
        check_model_kwargs(self.name, self.kwargs)
        if self.prunable_include is None:
            object.__setattr__(self, "prunable_include", include)
        if self.prunable_exclude is None:
            object.__setattr__(self, "prunable_exclude", exclude)


@dataclasses.dataclass(frozen=True)
class UnlearnConfig:
    """Which unlearning methods to run, and per-method overrides of their registry defaults."""

    methods: tuple[str, ...] = ("retrain", "FT", "GA")
    settings: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """The sides over seeds and the topology measures.

    ``seeds`` = S: the pruning pipeline runs S times on D (the original side) and S times on D_r
    (the gold side), with data-order seeds ``train.seed + s`` (s = 0 is the main run), and every
    candidate (each unlearner, with and without un-pruning) runs from each of the S original-side
    models. The gold masks' pairwise IoU is the noise floor every mask metric is read against;
    the sides and candidates as sets feed the topology tests. Each extra seed costs two runs of
    the pruner (three with the quantity side) and one run of every candidate; 1 turns the
    topology tests off.

    ``quantity_side``: also run the pruner S times on D minus another subset of D_f's size (see
    ``pipeline.quantity_removed``), the control that separates "the mask knows D_f" from "the
    mask saw less data".
    """

    seeds: int = 8
    quantity_side: bool = True

    def __post_init__(self):
        check_numbers(self, "evaluate", at_least_one=("seeds",))


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    prune: PruneConfig = PruneConfig()
    unlearn: UnlearnConfig = UnlearnConfig()
    unprune: UnpruneConfig = UnpruneConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    def to_dict(self) -> dict:
        return _jsonable(dataclasses.asdict(self))

    def method_config(self, name: str) -> TrainConfig:
        """Method ``name``'s defaults for this dataset and model (``unlearn.hparams``), with this
        config's ``unlearn.settings.<name>`` overrides applied."""
        from .unlearn import hparams

        defaults = hparams.defaults(name, self.data.name, self.model.name)
        overrides = self.unlearn.settings.get(name, {})
        return from_dict(type(defaults), {**dataclasses.asdict(defaults), **overrides},
                         where=f"unlearn.settings.{name}")


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _unknown(key: str, valid, where: str) -> ValueError:
    close = closest_name(key, valid)
    hint = f" Did you mean {close!r}?" if close else ""
    return ValueError(f"unknown config key {where + '.' if where else ''}{key}; "
                      f"valid: {sorted(valid)}.{hint}")


def _coerce(tp, value, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where) if len(inner) == 1 else value
    if origin is tuple:
        if isinstance(value, (str, int, float)):
            value = [value]
        return tuple(_coerce(args[0], v, where) for v in value)
    if tp in (int, float) and isinstance(value, bool):  # bool is an int: true would read as 1
        raise ValueError(f"config {where} must be {tp.__name__}, got {value!r}")
    if tp is float and isinstance(value, int):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ValueError(f"config {where} must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls, d: dict, where: str = ""):
    """Builds dataclass ``cls`` from a nested dict, rejecting unknown keys with a suggestion."""
    if not isinstance(d, dict):
        raise ValueError(f"config {where or cls.__name__} must be a table, got {d!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in d.items():
        if key not in fields:
            raise _unknown(key, fields, where)
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except ConfigValueError as e:  # name the key as the config spells it: train.lr
        raise (e.renamed(f"config {where}") if where else e) from None


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(d: dict, override: str) -> None:
    """Applies ``'section.key=value'`` (value in TOML syntax, bare strings allowed) to ``d``."""
    if "=" not in override:
        raise ValueError(f"override {override!r} must look like section.key=value")
    path, text = override.split("=", 1)
    keys = path.strip().split(".")
    node = d
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {override!r}: {k} is not a section")
    node[keys[-1]] = _parse_value(text.strip())


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults, then the TOML file at ``path`` (if any), then the overrides, in that order."""
    d: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        with open(path, "rb") as f:
            d = tomllib.load(f)
    for o in overrides:
        apply_override(d, o)
    cfg = from_dict(Config, d)
    for name in cfg.unlearn.methods:
        cfg.method_config(name)  # validates names and per-method settings up front
    from .unlearn import REGISTRY

    for name in cfg.unlearn.settings:  # a typo here would otherwise be silently ignored
        if name not in REGISTRY:
            raise unknown_name_error("unlearning method in unlearn.settings", name, REGISTRY,
                                     cutoff=0.3)
        cfg.method_config(name)  # its values too, also for a method not in unlearn.methods
    return cfg
