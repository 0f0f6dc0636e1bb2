"""Flax (Linen) models, seen by the library only through ``apply_fn``.

``apply_fn(params, model_state, x, train) -> (logits, new_model_state)``: ``model_state`` holds the
non-trained collections (``batch_stats``) and is ``{}`` for models without any. Every model names
its classifier ``head`` and takes a ``dtype`` (compute dtype; parameters stay float32, logits come
back float32).

Which parameters are prunable is a per-architecture predicate, :func:`default_prunable`: regular
expressions over parameter paths (``'block0/attn/query/kernel'``) for
:func:`unprune_jax.masks.prunable_leaves`. A run config's ``model.prunable_include/exclude``
override it.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from ..masks import DEFAULT_EXCLUDE, DEFAULT_INCLUDE
from ..registry import Registry, unknown_name_error
from .alexnet import AlexNet
from .cnn import MLP, SmallCNN
from .resnet import ResNet18
from .vit import ViT, vit_b16, vit_small


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered architecture.

    Attributes:
        build: the Flax module's constructor, ``build(num_classes=..., **kwargs) -> nn.Module``.
        prunable: ``(include, exclude)`` regexes over parameter paths of the prunable leaves (see
            :func:`default_prunable`).
    """

    build: Callable[..., nn.Module]
    prunable: tuple[tuple[str, ...], tuple[str, ...]] = (DEFAULT_INCLUDE, DEFAULT_EXCLUDE)


# The CNNs' prunable leaves are the library default, every conv and dense kernel except ``head``
# (for ResNet-18 these are exactly the peers' 20 conv kernels: its only dense layer is ``head``;
# for AlexNet the convs and both hidden dense layers, which hold 68% of its weights).
# Transformers: only the blocks' attention and MLP kernels. The patch embedding (a conv kernel),
# the positional embedding, the class token, layer norms and head stay dense, as in the ViT
# pruning literature: they are a small share of the weights and every token depends on them.
_VIT_PRUNABLE = ((r"^block\d+/attn/(query|key|value|out)/kernel$", r"^block\d+/fc[12]/kernel$"),
                 DEFAULT_EXCLUDE)

#: Every architecture by name, with its prunable leaves (``unprune-jax list models``).
MODELS: Registry[ModelSpec] = Registry("model")
MODELS.register("small_cnn", "two stride-2 3×3 convs + dense 128 + head, for 28×28 inputs",
                ModelSpec(SmallCNN))
MODELS.register("mlp", "LeNet-300-100 multilayer perceptron", ModelSpec(MLP))
MODELS.register("resnet18", "CIFAR ResNet-18 (3×3 stem, no max-pool), batch norm; "
                "stem='imagenet' for 224×224", ModelSpec(ResNet18))
MODELS.register("alexnet", "small-image AlexNet: 5 convs (64-192-384-256-256), 3 max-pools, "
                "dense 1024-1024 + head, for 28×28 and 32×32 inputs", ModelSpec(AlexNet))
MODELS.register("vit_small", "ViT for 32×32: patch 4, dim 192, depth 6, 3 heads, class token",
                ModelSpec(vit_small, _VIT_PRUNABLE))
MODELS.register("vit_b16", "ViT-B/16 for 224×224: patch 16, dim 768, depth 12, 12 heads",
                ModelSpec(vit_b16, _VIT_PRUNABLE))


def default_prunable(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(include, exclude)`` path regexes of model ``name``'s prunable leaves.

    Pass them to :func:`unprune_jax.masks.prunable_leaves` (``prunable_leaves(params, *default_
    prunable(name))``) when the run config does not set its own.

    Raises:
        ValueError: for an unknown model name (with the closest known name).
    """
    return MODELS.get(name).prunable


def check_model_kwargs(name: str, kwargs: dict) -> None:
    """Raises ``ValueError`` naming an unknown keyword argument of model ``name`` and the valid
    ones: the fields of its Linen module class (a factory's return annotation names the class),
    except ``num_classes`` (set from the data), ``parent`` and ``name``."""
    build = MODELS.get(name).build
    cls = build if isinstance(build, type) else typing.get_type_hints(build)["return"]
    valid = sorted({f.name for f in dataclasses.fields(cls)} - {"num_classes", "parent", "name"})
    for key in kwargs:
        if key not in valid:
            raise unknown_name_error(f"model.kwargs key of {name!r}:", key, valid)


def get_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """The model registered as ``name``; ``kwargs`` go to its constructor."""
    build = MODELS.get(name).build
    # Lists from a config file become tuples: modules must be hashable (the step cache keys on
    # them).
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return build(num_classes=num_classes, **kwargs)


def init_model(model: nn.Module, key: jax.Array, sample_x) -> tuple[Any, Any]:
    """``(params, model_state)`` from ``model.init`` on a batch shaped like ``sample_x``."""
    variables = model.init(key, sample_x, train=False)
    params = variables.pop("params") if hasattr(variables, "pop") else variables["params"]
    model_state = {k: v for k, v in dict(variables).items() if k != "params"}
    return dict(params), model_state


def make_apply_fn(model: nn.Module):
    """The library's view of a Flax model: ``(params, model_state, x, train) -> (logits, state)``.

    Raises:
        ValueError: for a model with dropout > 0: this signature carries no RNG to drop with.
    """
    if getattr(model, "dropout", 0):
        raise ValueError(f"{type(model).__name__} has dropout={model.dropout}, but the library's "
                         "apply_fn passes no dropout RNG; set dropout=0")
    return _apply_fn(model)


@functools.cache
def _apply_fn(model: nn.Module):
    def apply_fn(params, model_state, x, train):
        variables = {"params": params, **model_state}
        if train and model_state:
            logits, updates = model.apply(variables, x, train=True, mutable=list(model_state))
            return logits, {**model_state, **updates}
        return model.apply(variables, x, train=train), model_state

    return apply_fn


__all__ = ["MODELS", "ModelSpec", "AlexNet", "MLP", "ResNet18", "SmallCNN", "ViT", "vit_b16",
           "vit_small", "check_model_kwargs", "default_prunable", "get_model", "init_model",
           "make_apply_fn"]
