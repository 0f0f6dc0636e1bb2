"""Does packing masks into bits matter for a stage checkpoint? Bytes on disk and seconds.

Builds the library's ``TrainState`` for a model (params, batch stats, ``optim.sgd`` state with
its momentum trace, a bool mask of 10% density over the prunable kernels) and saves it with
``checkpoint.save_stage`` as the library does (bool masks as Orbax stores bool arrays), and with
the masks packed first (``np.packbits``, 8 entries a byte: what the library's format 2 did
before stages moved onto Orbax's own API). Prints the in-memory bytes per part, then for the
whole state and for the mask alone the bytes on disk and the save and load seconds.

    python benchmarks/bench_checkpoint.py               # ResNet-18 (~11.2M parameters)
    python benchmarks/bench_checkpoint.py --model small_cnn
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from unprune_jax import checkpoint, masks, optim
from unprune_jax.models import get_model, init_model
from unprune_jax.train import TrainState

INPUT_SHAPES = {"small_cnn": (28, 28, 1), "mlp": (28, 28, 1), "resnet18": (32, 32, 3)}


def tree_bytes(tree) -> int:
    """Sum of ``nbytes`` over the array leaves of ``tree`` (in memory)."""
    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree)))


def dir_bytes(path: pathlib.Path) -> int:
    """Bytes of all files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def make_state(model_name: str, density: float) -> TrainState:
    model = get_model(model_name)
    x = jnp.zeros((2, *INPUT_SHAPES[model_name]))
    params, model_state = init_model(model, jax.random.PRNGKey(0), x)
    scores = jax.tree.map(jnp.abs, params)  # magnitude: a realistic, clustered mask
    mask = masks.topk_mask(scores, density, masks.prunable_leaves(params), "global")
    tx = optim.sgd(0.01, 0.9, 5e-4)
    state = TrainState.create(params, model_state, tx, mask)
    # One optimizer update (gradient := masked params) so the momentum trace is not all zeros:
    # zeros would compress unrealistically well on disk.
    _, opt_state = tx.update(masks.apply_mask(state.params, mask), state.opt_state, state.params)
    return state.replace(opt_state=opt_state)


def packed(tree):
    """``tree`` with every bool leaf as ``np.packbits`` of it (uint8, 8 entries a byte)."""
    return jax.tree.map(
        lambda x: jnp.asarray(np.packbits(np.asarray(x).reshape(-1))) if x.dtype == bool else x,
        tree)


def timed_round_trip(run_dir: pathlib.Path, name: str, tree) -> tuple[int, float, float]:
    """(bytes on disk, save seconds, load seconds) of ``tree`` as stage ``name``, best of 3."""
    saves, loads = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        d = checkpoint.save_stage(run_dir, name, tree, {})
        saves.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        restored, _ = checkpoint.load_stage(run_dir, name, tree)
        jax.block_until_ready(restored)
        loads.append(time.perf_counter() - t0)
    pairs = zip(jax.tree.leaves(restored), jax.tree.leaves(tree), strict=True)
    assert all(bool(jnp.array_equal(a, b)) for a, b in pairs), "not restored exactly"
    return dir_bytes(d), min(saves), min(loads)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18", choices=sorted(INPUT_SHAPES))
    p.add_argument("--density", type=float, default=0.1)
    args = p.parse_args(argv)

    state = make_state(args.model, args.density)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    parts = {
        "params": state.params, "model_state (batch stats)": state.model_state,
        "opt_state (momentum + hyperparams)": state.opt_state, "mask (bool)": state.mask,
        "mask as packed bits": packed(state.mask), "whole TrainState": state,
    }
    print(f"# checkpoint: {args.model}, {n_params:,} parameters, mask density {args.density}\n")
    print("| part | in memory (bytes) |")
    print("|---|---:|")
    for name, tree in parts.items():
        print(f"| {name} | {tree_bytes(tree):,} |")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, fn in (("bool masks (now)", lambda t: t), ("packed-bit masks", packed)):
            run = pathlib.Path(tmp, label.split()[0])
            stage = timed_round_trip(run, "state", fn(state))
            mask = timed_round_trip(run, "mask", fn(state.mask))
            rows.append({"format": label, "stage": stage[0], "save_s": stage[1],
                         "load_s": stage[2], "mask_stage": mask[0], "mask_save_s": mask[1],
                         "mask_load_s": mask[2]})
    print("\n| masks | state stage on disk (bytes) | save s | load s "
          "| mask-only stage on disk (bytes) | save s | load s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['format']} | {r['stage']:,} | {r['save_s']:.2f} | {r['load_s']:.2f} "
              f"| {r['mask_stage']:,} | {r['mask_save_s']:.2f} | {r['mask_load_s']:.2f} |")
    print(f"\npacked / bool bytes: whole stage {rows[1]['stage'] / rows[0]['stage']:.3f}, "
          f"mask alone {rows[1]['mask_stage'] / rows[0]['mask_stage']:.3f} (best of 3 timings)")
    return rows


if __name__ == "__main__":
    main()
