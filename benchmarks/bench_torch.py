"""One masked fine-tuning epoch: the library (JAX) against PyTorch eager and torch.compile.

The same work on both sides: an epoch over ``--images`` synthetic images of FashionMNIST's shape
(28×28×1, 10 classes), batch 128, SGD(lr 0.01, momentum 0.9, weight decay 5e-4), a 10%-density
global top-k mask of random scores over the conv and hidden dense kernels (not biases, not the
head), gradients and parameters multiplied by the mask every step, a fresh shuffle per epoch and a
per-batch gather from host memory. Models (``--model``):

  maxpool  the classic small CNN: 3×3 stride-1 convs (32, 64) each + ReLU + 2×2 max-pool,
           dense 128, head. ``SmallCNN(pool='max')``; PyTorch ``MaxPool2d(2)``.
  stride   the library's default: 3×3 stride-2 convs (32, 64) + ReLU, dense 128, head.
  mlp      784-300-100-10.

Rows (each is one whole epoch, timed wall clock, median over ``--repeats``):

  JAX ours: train.fit          ``train.fit`` with ``make_train_step``: one jitted call per batch.
  JAX ours, nn.max_pool        (maxpool) the same with Flax's ``nn.max_pool``, as before the change
                               to ``SmallCNN``: shows what the reshape-max pooling bought.
  JAX ours, epoch as lax.scan  the whole epoch as one jitted ``lax.scan`` of our step over the
                               gathered batches (gather included in the time).
  PyTorch eager (NCHW)         ``torch.set_num_threads(2)``: as many threads as XLA:CPU uses here
                               (its Eigen pool has one thread per core, 2).
  PyTorch eager channels_last  NHWC memory format.
  PyTorch torch.compile        ``torch.compile(model)`` (inductor, default mode); the optimizer
                               and masking stay eager. Reported as failed if it does not work.

Repeats are interleaved round-robin across rows, so a slow-down of the shared machine hits all
alike; the script prints the load before and the CPU share other processes took during the run.
``--xla-sweep`` reruns the JAX row in subprocesses under several ``XLA_FLAGS`` and prints their
epoch time relative to no flags.

    python benchmarks/bench_torch.py --model maxpool
    python benchmarks/bench_torch.py --model stride
    python benchmarks/bench_torch.py --model maxpool --xla-sweep --no-torch
    python benchmarks/bench_torch.py --smoke        # a few batches of everything (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_train_step import OthersMeter, cpu_busy, machine_lines, random_mask  # noqa: E402

from unprune_jax import losses, optim  # noqa: E402
from unprune_jax.data import Dataset  # noqa: E402
from unprune_jax.models import get_model, init_model, make_apply_fn  # noqa: E402
from unprune_jax.train import TrainConfig, TrainState, fit, make_train_step  # noqa: E402

LR, MOMENTUM, WD, DENSITY, THREADS = 0.01, 0.9, 5e-4, 0.1, 2
# XLA flags tried by --xla-sweep (all exist in jaxlib 0.10.2; unknown flags abort XLA).
SWEEP = [
    "",
    "--xla_cpu_multi_thread_eigen=false",
    "--xla_cpu_use_thunk_runtime=false",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_use_fusion_emitters=false",
]


class SmallCNNFlaxPool(nn.Module):
    """``SmallCNN(pool='max')`` as it was: Flax's ``nn.max_pool`` (same parameter names)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, w in enumerate((32, 64)):
            x = nn.max_pool(nn.relu(nn.Conv(w, (3, 3), name=f"conv{i}")(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(128, name="fc")(x.reshape(x.shape[0], -1)))
        return nn.Dense(10, name="head")(x)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="maxpool", choices=["maxpool", "stride", "mlp"])
    p.add_argument("--images", type=int, default=60000, help="images per epoch")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=THREADS,
                   help="torch.set_num_threads; run under `taskset -c 0` with 1 to give both "
                        "sides one core (XLA:CPU sizes its pool from the affinity mask)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--no-scan", action="store_true", help="skip the lax.scan epoch")
    p.add_argument("--xla-sweep", action="store_true", help="JAX row under several XLA_FLAGS")
    p.add_argument("--only-ours", action="store_true", help=argparse.SUPPRESS)  # sweep child
    p.add_argument("--smoke", action="store_true", help="tiny sizes, to check it runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.images, args.repeats = 3 * args.batch + 5, 1
    return args


class Row:
    def __init__(self, label, epoch, warm_up):
        self.label, self.epoch, self.warm_up, self.times = label, epoch, warm_up, []

    def run(self):
        time.sleep(0.1)  # let the previous row's spinning worker threads go to sleep
        t0 = time.perf_counter()
        self.epoch()
        self.times.append(time.perf_counter() - t0)

    @property
    def median(self):
        return statistics.median(self.times)


def synthetic(args) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.random((args.images, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, args.images).astype(np.int32)
    return Dataset(x=x, y=y, num_classes=10, name="synthetic")


# --- JAX ------------------------------------------------------------------------------------------


def jax_model(name, flax_pool=False):
    if name == "maxpool":
        return SmallCNNFlaxPool() if flax_pool else get_model("small_cnn", pool="max")
    return get_model("small_cnn") if name == "stride" else get_model("mlp")


def jax_rows(args, data, *, scan=True):
    rows = []
    variants = [("JAX ours: train.fit", False)]
    if args.model == "maxpool" and not args.only_ours:
        variants.append(("JAX ours, nn.max_pool (before)", True))
    tx = optim.sgd(LR, MOMENTUM, WD)
    for label, flax_pool in variants:
        model = jax_model(args.model, flax_pool)
        apply_fn = make_apply_fn(model)
        step = make_train_step(apply_fn, tx, losses.cross_entropy)
        params, ms = init_model(model, jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1)))
        st = {"s": TrainState.create(params, ms, tx, random_mask(params, DENSITY, 0)), "e": 0}
        all_idx = np.arange(len(data.y))

        def epoch(step=step, st=st, all_idx=all_idx, n=None):
            idx = all_idx if n is None else all_idx[:n]
            cfg = TrainConfig(epochs=1, batch_size=args.batch, lr=LR, momentum=MOMENTUM,
                              weight_decay=WD, seed=st["e"])
            st["e"] += 1
            st["s"], _, _ = fit(st["s"], step, data, idx, cfg, progress=False)
            jax.block_until_ready(st["s"])

        rows.append(Row(label, epoch, lambda e=epoch: e(n=2 * args.batch)))
    if scan and not args.only_ours:
        rows.append(scan_row(args, data, jax_model(args.model), tx))
    return rows


