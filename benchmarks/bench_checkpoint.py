"""Bytes of a ResNet-18 stage checkpoint (params + mask + optimizer state), masks packed or not.

Builds the library's CIFAR ResNet-18 ``TrainState`` (params, batch stats, ``optim.sgd`` state with
its momentum trace, a bool mask of 10% density over the prunable kernels), saves it with
``checkpoint.save_stage`` twice into a temporary directory, once as the library does now (bool
leaves as packed bits) and once with packing switched off (bools stored as 1 byte each, as format
version 1 did), and prints the in-memory bytes per part and the bytes on disk of each stage.

    python benchmarks/bench_checkpoint.py               # ResNet-18 (~11.2M parameters)
    python benchmarks/bench_checkpoint.py --model small_cnn
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
from unittest import mock

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
    params, model_state = init_model(model, jax.random.PRNGKey(0),
                                     jnp.zeros((2, *INPUT_SHAPES[model_name])))
    scores = jax.tree.map(lambda p: jnp.abs(p), params)  # magnitude: a realistic, clustered mask
    mask = masks.topk_mask(scores, density, masks.prunable_leaves(params), "global")
    tx = optim.sgd(0.01, 0.9, 5e-4)
    state = TrainState.create(params, model_state, tx, mask)
    # One optimizer update (gradient := masked params) so the momentum trace is not all zeros:
    # zeros would compress unrealistically well on disk.
    _, opt_state = tx.update(masks.apply_mask(state.params, mask), state.opt_state, state.params)
    return state.replace(opt_state=opt_state)


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
    }
    print(f"# checkpoint bytes: {args.model}, {n_params:,} parameters, "
          f"mask density {args.density}\n")
    print("| part | in memory (bytes) |")
    print("|---|---:|")
    for name, tree in parts.items():
        print(f"| {name} | {tree_bytes(tree):,} |")
    packed = sum(np.packbits(np.asarray(m).reshape(-1)).nbytes for m in jax.tree.leaves(state.mask))
    print(f"| mask as packed bits | {packed:,} |")
    print(f"| whole TrainState | {tree_bytes(state):,} |")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, patch in [("bool masks (1 byte/entry, format 1)", True),
                             ("packed-bit masks (now)", False)]:
            run = pathlib.Path(tmp, label.split()[0])
            if patch:  # what format 1 wrote: the bool array itself
                with mock.patch.object(checkpoint, "_pack_bits", lambda a: a):
                    d = checkpoint.save_stage(run, "train", state, {})
                with mock.patch.object(checkpoint, "_pack_bits", lambda a: a):
                    dm = checkpoint.save_stage(run, "mask", state.mask, {})
            else:
                d = checkpoint.save_stage(run, "train", state, {})
                dm = checkpoint.save_stage(run, "mask", state.mask, {})
                restored, _ = checkpoint.load_stage(run, "train", state)
                same = all(bool(jnp.array_equal(a, b)) for a, b in
                           zip(jax.tree.leaves(restored), jax.tree.leaves(state)))
                assert same, "packed checkpoint did not restore the state exactly"
            rows.append({"format": label, "stage": dir_bytes(d), "mask_stage": dir_bytes(dm)})
    print("\n| checkpoint format | whole TrainState stage on disk (bytes) "
          "| mask-only stage on disk (bytes) |")
    print("|---|---:|---:|")
    for r in rows:
        print(f"| {r['format']} | {r['stage']:,} | {r['mask_stage']:,} |")
    print(f"\npacked / bool: whole stage {rows[1]['stage'] / rows[0]['stage']:.3f}, "
          f"mask alone {rows[1]['mask_stage'] / rows[0]['mask_stage']:.3f} "
          "(the packed state restores bit-exact)")
    return rows


if __name__ == "__main__":
    main()
