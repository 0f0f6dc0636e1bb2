"""K runs at once: aggregate throughput of ``train.Trainer.fit_many`` per strategy against the loop.

For each K in ``--k`` and each strategy (``loop``, ``spread``, ``vmap``, ``map``, ``auto``, and
``loop`` / ``vmap`` with ``scan_epoch=True``), one epoch of ``fit_many`` over K runs, each on its
own subset of ``--batches`` × ``--batch`` synthetic images (different init seeds, masks and data
orders; a 10% random global top-k mask, ``optim.sgd``), is timed after an untimed identical call
(compilation and ``auto``'s own timing). Aggregate img/s = K × images per run / wall seconds;
every ratio is against the ``loop`` strategy at the same K, measured in the same run, repeats
interleaved round-robin.
The second table gives XLA's compiled memory (``runs.strategy_memory``: arguments + outputs −
aliases + temporaries of one K-run step) per K, to show it grows linearly in K.

Goals (issue 7): never below 1.0× the loop (``auto``); on a GPU ≥ 4× the single-run throughput at
K = 8 for the small CNN. Issue 16: on a 2-core CPU, K = 8 small CNN runs ≥ 1.6× the loop. The CPU
gets one device per core (``--cpu-devices``, default), where ``spread`` steps one run per core;
the loop and the other strategies run on device 0 with every core for its kernels.

    python benchmarks/bench_runs.py                        # small_cnn on this machine
    python benchmarks/bench_runs.py --device gpu --model resnet18 --k 1 2 4 8
    python benchmarks/bench_runs.py --smoke                # tiny: checks it runs
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_train_step import OthersMeter, machine_lines, random_mask  # noqa: E402

from unprune_jax import losses, optim, runs  # noqa: E402
from unprune_jax.data import Dataset  # noqa: E402
from unprune_jax.models import get_model, init_model, make_apply_fn  # noqa: E402
from unprune_jax.train import TrainConfig, Trainer, TrainState, make_train_step  # noqa: E402

SHAPES = {"small_cnn": (28, 28, 1), "mlp": (28, 28, 1), "resnet18": (32, 32, 3)}
# (label, strategy, scan_epoch)
STRATEGIES = [("loop", "loop", False), ("spread", "spread", False), ("vmap", "vmap", False),
              ("map", "map", False), ("auto", "auto", False), ("loop + scan_epoch", "loop", True),
              ("vmap + scan_epoch", "vmap", True)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="small_cnn", choices=sorted(SHAPES))
    p.add_argument("--device", default=None, choices=["cpu", "gpu", "tpu"],
                   help="platform to run on (default: jax's default backend)")
    p.add_argument("--dtype", default=None, help="model compute dtype, e.g. bfloat16")
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--batches", type=int, default=8, help="batches per run per epoch")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--strategies", nargs="+", default=[s[0] for s in STRATEGIES],
                   choices=[s[0] for s in STRATEGIES])
    p.add_argument("--no-memory", action="store_true", help="skip the memory table")
    p.add_argument("--cpu-devices", type=int, default=None, metavar="N",
                   help="CPU devices (runs.use_cpu_cores; default one per core, 1: one device "
                   "whose kernels use every core)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, to check it runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.k, args.batch, args.batches, args.repeats = "mlp", [1, 2], 16, 2, 1
    if "loop" not in args.strategies:
        args.strategies = ["loop", *args.strategies]
    return args


def setup(args, k):
    kwargs = {} if args.dtype is None else {"dtype": args.dtype}
    model = get_model(args.model, **kwargs)
    apply_fn = make_apply_fn(model)
    tx = optim.sgd(0.01, 0.9, 5e-4)
    step = make_train_step(apply_fn, tx, losses.cross_entropy)
    shape = SHAPES[args.model]
    n = args.batch * args.batches
    rng = np.random.default_rng(0)
    data = Dataset(x=rng.random((n * k, *shape), dtype=np.float32),
                   y=rng.integers(0, 10, n * k).astype(np.int32), num_classes=10, name="synthetic")
    states = []
    for i in range(k):
        params, ms = init_model(model, jax.random.PRNGKey(i), jnp.zeros((2, *shape)))
        states.append(TrainState.create(params, ms, tx, random_mask(params, 0.1, i), seed=i))
    subsets = [np.arange(i * n, (i + 1) * n) for i in range(k)]
    cfgs = [TrainConfig(epochs=1, batch_size=args.batch, lr=0.01, seed=i) for i in range(k)]
    return step, data, runs.stack(states), subsets, cfgs


class Case:
    def __init__(self, label, k, images, call):
        self.label, self.k, self.images, self.call, self.times = label, k, images, call, []

    def run(self):
        time.sleep(0.1)
        t0 = time.perf_counter()
        jax.block_until_ready(self.call())
        self.times.append(time.perf_counter() - t0)

    @property
    def rate(self):
        return self.images / statistics.median(self.times)


def main(argv=None):
    args = parse_args(argv)
    if args.device:
        jax.config.update("jax_platforms", args.device)
    runs.use_cpu_cores(args.cpu_devices)  # refuses a count XLA_FLAGS contradicts
    if len(jax.devices()) == 1 and "spread" in args.strategies:
        args.strategies.remove("spread")  # one device: spread is the loop
    print(f"# K runs per strategy vs the loop: {args.model}"
          f"{'' if args.dtype is None else f' ({args.dtype})'}, batch {args.batch}, "
          f"{args.batches} batches per run, {args.repeats} repeats\n")
    for line in machine_lines():
        print(f"- {line}")
    print(f"- load average before: {os.getloadavg()[0]:.2f}\n")

    cases, memory = [], {}
    for k in args.k:
        step, data, states, subsets, cfgs = setup(args, k)
        for label, strategy, scan in STRATEGIES:
            if label not in args.strategies:
                continue

            # one trainer per case: auto measures the strategies once, as in a pipeline run
            trainer = Trainer(strategy=strategy, progress=False, scan_epoch=scan)

            def call(trainer=trainer, step=step, data=data, states=states, subsets=subsets,
                     cfgs=cfgs):
                out, _, _ = trainer.fit_many(states, step, data, subsets, cfgs)
                return out

            case = Case(label, k, k * args.batch * args.batches, call)
            t0 = time.perf_counter()
            case.call()  # compile (and auto's timing), untimed
            print(f"warm-up K={k} {label}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            cases.append(case)
        if not args.no_memory:
            x = jnp.zeros((k, args.batch, *SHAPES[args.model]))
            y = jnp.zeros((k, args.batch), jnp.int32)
            w = jnp.ones((k, args.batch))
            memory[k] = {s: runs.strategy_memory(step, s, states, x, y, w)
                         for s in ("loop", "vmap", "map")}
            memory[k]["state"] = runs.tree_bytes(states)

    meter = OthersMeter()
    for i in range(args.repeats):
        for c in cases:
            c.run()
        print(f"repeat {i + 1}/{args.repeats} done", file=sys.stderr)
    others = meter.share()

    loop = {c.k: c for c in cases if c.label == "loop"}
    single = loop[min(loop)].rate / min(loop)  # per-run img/s of the loop at the smallest K
    labels = [s[0] for s in STRATEGIES if s[0] in args.strategies]
    print("aggregate img/s (median) and ratio vs the loop at the same K:\n")
    print("| K | " + " | ".join(labels) + " |")
    print("|---:|" + "---:|" * len(labels))
    for k in args.k:
        cells = []
        for label in labels:
            c = next(c for c in cases if c.k == k and c.label == label)
            cells.append(f"{c.rate:,.0f} ({c.rate / loop[k].rate:.2f}×)")
        print(f"| {k} | " + " | ".join(cells) + " |")
    if "auto" in labels:
        worst = min(c.rate / loop[c.k].rate for c in cases if c.label == "auto")
        print(f"\nauto vs loop, worst over K: {worst:.2f}× (goal ≥ 1.0, within ±5% noise: "
              f"{'met' if worst >= 0.95 else 'not met'})")
    best8 = [c for c in cases if c.k == 8]
    if best8:
        top = max(best8, key=lambda c: c.rate)
        print(f"K=8 best ({top.label}) vs single-run throughput: {top.rate / single:.2f}× "
              f"(GPU goal ≥ 4× for small_cnn; on {jax.default_backend()})")
    if memory:
        print("\ncompiled memory of one K-run step (MiB; runs.strategy_memory) and of the stacked "
              "state:\n")
        print("| K | loop | vmap | map | stacked state |")
        print("|---:|---:|---:|---:|---:|")
        for k, m in memory.items():
            print(f"| {k} | {m['loop'] / 2**20:.1f} | {m['vmap'] / 2**20:.1f} | "
                  f"{m['map'] / 2**20:.1f} | {m['state'] / 2**20:.1f} |")
    print(f"\nother processes used {others:.1%} of the CPUs during the timed repeats"
          + ("  WARNING: contaminated" if others > 0.05 else ""))


if __name__ == "__main__":
    main()
