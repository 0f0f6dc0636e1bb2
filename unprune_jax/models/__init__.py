"""Flax (Linen) models, seen by the library only through ``apply_fn``.

``apply_fn(params, model_state, x, train) -> (logits, new_model_state)``: ``model_state`` holds the
non-trained collections (``batch_stats``) and is ``{}`` for models without any. Every model names
its classifier ``head``, so the default prunable-leaf predicate (all kernels but ``head``) fits all.
"""

from __future__ import annotations

import difflib
import functools
from typing import Any, Callable

import flax.linen as nn
import jax

from .cnn import MLP, SmallCNN
from .resnet import ResNet18

MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "small_cnn": (SmallCNN, "two stride-2 3×3 convs + dense 128 + head, for 28×28 inputs"),
    "mlp": (MLP, "LeNet-300-100 multilayer perceptron"),
    "resnet18": (ResNet18, "CIFAR ResNet-18 (3×3 stem, no max-pool), batch norm"),
}


def get_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """The model registered as ``name``; ``kwargs`` go to its constructor."""
    if name not in MODELS:
        close = difflib.get_close_matches(name, list(MODELS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}.{hint}")
    # Lists from a config file become tuples: modules must be hashable (the step cache keys on them).
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return MODELS[name][0](num_classes=num_classes, **kwargs)


def init_model(model: nn.Module, key: jax.Array, sample_x) -> tuple[Any, Any]:
    """``(params, model_state)`` from ``model.init`` on a batch shaped like ``sample_x``."""
    variables = model.init(key, sample_x, train=False)
    params = variables.pop("params") if hasattr(variables, "pop") else variables["params"]
    model_state = {k: v for k, v in dict(variables).items() if k != "params"}
    return dict(params), model_state


def make_apply_fn(model: nn.Module):
    """The library's view of a Flax model: ``(params, model_state, x, train) -> (logits, state)``."""
    return _apply_fn(model)


@functools.lru_cache(maxsize=None)
def _apply_fn(model: nn.Module):
    def apply_fn(params, model_state, x, train):
        variables = {"params": params, **model_state}
        if train and model_state:
            logits, updates = model.apply(variables, x, train=True, mutable=list(model_state))
            return logits, {**model_state, **updates}
        return model.apply(variables, x, train=train), model_state

    return apply_fn
