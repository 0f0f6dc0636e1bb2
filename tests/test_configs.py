"""Experiment configs: every one parses and validates; every paper config's data loads through
TFDS (mock data) and its model takes one masked train step; every smoke model fits 28×28×1."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unprune_jax import config, losses, masks, optim
from unprune_jax.data import load_dataset
from unprune_jax.models import default_prunable, get_model, init_model, make_apply_fn
from unprune_jax.train import TrainState, make_train_step

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"
SMOKE = sorted((CONFIGS / "smoke").glob("*.toml"))
PAPER = sorted((CONFIGS / "paper").glob("*.toml"))


def _id(p):
    return p.stem


def test_the_config_sets_cover_every_model_and_pruner():
    smoke = [config.load_config(p) for p in SMOKE]
    assert {c.model.name for c in smoke} == {"small_cnn", "alexnet", "vit_small"}
    assert {"omp", "synflow"} <= {c.prune.method for c in smoke}
    assert {"imp", "sfp"} & {c.prune.method for c in smoke}
    paper = {(c.data.name, c.model.name) for c in map(config.load_config, PAPER)}
    assert paper == {("tfds:cifar10", "resnet18"), ("tfds:cifar10", "alexnet"),
                     ("tfds:cifar10", "vit_small"), ("tfds:imagenet2012", "resnet18"),
                     ("tfds:imagenet2012", "vit_b16")}


@pytest.mark.parametrize("path", SMOKE + PAPER, ids=_id)
def test_config_parses_validates_and_names_itself(path):
    cfg = config.load_config(path)
    stem = path.stem.split("_")
    assert cfg.prune.method == stem[-1]  # file name: <dataset>_<model>_<pruner>.toml
    assert cfg.data.name.removeprefix("tfds:") == "_".join(stem[:2]) or cfg.model.name in path.stem
    assert cfg.model.name in path.stem
    assert set(cfg.unlearn.methods) >= {"retrain", "FT", "GA", "RL", "SalUn"}
    # The prunable predicate is the architecture's own (written out where it is not the default).
    assert _predicate(cfg) == default_prunable(cfg.model.name)
    if path in SMOKE:
        assert cfg.data.name == "fashion_mnist" and cfg.data.train_size <= 5000
    else:
        assert cfg.data.name.startswith("tfds:") and cfg.model.kwargs.get("dtype") == "bfloat16"


def _predicate(cfg):
    """The config's (include, exclude); a None (unset, if the config allows it) is the model's."""
    include, exclude = default_prunable(cfg.model.name)
    return (include if cfg.model.prunable_include is None else cfg.model.prunable_include,
            exclude if cfg.model.prunable_exclude is None else cfg.model.prunable_exclude)


def _one_masked_step(cfg, x, num_classes):
    model = get_model(cfg.model.name, num_classes, **cfg.model.kwargs)
    params, state = init_model(model, jax.random.PRNGKey(cfg.model.seed), x[:1])
    flags = masks.prunable_leaves(params, *_predicate(cfg))
    # A random mask at the config's density: a global top-k over millions of weights is a slow
    # sort on the CPU and beside the point here (the pruners have their own tests).
    rng = np.random.default_rng(0)
    mask = jax.tree.map(lambda p, f: rng.random(p.shape) < cfg.prune.density if f
                        else np.ones(p.shape, bool), params, flags)
    tx = optim.sgd()
    st = TrainState.create(params, state, tx, mask)
    apply_fn = make_apply_fn(model)
    st, m = make_train_step(apply_fn, tx, losses.cross_entropy)(
        st, x, np.arange(len(x)) % num_classes, np.ones(len(x), np.float32), {})
    assert np.isfinite(float(m["loss"]))
    pruned = jax.tree.leaves(jax.tree.map(lambda p, k: jnp.any(jnp.where(k, 0, p) != 0),
                                          st.params, st.mask))
    assert not any(bool(v) for v in pruned)  # pruned weights stayed exactly zero
    assert masks.density(st.mask, flags) == pytest.approx(cfg.prune.density, rel=0.2)


def _one_per_model(paths):
    """The first config of each distinct (model, kwargs, predicate): one compile each."""
    seen = {}
    for p in paths:
        c = config.load_config(p)
        key = (c.model.name, repr(sorted(c.model.kwargs.items())), _predicate(c))
        seen.setdefault(key, p)
    return list(seen.values())


@pytest.mark.parametrize("path", _one_per_model(SMOKE), ids=_id)
def test_smoke_config_model_fits_fashion_mnist(path):
    """Shapes only (no compile): the smoke models run end to end in the configs README."""
    cfg = config.load_config(path)
    model = get_model(cfg.model.name, 10, **cfg.model.kwargs)
    x = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    assert jax.eval_shape(model.apply, variables, x).shape == (2, 10)
    flags = masks.prunable_leaves(variables["params"], *_predicate(cfg))
    assert any(jax.tree.leaves(flags))


@pytest.mark.parametrize("path", PAPER, ids=_id)
def test_paper_config_loads_tfds_mock_data_and_its_model_steps(path):
    tfds = pytest.importorskip("tensorflow_datasets")
    cfg = config.load_config(path)
    with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = load_dataset(cfg.data.name, cfg.data.data_dir)  # as the pipeline calls it
        x = ds.x[np.arange(2)]
    want = {"tfds:cifar10": ((32, 32, 3), 10), "tfds:imagenet2012": ((224, 224, 3), 1000)}
    assert (ds.image_shape, ds.num_classes) == want[cfg.data.name]
    assert x.shape == (2, *ds.image_shape) and x.dtype == np.float32 and len(ds.test_pool) == 2
    if cfg.model.name == "vit_b16":  # 86M parameters at 224×224: shapes only on a CPU
        model = get_model(cfg.model.name, ds.num_classes, **cfg.model.kwargs)
        variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
        logits = jax.eval_shape(model.apply, variables, x)
        assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
        return
    _one_masked_step(cfg, x, ds.num_classes)


# --- issue 12: values that must be refused at load, with the key and the value named ----------


@pytest.mark.parametrize("override, message", [
    ("prune.density=true", r"config prune.density must be float, got True"),
    ("train.epochs=true", r"config train.epochs must be int, got True"),
    ("train.milestones=[1, true]", r"config train.milestones must be int, got True"),
    ("train.weight_decay=-1e-4", r"config train.weight_decay must be ≥ 0, got -0.0001"),
    ("train.lr=inf", r"config train.lr must be finite, got inf"),
    ("train.momentum=nan", r"config train.momentum must be finite, got nan"),
    ("train.gamma=-inf", r"config train.gamma must be finite, got -inf"),
    ("prune.density=nan", r"config prune.density must be finite, got nan"),
    ("prune.layer_density={conv0=true}", r"prune.layer_density 'conv0'.*True"),
    ("unprune.random_scale=inf", r"config unprune.random_scale must be finite, got inf"),
    ("unprune.fraction=0", r"config unprune.fraction must be in \(0, 1\], got 0.0"),
    ("unlearn.settings.l1-sparse.alpha=nan",
     r"config unlearn.settings.l1-sparse.alpha must be finite, got nan"),
    ("unlearn.settings.GA.lr=inf", r"config unlearn.settings.GA.lr must be finite, got inf"),
    ("model.kwargs={widthh=2}", r"model.kwargs key of 'small_cnn': 'widthh'.*'widths'"),
])
def test_bad_values_are_refused_at_load_naming_key_and_value(override, message):
    with pytest.raises(ValueError, match=message):
        config.load_config(None, [override])


def test_good_values_still_load():
    cfg = config.load_config(None, ["prune.density=1", "train.epochs=2", "train.lr=1e-3",
                                    "model.kwargs={widths=[4, 8]}", "unlearn.methods=['FT']",
                                    "unlearn.settings.GA.lr=0.01"])
    assert (cfg.prune.density, cfg.train.epochs, cfg.model.kwargs) == (1.0, 2, {"widths": [4, 8]})


def test_configs_built_in_code_are_checked_the_same_way():
    from unprune_jax.prune import PruneConfig
    from unprune_jax.train import TrainConfig
    from unprune_jax.unlearn.penalised import L1Config
    from unprune_jax.unprune import UnpruneConfig

    for build, message in [
        (lambda: TrainConfig(epochs=True), r"TrainConfig.epochs must be a number, got True"),
        (lambda: TrainConfig(weight_decay=-0.1), r"TrainConfig.weight_decay must be ≥ 0"),
        (lambda: L1Config(alpha=float("nan")), r"L1Config.alpha must be finite, got nan"),
        (lambda: PruneConfig(density=True), r"prune.density must be a number, got True"),
        (lambda: UnpruneConfig(seed=-1), r"unprune.seed must be ≥ 0, got -1"),
        (lambda: config.EvaluateConfig(seeds=0), r"evaluate.seeds must be ≥ 1, got 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            build()
    assert TrainConfig(lr=np.float32(0.5), epochs=np.int64(2)).lr == np.float32(0.5)
