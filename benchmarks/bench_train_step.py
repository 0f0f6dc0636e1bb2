"""Throughput of the library's masked train step, side by side with the baselines.

Measures, in one run and on synthetic data of the model's input shape:

  (a) ours      ``unprune_jax.train.make_train_step`` with ``optim.sgd`` (inject_hyperparams),
                weighted cross-entropy, on a 10%-density global top-k mask of random scores;
  (b) plain     the masked SGD step a user would write by hand: value_and_grad of the mean CE,
                ``grads * mask``, ``optax.chain(add_decayed_weights(5e-4), sgd(0.01, 0.9))``,
                ``params * mask``: the reference every ratio is taken against;
  (ablations)   (b) plus one ingredient of (a) at a time, to tell where a gap comes from:
                the inject_hyperparams optimizer, the per-example weighted CE, and the
                zero-weight no-op ``jnp.where(sum(w) > 0, new, old)`` over the whole state;
  (c) K runs    ``jax.vmap`` of our step over K stacked TrainStates (different init seeds and
                masks, different batches) vs calling our step K times in a Python loop;
                K-run rows time ``steps // K`` steps per repeat and report aggregate img/s;
  (d) torch     with ``--torch``: the PyTorch eager equivalent of small_cnn (masked grads and
                params, SGD momentum 0.9, weight decay 5e-4), once with ``torch.set_num_threads``
                = cpu count and once with 1 thread.

Every variant runs ``--steps`` steps per repeat from Python, one dispatch per step as in the
library's epoch loop, and blocks once at the end (``jax.block_until_ready``). The first call
compiles and is not timed. Repeats are interleaved round-robin over the variants so that a
slow-down of the machine hits all of them alike, and each timed repeat starts after a short
untimed ``--settle`` sleep (a precaution: idle XLA and OpenMP workers spin for a moment before they
sleep). The table gives the median and the best repeat. The run measures how much CPU other
processes took meanwhile and warns when they took more than a little: PyTorch's OpenMP with one
thread per core is the first to suffer (a run next to another job had its 2-thread rate 10x down).

    python benchmarks/bench_train_step.py                     # small_cnn (stride-2 convs)
    python benchmarks/bench_train_step.py --pool max          # small_cnn with 2x2 max-pooling
    python benchmarks/bench_train_step.py --torch             # + PyTorch eager
    python benchmarks/bench_train_step.py --model resnet18    # CIFAR ResNet-18 (slow on CPU)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unprune_jax import losses, masks, optim
from unprune_jax.models import get_model, init_model, make_apply_fn
from unprune_jax.train import TrainState, make_train_step

LR, MOMENTUM, WD = 0.01, 0.9, 5e-4
INPUT_SHAPES = {"small_cnn": (28, 28, 1), "mlp": (28, 28, 1), "resnet18": (32, 32, 3)}
# ResNet-18 on a CPU takes seconds per step: fewer steps, a smaller batch and K by default.
DEFAULTS = {
    "small_cnn": dict(batch=128, steps=50, repeats=5, k=[1, 4, 8]),
    "mlp": dict(batch=128, steps=50, repeats=5, k=[1, 4, 8]),
    "resnet18": dict(batch=32, steps=3, repeats=2, k=[2]),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="small_cnn", choices=sorted(INPUT_SHAPES))
    p.add_argument("--pool", default="stride", choices=["stride", "max"],
                   help="small_cnn downsampling: stride-2 convs (default) or 2x2 max-pool")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--k", type=int, nargs="*", default=None,
                   help="numbers of runs for vmap vs loop (none: skip)")
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--dtype", default=None, help="model compute dtype, e.g. bfloat16 (GPU rows)")
    p.add_argument("--device", default=None, choices=["cpu", "gpu", "tpu"],
                   help="platform to run on (default: jax's default backend)")
    p.add_argument("--settle", type=float, default=0.1,
                   help="untimed seconds of sleep before each timed repeat")
    p.add_argument("--no-ablations", action="store_true", help="skip the ablation rows")
    p.add_argument("--torch", action="store_true", help="also time PyTorch eager (small_cnn)")
    args = p.parse_args(argv)
    defaults = dict(DEFAULTS[args.model])
    if args.pool == "max":  # stride-1 convs: about 10x the work of the stride-2 default
        defaults.update(steps=10, repeats=3)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.model != "small_cnn" and args.pool != "stride":
        p.error("--pool applies to small_cnn only")
    return args


# --- setup ----------------------------------------------------------------------------------------


def make_model(args):
    kwargs = {"pool": args.pool} if args.model == "small_cnn" else {}
    if args.dtype is not None:
        kwargs["dtype"] = args.dtype
    return get_model(args.model, **kwargs)


def random_mask(params, density, seed):
    """Global top-k over the prunable leaves of random scores: a random mask of exact density."""
    prunable = masks.prunable_leaves(params)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1000 + seed), len(leaves))
    scores = jax.tree.unflatten(
        treedef, [jax.random.uniform(k, jnp.shape(leaf)) for k, leaf in zip(keys, leaves)]
    )
    return masks.topk_mask(scores, density, prunable, "global")


def make_batch(args, seed, shape=None):
    rng = np.random.default_rng(seed)
    shape = (args.batch, *INPUT_SHAPES[args.model]) if shape is None else shape
    x = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, shape[0]), dtype=jnp.int32)
    return x, y


def init(model, args, seed):
    x, _ = make_batch(args, 0)
    params, model_state = init_model(model, jax.random.PRNGKey(seed), x[:2])
    return params, model_state, random_mask(params, args.density, seed)


# --- the variants: each is (label, images per call, call() -> elapsed seconds) ------------------


class Runner:
    """Runs ``steps`` steps of a step function from Python, timing them after a compiling call."""

    def __init__(self, label, images_per_step, steps, one_step, sync, before=None):
        self.label, self.images, self.steps = label, images_per_step * steps, steps
        self.one_step, self.sync = one_step, sync
        self.before = before or (lambda: None)  # untimed, e.g. set the thread count
        self.times = []

    def warm_up(self):
        self.before()
        t0 = time.perf_counter()
        self.sync(self.one_step())
        self.sync(self.one_step())  # a second call: a donated / re-laid-out state may recompile
        return time.perf_counter() - t0

    def run(self, settle=0.0):
        self.before()
        # Untimed pause: lets the other variants' spinning worker threads (XLA's pool, OpenMP's)
        # go to sleep, so that they do not steal the cores from this one.
        time.sleep(settle)
        t0 = time.perf_counter()
        out = None
        for _ in range(self.steps):
            out = self.one_step()
        self.sync(out)
        self.times.append(time.perf_counter() - t0)

    def rate(self, how="median"):
        t = statistics.median(self.times) if how == "median" else min(self.times)
        return self.images / t


def ours_runner(model, args, label="ours: make_train_step"):
    apply_fn = make_apply_fn(model)
    tx = optim.sgd(LR, MOMENTUM, WD)
    step = make_train_step(apply_fn, tx, losses.cross_entropy)
    params, model_state, mask = init(model, args, 0)
    st = {"s": TrainState.create(params, model_state, tx, mask)}
    x, y = make_batch(args, 1)
    w = jnp.ones((args.batch,), jnp.float32)

    def one():
        st["s"], m = step(st["s"], x, y, w)
        return st["s"], m

    return Runner(label, args.batch, args.steps, one, jax.block_until_ready)


def plain_step_fn(model, tx, *, weighted=False, noop=False):
    """The masked SGD step written by hand; ``weighted``: our per-example weighted CE;
    ``noop``: our zero-weight no-op, ``where(sum(w) > 0, new, old)`` over the whole state."""

    def loss_of(params, model_state, x, y, w):
        variables = {"params": params, **model_state}
        if model_state:
            logits, new_ms = model.apply(variables, x, train=True, mutable=list(model_state))
        else:
            logits, new_ms = model.apply(variables, x, train=True), model_state
        if weighted:
            return losses.cross_entropy(logits, y, w), new_ms
        ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.mean(ce), new_ms

    @jax.jit
    def step(state, x, y, w):
        params, model_state, opt_state, mask = state
        (loss, new_ms), grads = jax.value_and_grad(loss_of, has_aux=True)(
            params, model_state, x, y, w
        )
        grads = jax.tree.map(lambda g, m: g * m, grads, mask)
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = jax.tree.map(lambda p, m: p * m, optax.apply_updates(params, updates), mask)
        new = (new_params, new_ms, new_opt, mask)
        if noop:
            active = jnp.sum(w) > 0
            new = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, state)
        return new, loss

    return step


def plain_runner(model, args, label="plain JAX masked SGD", tx=None, weighted=False, noop=False):
    tx = optax.chain(optax.add_decayed_weights(WD), optax.sgd(LR, momentum=MOMENTUM)) \
        if tx is None else tx
    step = plain_step_fn(model, tx, weighted=weighted, noop=noop)
    params, model_state, mask = init(model, args, 0)
    fmask = jax.tree.map(lambda m: m.astype(jnp.float32), mask)
    params = jax.tree.map(lambda p, m: p * m, params, fmask)
    st = {"s": (params, model_state, tx.init(params), fmask)}
    x, y = make_batch(args, 1)
    w = jnp.ones((args.batch,), jnp.float32)

    def one():
        st["s"], loss = step(st["s"], x, y, w)
        return st["s"], loss

    return Runner(label, args.batch, args.steps, one, jax.block_until_ready)


def k_runners(model, args, k):
    """Our step over K runs: one vmapped call per step vs K calls per step."""
    apply_fn = make_apply_fn(model)
    tx = optim.sgd(LR, MOMENTUM, WD)
    step = make_train_step(apply_fn, tx, losses.cross_entropy)
    states = []
    for i in range(k):
        params, model_state, mask = init(model, args, i)
        states.append(TrainState.create(params, model_state, tx, mask, seed=i))
    batches = [make_batch(args, 10 + i) for i in range(k)]
    w = jnp.ones((args.batch,), jnp.float32)
    xs = jnp.stack([b[0] for b in batches])
    ys = jnp.stack([b[1] for b in batches])
    ws = jnp.stack([w] * k)
    vstep = jax.jit(jax.vmap(step))
    vst = {"s": jax.tree.map(lambda *a: jnp.stack(a), *states)}
    lst = {"s": list(states)}

    def one_vmap():
        vst["s"], m = vstep(vst["s"], xs, ys, ws)
        return vst["s"], m

    def one_loop():
        out = []
        for i in range(k):
            lst["s"][i], m = step(lst["s"][i], batches[i][0], batches[i][1], w)
            out.append(m)
        return lst["s"], out

    # steps // K steps per repeat: every repeat trains on about as many images as the others.
    imgs, steps = k * args.batch, max(3, args.steps // k)
    return (
        Runner(f"K={k} vmap(ours)", imgs, steps, one_vmap, jax.block_until_ready),
        Runner(f"K={k} loop(ours)", imgs, steps, one_loop, jax.block_until_ready),
    )


def torch_runner(args, threads):
    import torch
    from torch import nn

    torch.manual_seed(0)
    if args.pool == "stride":
        convs = [nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.ReLU(),
                 nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU()]
    else:
        convs = [nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                 nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    net = nn.Sequential(*convs, nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
                        nn.Linear(128, 10))
    # Same pruning rule as the library: conv and hidden dense weights, not biases, not the head.
    prunable = [m.weight for m in net if isinstance(m, (nn.Conv2d, nn.Linear))][:-1]
    scores = [torch.rand_like(p) for p in prunable]
    flat = torch.cat([s.flatten() for s in scores])
    k = int(round(args.density * flat.numel()))
    thresh = torch.topk(flat, k).values.min()
    mask_of = {p: (s >= thresh).float() for p, s in zip(prunable, scores)}
    with torch.no_grad():
        for p, m in mask_of.items():
            p.mul_(m)
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((args.batch, 1, 28, 28), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 10, args.batch))
    loss_fn = nn.CrossEntropyLoss()

    def one():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        for p, m in mask_of.items():
            p.grad.mul_(m)
        opt.step()
        with torch.no_grad():
            for p, m in mask_of.items():
                p.mul_(m)
        return loss

    return Runner(f"PyTorch {torch.__version__} eager, {threads} thread(s)", args.batch,
                  args.steps, one, lambda loss: loss.item(),
                  before=lambda: torch.set_num_threads(threads))


# --- main -----------------------------------------------------------------------------------------


def machine_lines():
    lines = [
        f"date: {datetime.date.today().isoformat()}",
        f"python {platform.python_version()}, jax {jax.__version__}, jaxlib "
        f"{getattr(jax.lib, '__version__', None) or _version('jaxlib')}, flax {_version('flax')}, "
        f"optax {optax.__version__}, numpy {np.__version__}",
        f"devices: {jax.devices()}",
        f"processor: {platform.processor() or platform.machine()}; os.cpu_count(): "
        f"{os.cpu_count()}; sched_getaffinity: {len(os.sched_getaffinity(0))}",
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
    ]
    try:
        with open("/proc/cpuinfo") as f:
            names = {ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")}
        if names:
            lines.append(f"cpu model: {', '.join(sorted(names))}")
    except OSError:
        pass
    return lines


def _proc_stat():
    """(total, busy) CPU jiffies over all cores since boot, or None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(v), sum(v) - v[3] - v[4]  # idle and iowait are not busy