def scan_row(args, data, model, tx):
    apply_fn = make_apply_fn(model)
    step = make_train_step(apply_fn, tx, losses.cross_entropy)
    params, ms = init_model(model, jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1)))
    st = {"s": TrainState.create(params, ms, tx, random_mask(params, DENSITY, 0)), "e": 0}

    @jax.jit
    def run_epoch(state, xs, ys, ws):
        def body(s, b):
            s, m = step(s, *b)
            return s, m["loss"]

        return jax.lax.scan(body, state, (xs, ys, ws))

    def batches(n):
        rng = np.random.default_rng(st["e"])
        st["e"] += 1
        order = rng.permutation(n)
        steps = -(-n // args.batch)
        idx = np.resize(order, steps * args.batch).reshape(steps, args.batch)
        w = (np.arange(steps * args.batch) < n).astype(np.float32).reshape(steps, args.batch)
        return data.x[idx], data.y[idx], w

    def epoch(n=None):
        st["s"], loss = run_epoch(st["s"], *batches(len(data.y) if n is None else n))
        jax.block_until_ready(loss)

    # The scan compiles for the number of steps in the epoch: warm up on the real epoch length.
    return Row("JAX ours, epoch as one lax.scan", epoch, epoch)


# --- PyTorch --------------------------------------------------------------------------------------


def torch_rows(args, data, compile_too=True):
    import torch
    from torch import nn as tnn

    torch.set_num_threads(args.threads)
    x_all = torch.from_numpy(data.x).permute(0, 3, 1, 2).contiguous()  # NCHW
    y_all = torch.from_numpy(data.y.astype(np.int64))

    def build(seed=0):
        torch.manual_seed(seed)
        if args.model == "mlp":
            layers = [tnn.Flatten(), tnn.Linear(784, 300), tnn.ReLU(), tnn.Linear(300, 100),
                      tnn.ReLU(), tnn.Linear(100, 10)]
        else:
            if args.model == "maxpool":
                convs = [tnn.Conv2d(1, 32, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
                         tnn.Conv2d(32, 64, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2)]
            else:
                convs = [tnn.Conv2d(1, 32, 3, stride=2, padding=1), tnn.ReLU(),
                         tnn.Conv2d(32, 64, 3, stride=2, padding=1), tnn.ReLU()]
            layers = [*convs, tnn.Flatten(), tnn.Linear(64 * 7 * 7, 128), tnn.ReLU(),
                      tnn.Linear(128, 10)]
        net = tnn.Sequential(*layers)
        prunable = [m.weight for m in net if isinstance(m, (tnn.Conv2d, tnn.Linear))][:-1]
        scores = [torch.rand_like(p) for p in prunable]
        flat = torch.cat([s.flatten() for s in scores])
        thresh = torch.topk(flat, int(round(DENSITY * flat.numel()))).values.min()
        mask_of = {p: (s >= thresh).float() for p, s in zip(prunable, scores)}
        with torch.no_grad():
            for p, m in mask_of.items():
                p.mul_(m)
        return net, mask_of

    def make(label, channels_last=False, compiled=False):
        net, mask_of = build()
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
        fwd = torch.compile(net) if compiled else net
        loss_fn = tnn.CrossEntropyLoss()
        state = {"e": 0}

        def epoch(n=None):
            n = len(y_all) if n is None else n
            order = torch.from_numpy(np.random.default_rng(state["e"]).permutation(n))
            state["e"] += 1
            loss = None
            for b in range(0, n, args.batch):
                idx = order[b:b + args.batch]
                if len(idx) < args.batch:  # keep one shape (compiled graphs): pad, weight 0
                    idx = torch.cat([idx, order[: args.batch - len(idx)]])
                    w = (torch.arange(args.batch) < n - b).float()
                else:
                    w = None
                x = x_all[idx]
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                opt.zero_grad(set_to_none=True)
                logits = fwd(x)
                if w is None:
                    loss = loss_fn(logits, y_all[idx])
                else:
                    ce = tnn.functional.cross_entropy(logits, y_all[idx], reduction="none")
                    loss = (ce * w).sum() / w.sum()
                loss.backward()
                for p, m in mask_of.items():
                    p.grad.mul_(m)
                opt.step()
                with torch.no_grad():
                    for p, m in mask_of.items():
                        p.mul_(m)
            loss.item()

        return Row(label, epoch, lambda: epoch(n=2 * args.batch))

    n = args.threads
    rows = [make(f"PyTorch {torch.__version__} eager (NCHW), {n} threads"),
            make(f"PyTorch eager channels_last (NHWC), {n} threads", channels_last=True)]
    if compile_too:
        rows.append(make(f"PyTorch torch.compile (inductor), {n} threads", compiled=True))
    return rows


# --- main -----------------------------------------------------------------------------------------


def sweep(args) -> list[tuple[str, float | str]]:
    """Epoch time of the JAX row under each XLA_FLAGS setting, each in a fresh process."""
    out = []
    for flags in SWEEP:
        env = dict(os.environ, XLA_FLAGS=flags)
        cmd = [sys.executable, __file__, "--model", args.model, "--images", str(args.images),
               "--batch", str(args.batch), "--repeats", str(args.repeats), "--only-ours"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ONLY_OURS ")]
        if proc.returncode != 0 or not lines:
            out.append((flags, f"failed: {proc.stderr.strip().splitlines()[-1:]}"))
        else:
            out.append((flags, json.loads(lines[-1].split(" ", 1)[1])["median_s"]))
        print(f"  sweep {flags or '(none)'}: {out[-1][1]}", file=sys.stderr)
    return out


def main(argv=None):
    args = parse_args(argv)
    data = synthetic(args)
    if args.only_ours:  # a --xla-sweep child: just the JAX row, machine-readable
        (row,) = jax_rows(args, data, scan=False)
        row.warm_up()
        for _ in range(args.repeats):
            row.run()
        print("ONLY_OURS " + json.dumps({"median_s": row.median, "times": row.times}))
        return

    print(f"# one masked FT epoch: {args.model}, {args.images} images, batch {args.batch}, "
          f"{args.repeats} repeats\n")
    for line in machine_lines():
        print(f"- {line}")
    print(f"- load average before: {os.getloadavg()[0]:.2f}; CPU busy 1 s before: {cpu_busy():.0%}")
    rows = jax_rows(args, data, scan=not args.no_scan)
    failed = []
    if not args.no_torch:
        try:
            import torch  # noqa: F401

            rows += torch_rows(args, data, compile_too=not args.no_compile)
        except ImportError as e:
            failed.append(("PyTorch", f"not importable: {e}"))
    meter = OthersMeter()
    live = []
    for r in rows:
        t0 = time.perf_counter()
        try:
            r.warm_up()
        except Exception as e:  # torch.compile may not work on a given CPU/toolchain
            failed.append((r.label, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
            continue
        print(f"warm-up {time.perf_counter() - t0:7.2f} s  {r.label}", file=sys.stderr)
        live.append(r)
    for i in range(args.repeats):
        for r in live:
            r.run()
        print(f"repeat {i + 1}: " + ", ".join(f"{r.times[-1]:.2f}" for r in live) + " s",
              file=sys.stderr)
    others = meter.share()

    ours = live[0]
    torch_eager = next((r for r in live if "eager (NCHW)" in r.label), None)
    print("\n| variant | epoch s (median) | epoch s (best) | img/s | ours speed ÷ this row's |")
    print("|---|---:|---:|---:|---:|")
    for r in live:
        print(f"| {r.label} | {r.median:.2f} | {min(r.times):.2f} | {args.images / r.median:,.0f} "
              f"| {r.median / ours.median:.2f} |")
    for label, why in failed:
        print(f"| {label} | failed: {why} | | | |")
    if torch_eager is not None:
        best_torch = min((r for r in live if r.label.startswith("PyTorch")), key=lambda r: r.median)
        ratio = best_torch.median / ours.median
        print(f"\nours vs fastest PyTorch row ({best_torch.label}): {ratio:.2f}x "
              f"(goal >= 1.0: {'met' if ratio >= 1.0 else 'not met'})")
    print(f"other processes used {others:.1%} of the CPUs during the run"
          + ("  WARNING: contaminated, rerun" if others > 0.05 else ""))
    if args.xla_sweep:
        results = sweep(args)
        base = results[0][1]
        print("\n| XLA_FLAGS | JAX ours epoch s (median) | vs no flags |")
        print("|---|---:|---:|")
        for flags, t in results:
            rel = f"{base / t:.2f}x" if isinstance(t, float) and isinstance(base, float) else "-"
            shown = f"{t:.2f}" if isinstance(t, float) else t
            print(f"| `{flags or '(none)'}` | {shown} | {rel} |")


if __name__ == "__main__":
    main()