def cpu_busy(seconds=1.0):
    """Fraction of all cores busy over ``seconds`` (nan where /proc/stat is unavailable)."""
    a = _proc_stat()
    time.sleep(seconds)
    b = _proc_stat()
    if a is None or b is None:
        return float("nan")
    return (b[1] - a[1]) / max(b[0] - a[0], 1)


class OthersMeter:
    """Share of the machine's CPU time that processes other than this one used meanwhile."""

    def __init__(self):
        self.stat, self.own = _proc_stat(), _own_cpu()

    def share(self):
        stat = _proc_stat()
        if stat is None or self.stat is None:
            return float("nan")
        hz = os.sysconf("SC_CLK_TCK")
        total = (stat[0] - self.stat[0]) / hz
        busy = (stat[1] - self.stat[1]) / hz
        return max(busy - (_own_cpu() - self.own), 0.0) / max(total, 1e-9)


def _own_cpu():
    t = os.times()
    return t.user + t.system


def _version(dist):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "n/a"


def main(argv=None):
    args = parse_args(argv)
    if args.device:
        jax.config.update("jax_platforms", args.device)
    model = make_model(args)
    name = args.model + (f" (pool={args.pool})" if args.model == "small_cnn" else "")
    print(f"# train-step throughput: {name}, batch {args.batch}, {args.steps} steps x "
          f"{args.repeats} repeats, mask density {args.density}\n")
    for line in machine_lines():
        print(f"- {line}")
    busy = cpu_busy()
    print(f"- CPU busy (all processes, 1 s sampled before starting): {busy:.0%}")
    if busy > 0.15:
        print("  WARNING: the machine is busy; the numbers below are contaminated by it")
    print()

    plain = plain_runner(model, args)
    runners = [plain, ours_runner(model, args)]
    if not args.no_ablations:
        runners.append(plain_runner(model, args, "ablation: plain + inject_hyperparams tx",
                                    tx=optim.sgd(LR, MOMENTUM, WD)))
        runners.append(plain_runner(model, args, "ablation: plain + weighted CE", weighted=True))
        runners.append(plain_runner(model, args, "ablation: plain + zero-weight no-op (where)",
                                    noop=True))
    k_pairs = [k_runners(model, args, k) for k in args.k]
    runners += [r for pair in k_pairs for r in pair]
    if args.torch:
        if args.model != "small_cnn":
            print("(--torch: only small_cnn has a PyTorch twin here; skipped)\n")
        else:
            try:
                # All cores (as asked for), and 1 thread: OpenMP's 2 threads collapse when another
                # process holds a core, so the 1-thread row shows whether that happened.
                for threads in sorted({os.cpu_count() or 1, 1}, reverse=True):
                    runners.append(torch_runner(args, threads))
            except ImportError as e:
                print(f"(--torch: torch not importable, skipped: {e})\n")

    meter = OthersMeter()
    for r in runners:
        t = r.warm_up()
        print(f"warm-up (compile + 2 steps) {t:7.2f} s  {r.label}", file=sys.stderr)
    for i in range(args.repeats):
        for r in runners:
            r.run(settle=args.settle)
        print(f"repeat {i + 1}/{args.repeats}: " + ", ".join(
            f"{r.images / r.times[-1]:,.0f}" for r in runners) + " img/s", file=sys.stderr)

    base = plain.rate()
    print("| variant | img/s (median) | img/s (best) | ratio vs plain JAX step |")
    print("|---|---:|---:|---:|")
    for r in runners:
        print(f"| {r.label} | {r.rate():,.0f} | {r.rate('best'):,.0f} | {r.rate() / base:.2f} |")
    if k_pairs:
        print("\nK runs at once (aggregate img/s over the K runs; ratio = vmap / loop):\n")
        print("| K | vmap img/s | loop img/s | vmap/loop (median) | vmap/loop (best) |")
        print("|---:|---:|---:|---:|---:|")
        for (v, lp), k in zip(k_pairs, args.k):
            print(f"| {k} | {v.rate():,.0f} | {lp.rate():,.0f} | {v.rate() / lp.rate():.2f} | "
                  f"{v.rate('best') / lp.rate('best'):.2f} |")
    others = meter.share()
    spread = max(max(r.times) / min(r.times) for r in runners)
    print(f"\nlargest max/min time spread over the repeats of one variant: {spread:.2f}x; "
          f"other processes used {others:.1%} of the CPUs during the run")
    if others > 0.05:
        print("WARNING: other processes competed for the CPUs; rerun on an idle machine")


if __name__ == "__main__":
    main()
