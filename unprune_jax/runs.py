"""K experiments in one call: stacked train states, K-run steps, device sharding, memory.

K runs (different forget/retain subsets padded to a common batch shape with per-example weights,
different seeds, different hyperparameters of one method) share one model architecture, so their
:class:`~unprune_jax.train.TrainState` pytrees stack along a new leading axis ``K``. A single-run
step ``(state, x, y, w, extra) -> (state, metrics)`` from :func:`train.make_train_step` then runs
for all K by one of these strategies:

* ``"vmap"``: ``jit(vmap(step))``; one dispatch, K-wide kernels. Convolutions over K weight copies
  become grouped convolutions, which XLA runs poorly on some backends (on a 2-core CPU, 0.10 to
  0.23× the loop's throughput at K=8 for the small CNN).
* ``"map"``: ``jit(lax.map(step, batch_size=b))``; one dispatch, the K runs sequential inside the
  compiled program (``b`` runs vmapped at a time; ``b=None`` is fully sequential, no grouped
  convolutions at all).
* ``"loop"``: a Python loop of K calls of the single-run jitted step; the baseline.
* ``"spread"``: the loop with run ``k`` placed on device ``k mod D`` of the ``D`` devices (a
  mesh's, or every device of the default backend). Dispatch is asynchronous, so the devices step
  their runs at the same time, each with the single-run program. On a CPU, one device per core
  (:func:`use_cpu_cores`, before JAX starts) makes this one run per core: no grouped
  convolutions, no cross-device communication.
* ``"shard"``: ``vmap`` with the K axis laid over the ``runs`` axis of a device mesh (and, if the
  mesh has a ``data`` axis larger than 1, each run's batch over ``data``). K not divisible by the
  ``runs`` axis size is padded with no-op runs (copies of run 0 fed zero-weight batches) that are
  dropped again before returning.
* ``"auto"``: times a few steps of each candidate on the actual shapes once, caches the pick per
  (backend, step, shapes, K, memory limit) and never picks a strategy slower than the loop in that
  measurement (see :func:`choose_strategy`); ``spread`` is a candidate where there are several
  devices. If a memory limit is known and ``vmap`` does not fit, ``map`` with the largest batch
  size that fits replaces it.

Every strategy gives the same result as the loop to float tolerance: run ``k`` of :func:`fit_many`
equals ``train.fit(unstack(states)[k], step_fn, dataset, subsets[k], cfgs[k])``.
Nothing here forces float64; a model's compute dtype (e.g. bf16) passes straight through.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from . import optim
from .data._checks import check_int
from .registry import Registry

PyTree = Any
StepFn = Callable[..., tuple[Any, dict]]

#: How K runs execute (``fit_many(strategy=...)``, ``unprune-jax sweep --strategy``); each entry's
#: value is its name, which :func:`make_k_step` and :func:`fit_many` branch on.
STRATEGIES: Registry[str] = Registry("strategy")
STRATEGIES.register("auto", "time each strategy on the real shapes once; never pick one slower "
                    "than the loop", "auto")
STRATEGIES.register("vmap", "jit(vmap(step)): one dispatch, K-wide kernels", "vmap")
STRATEGIES.register("map", "jit(lax.map(step)): one dispatch, the K runs sequential inside the "
                    "program", "map")
STRATEGIES.register("loop", "a Python loop of the single-run jitted step (the baseline)", "loop")
STRATEGIES.register("spread", "the loop with run k on device k mod D: the devices step their "
                    "runs at once (on CPU: one run per core, see use_cpu_cores)", "spread")
STRATEGIES.register("shard", "vmap with the K axis laid over the 'runs' axis of a device mesh",
                    "shard")
_CONCRETE = tuple(name for name in STRATEGIES if name != "auto")


# --- stacking -------------------------------------------------------------------------------------


def stack(trees: Sequence[PyTree]) -> PyTree:
    """Stacks K pytrees of identical structure and leaf shapes along a new leading axis.

    Args:
        trees: K ≥ 1 pytrees (e.g. ``TrainState``\\ s of one architecture).

    Returns:
        One pytree whose every leaf has shape ``(K, *leaf.shape)``.

    Raises:
        ValueError: ``trees`` is empty, or structures / leaf shapes differ (names the run).
    """
    trees = list(trees)
    if not trees:
        raise ValueError("stack: got no trees")
    ref = jax.tree.structure(trees[0])
    ref_shapes = [np.shape(a) for a in jax.tree.leaves(trees[0])]
    for k, t in enumerate(trees[1:], 1):
        if jax.tree.structure(t) != ref:
            raise ValueError(f"stack: tree {k} has structure {jax.tree.structure(t)}, tree 0 has "
                             f"{ref}")
        shapes = [np.shape(a) for a in jax.tree.leaves(t)]
        if shapes != ref_shapes:
            bad = next(i for i, (a, b) in enumerate(zip(shapes, ref_shapes)) if a != b)
            raise ValueError(f"stack: leaf {bad} of tree {k} has shape {shapes[bad]}, tree 0's "
                             f"has {ref_shapes[bad]}")
    return _stack_jit(*trees)


# One compiled program per tree structure instead of one eager dispatch per leaf.
_stack_jit = jax.jit(lambda *trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees))
_take_jit = jax.jit(lambda tree, k: jax.tree.map(lambda a: a[k], tree))


def num_runs(tree: PyTree) -> int:
    """The common leading-axis size K of a stacked pytree.

    Raises:
        ValueError: a leaf is a scalar or the leading sizes differ.
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError("num_runs: the tree has no leaves")
    sizes = {np.shape(a)[0] if np.ndim(a) else None for a in leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError(f"not a stacked tree: leading sizes {sorted(map(str, sizes))} (every leaf "
                         "needs the same leading axis K)")
    return int(sizes.pop())


def unstack(tree: PyTree) -> list[PyTree]:
    """Inverse of :func:`stack`: K pytrees, the k-th holding ``leaf[k]`` of every leaf."""
    return [_take_jit(tree, k) for k in range(num_runs(tree))]


def tree_bytes(tree: PyTree) -> int:
    """Total bytes of a pytree's array leaves (abstract ``ShapeDtypeStruct`` leaves count too)."""
    return int(sum(math.prod(np.shape(a)) * np.dtype(a.dtype).itemsize
                   for a in jax.tree.leaves(tree)))


# --- meshes ---------------------------------------------------------------------------------------


def make_mesh(runs: int | None = None, data: int = 1, devices=None) -> Mesh:
    """A ``('runs', 'data')`` device mesh over ``devices`` (default ``jax.devices()``).

    Args:
        runs: size of the ``runs`` axis (independent experiments); default: all devices / data.
        data: size of the ``data`` axis (one run's batch split across devices).
        devices: the devices to use; ``runs * data`` of them, in the given order.

    Raises:
        ValueError: the sizes do not multiply to a usable number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    if data < 1 or len(devices) % data:
        raise ValueError(f"make_mesh: data={data} must divide the {len(devices)} devices")
    runs = len(devices) // data if runs is None else runs
    if runs < 1 or runs * data > len(devices):
        raise ValueError(f"make_mesh: runs={runs} × data={data} = {runs * data} devices, "
                         f"but only {len(devices)} are available")
    grid = np.array(devices[: runs * data], dtype=object).reshape(runs, data)
    # Auto axes: jit propagates the shardings; the step itself stays sharding-agnostic.
    return Mesh(grid, ("runs", "data"),
                axis_types=(jax.sharding.AxisType.Auto, jax.sharding.AxisType.Auto))


def use_cpu_cores(n: int | None = None) -> int:
    """Gives JAX's CPU backend ``n`` devices (default: the cores this process may run on).

    XLA:CPU gets little from a second core for one small run's kernels; with one device per core,
    strategy ``'spread'`` (and ``'shard'``) runs one run per core. JAX fixes its CPU device count
    when its first backend starts, so call this before any JAX computation.
    ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set by the user fixes it too.

    Returns:
        How many CPU devices JAX will have. Without ``n``: one per core, or the count fixed
        before this call (left as it is).

    Raises:
        ValueError: naming ``n`` when it is not a positive int, or when the count is already
            fixed at another value (an explicit request is never silently ignored).
    """
    wanted = None if n is None else check_int(n, "use_cpu_cores: n", lo=1)
    if n is None:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    forced = re.search(r"--xla_force_host_platform_device_count=(\d+)",
                       os.environ.get("XLA_FLAGS", ""))
    got = n
    if forced:
        got = int(forced.group(1))
    else:
        try:
            jax.config.update("jax_num_cpu_devices", n)
        except RuntimeError:  # JAX has started: the count is fixed
            got = len(jax.devices("cpu"))
    if wanted is not None and got != wanted:
        raise ValueError(f"{wanted} CPU devices asked for, but JAX has {got}, fixed by XLA_FLAGS "
                         "(--xla_force_host_platform_device_count) or by an earlier start of "
                         f"JAX; ask for {got}, or leave the count to it")
    return got


def spread_devices(mesh: Mesh | None = None) -> list:
    """The devices strategy ``'spread'`` places runs on: the mesh's, else the default backend's."""
    return list(mesh.devices.flat) if mesh is not None else jax.devices()


def axis_size(mesh: Mesh, name: str) -> int:
    return int(dict(mesh.shape).get(name, 1))


def check_mesh(mesh: Mesh) -> None:
    if not isinstance(mesh, Mesh) or "runs" not in mesh.axis_names:
        raise ValueError(f"strategy 'shard' needs a jax.sharding.Mesh with a 'runs' axis "
                         f"(see make_mesh), got {mesh!r}")


@functools.cache
def make_data_parallel_step(step_fn: StepFn, mesh: Mesh):
    """One run, data-parallel: the batch is split over ``mesh``'s ``data`` axis, state replicated.

    The step is the same single-run function; ``jit`` in/out shardings place it and XLA inserts the
    gradient all-reduce. ``extra`` is replicated. The batch size must be divisible by the ``data``
    axis size. Returns ``(state, x, y, w, extra) -> (state, metrics)``.
    """
    if "data" not in mesh.axis_names:
        raise ValueError(f"make_data_parallel_step needs a mesh with a 'data' axis, got "
                         f"{mesh.axis_names}")
    rep, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def step(state, x, y, w, extra):
        return step_fn(state, x, y, w, extra)

    jitted = jax.jit(step, in_shardings=(rep, dat, dat, dat, rep), out_shardings=(rep, rep))

    def call(state, x, y, w, extra=None):
        if np.shape(x)[0] % axis_size(mesh, "data"):
            raise ValueError(f"batch size {np.shape(x)[0]} is not divisible by the mesh's data "
                             f"axis ({axis_size(mesh, 'data')} devices)")
        return jitted(state, x, y, w, {} if extra is None else extra)

    return call


# --- K-run steps ----------------------------------------------------------------------------------


def _k_body(step_fn: StepFn, strategy: str, map_batch_size: int | None):
    """The traceable K-run step over stacked states and batches (no jit, no shardings)."""
    if strategy in ("vmap", "shard"):
        return jax.vmap(step_fn)
    if strategy == "map":
        def mapped(states, x, y, w, extra):
            return jax.lax.map(lambda a: step_fn(*a), (states, x, y, w, extra),
                               batch_size=map_batch_size)
        return mapped
    raise ValueError(f"no K-run body for strategy {strategy!r}")


def _shardings(mesh: Mesh, scan: bool):
    """(state, x, w, metrics) shardings for 'shard': K over 'runs', each batch over 'data'."""
    lead = (None,) if scan else ()
    runs = NamedSharding(mesh, P("runs"))
    batch = NamedSharding(mesh, P(*lead, "runs", "data"))
    metrics = NamedSharding(mesh, P(*lead, "runs"))
    return runs, batch, metrics


def _check_map_batch_size(map_batch_size) -> None:
    if map_batch_size is not None and (isinstance(map_batch_size, bool)
                                       or not isinstance(map_batch_size, (int, np.integer))
                                       or map_batch_size < 1):
        raise ValueError(f"map_batch_size must be a positive int or None, got {map_batch_size!r}")


@functools.cache
def make_k_step(step_fn: StepFn, strategy: str, map_batch_size: int | None = None,
                mesh: Mesh | None = None):
    """A K-run step ``(states, x, y, w, extra=None) -> (states, metrics)`` for one strategy.

    Every input has a leading axis K: ``states`` stacked (:func:`stack`), ``x`` of shape
    ``(K, B, ...)``, ``y`` and ``w`` of shape ``(K, B)``, every ``extra`` leaf ``(K, ...)``.
    ``metrics`` leaves have shape ``(K,)``. Cached per arguments, and ``jit`` caches compilations
    per input shapes, so steps and calls of one shape never recompile.

    Args:
        step_fn: single-run step from :func:`train.make_train_step`.
        strategy: ``"vmap"``, ``"map"``, ``"loop"``, ``"spread"`` or ``"shard"`` (``"auto"`` is
            resolved by :func:`fit_many`, which sees the shapes).
        map_batch_size: for ``"map"``: runs vmapped at a time (None: one at a time).
        mesh: for ``"shard"``: a mesh with a ``runs`` axis whose size divides K; for
            ``"spread"``: the devices to place runs on (None: every device).
    """
    _check_map_batch_size(map_batch_size)
    if strategy in ("loop", "spread"):
        plan = Plan(strategy)

        def loop(states, x, y, w, extra=None):
            carrier = to_carrier(plan, states, mesh)
            carrier, metrics = k_call(plan, step_fn, mesh, carrier, x, y, w,
                                      {} if extra is None else extra)
            return finish(carrier, plan, len(carrier)), metrics
        return loop
    if strategy in ("vmap", "map"):
        jitted = jax.jit(_k_body(step_fn, strategy, map_batch_size))
        return lambda states, x, y, w, extra=None: jitted(states, x, y, w,
                                                          {} if extra is None else extra)
    if strategy == "shard":
        check_mesh(mesh)
        runs, batch, metrics = _shardings(mesh, scan=False)
        jitted = jax.jit(jax.vmap(step_fn), in_shardings=(runs, batch, batch, batch, runs),
                         out_shardings=(runs, metrics))

        def sharded(states, x, y, w, extra=None):
            k = num_runs(states)
            if k % axis_size(mesh, "runs"):
                raise ValueError(f"strategy 'shard': K={k} runs is not divisible by the mesh's "
                                 f"runs axis ({axis_size(mesh, 'runs')}); fit_many pads with no-op "
                                 "runs, a direct caller must pad")
            return jitted(states, x, y, w, {} if extra is None else extra)
        return sharded
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {_CONCRETE} (or 'auto' in "
                     "fit_many)")


@functools.cache
def _k_epoch(step_fn: StepFn, strategy: str, map_batch_size: int | None, mesh: Mesh | None):
    """Compiled whole epoch ``(states, X, Y, idx, w) -> (states, metrics)`` as one ``lax.scan``.

    ``X``/``Y`` are the device-resident pool (images, labels); ``idx`` and ``w`` have shape
    ``(num_batches, K, B)``; each scan step gathers its K batches on device, so no host round-trip
    happens inside the epoch. ``metrics`` leaves have shape ``(num_batches, K)``.
    """
    body = _k_body(step_fn, strategy, map_batch_size)

    def epoch(states, X, Y, idx, w):
        def one(s, batch):
            i, wb = batch
            return body(s, X[i], Y[i], wb, {})
        return jax.lax.scan(one, states, (idx, w))

    if strategy != "shard":
        return jax.jit(epoch)
    runs, batch, metrics = _shardings(mesh, scan=True)
    rep = NamedSharding(mesh, P())
    return jax.jit(epoch, in_shardings=(runs, rep, rep, batch, batch),
                   out_shardings=(runs, metrics))


@functools.cache
def _single_epoch(step_fn: StepFn):
    """Like :func:`_k_epoch` for one run (the loop strategy): idx, w of shape (num_batches, B)."""

    def epoch(state, X, Y, idx, w):
        def one(s, batch):
            i, wb = batch
            return step_fn(s, X[i], Y[i], wb, {})
        return jax.lax.scan(one, state, (idx, w))

    return jax.jit(epoch)


# --- memory ---------------------------------------------------------------------------------------


class RunsMemoryError(MemoryError):
    """A requested strategy needs more device memory than the limit.

    Attributes:
        needed: bytes the compiled program needs (arguments + outputs − aliased + temporaries).
        available: the limit in bytes.
    """

    def __init__(self, message: str, needed: int, available: int):
        super().__init__(message)
        self.needed = needed
        self.available = available


def memory_report(fn, *args) -> dict[str, int]:
    """Device memory of one call of ``fn(*args)``, from XLA's compiled memory analysis.

    ``fn`` is jitted if it is not already (a jitted function keeps its shardings); ``args`` may be
    arrays or ``jax.ShapeDtypeStruct``\\ s. Works on CPU, GPU and TPU.

    Returns:
        Bytes: ``argument``, ``output``, ``alias`` (outputs that reuse argument buffers), ``temp``
        (scratch), ``needed`` = argument + output − alias + temp (what must fit at once),
        ``peak`` (XLA's own peak estimate, 0 where the backend gives none) and ``state`` (bytes of
        ``args[0]``, by convention the — possibly stacked — train state).
    """
    lowerable = fn if hasattr(fn, "lower") else jax.jit(fn)
    stats = lowerable.lower(*args).compile().memory_analysis()
    arg, out = int(stats.argument_size_in_bytes), int(stats.output_size_in_bytes)
    alias, temp = int(stats.alias_size_in_bytes), int(stats.temp_size_in_bytes)
    return {
        "argument": arg, "output": out, "alias": alias, "temp": temp,
        "needed": arg + out - alias + temp,
        "peak": int(getattr(stats, "peak_memory_in_bytes", 0) or 0),
        "state": tree_bytes(args[0]) if args else 0,
    }


def default_memory_limit() -> int | None:
    """The first device's ``memory_stats()['bytes_limit']``; None where not reported (CPU)."""
    stats = jax.devices()[0].memory_stats()
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), tree)


def strategy_memory(step_fn: StepFn, strategy: str, states, x, y, w, extra=None, *,
                    map_batch_size: int | None = None, mesh: Mesh | None = None) -> int:
    """Bytes one K-run step of ``strategy`` needs on a device, for stacked inputs of these shapes.

    For ``"loop"``: one run's step plus the other K−1 states held on the device meanwhile (for
    ``"spread"``: the other states on the fullest device).
    Compiling for the analysis is the expensive part: the last 64 answers are kept.
    """
    leaves, treedef = jax.tree.flatten(_abstract((states, x, y, w, extra or {})))
    return _strategy_memory(step_fn, strategy, map_batch_size if strategy == "map" else None,
                            mesh, treedef, tuple(leaves))


@functools.lru_cache(maxsize=64)
def _strategy_memory(step_fn, strategy, map_batch_size, mesh, treedef, leaves) -> int:
    states, x, y, w, extra = jax.tree.unflatten(treedef, leaves)
    k = num_runs(states)
    if strategy in ("loop", "spread"):
        one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype),
                           (states, x, y, w, extra))
        single = memory_report(step_fn, *one)["needed"]
        held = k if strategy == "loop" else -(-k // len(spread_devices(mesh)))
        return single + (held - 1) * tree_bytes(one[0])
    if strategy == "shard":
        check_mesh(mesh)
        runs, batch, metrics = _shardings(mesh, scan=False)
        fn = jax.jit(jax.vmap(step_fn), in_shardings=(runs, batch, batch, batch, runs),
                     out_shardings=(runs, metrics))
        return memory_report(fn, states, x, y, w, extra)["needed"]
    return memory_report(jax.jit(_k_body(step_fn, strategy, map_batch_size)), states, x, y, w,
                         extra)["needed"]


def largest_fitting_map_batch(step_fn: StepFn, states, x, y, w, limit: int,
                              extra=None) -> int | None:
    """The largest ``b`` in [1, K) with ``lax.map(batch_size=b)`` within ``limit`` bytes, else None.

    Interpolates linearly between the measured needs of ``b = 1`` and ``b = K`` (vmap), then
    confirms with the compiled analysis, stepping down until it fits.
    """
    k = num_runs(states)
    need1 = strategy_memory(step_fn, "map", states, x, y, w, extra, map_batch_size=1)
    if need1 > limit:
        return None
    if k <= 2:
        return 1
    needk = strategy_memory(step_fn, "vmap", states, x, y, w, extra)
    per_run = max((needk - need1) / (k - 1), 1.0)
    b = int(min(k - 1, max(1, 1 + (limit - need1) // per_run)))
    while b > 1 and strategy_memory(step_fn, "map", states, x, y, w, extra,
                                    map_batch_size=b) > limit:
        b -= 1
    return b


# --- choosing a strategy --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """A resolved strategy (vmap/map/loop/shard) and, for map, its batch size."""

    strategy: str
    map_batch_size: int | None = None


def choose_strategy(timings: dict[Plan, float], margin: float = 0.05) -> Plan:
    """The fastest plan, but never one slower than the loop.

    Args:
        timings: seconds per K-run step for each candidate plan; must contain the loop plan.
        margin: a non-loop plan must beat the loop by this fraction to be picked, so timing noise
            cannot trade the loop for something equally fast but riskier.

    Raises:
        ValueError: no loop timing to compare against.
    """
    loop = [p for p in timings if p.strategy == "loop"]
    if not loop:
        raise ValueError(f"choose_strategy needs a 'loop' timing as the baseline, got "
                         f"{sorted(p.strategy for p in timings)}")
    base = timings[loop[0]]
    best = min(timings, key=lambda p: (timings[p], p.strategy != "loop"))
    return best if timings[best] <= (1.0 - margin) * base else loop[0]


def _plan_call(plan: Plan, step_fn, states, x, y, w, extra, mesh) -> Callable[[], Any]:
    """A no-argument function running one K-run step of ``plan`` on these inputs."""
    carrier = to_carrier(plan, states, mesh)
    return lambda: k_call(plan, step_fn, mesh, carrier, x, y, w, extra)


def _measure_plans(plans: Sequence[Plan], step_fn, states, x, y, w, extra, mesh,
                   rounds: int = 3) -> dict[Plan, float]:
    """Seconds per K-run step of each plan on these inputs: best of ``rounds`` after compiling.

    The rounds interleave the plans (loop, vmap, map, loop, vmap, ...), so a burst of load from
    other processes slows every plan alike instead of one. A plan whose first timed step is over
    3× the loop's is not timed again: it has lost (on a 2-core CPU, ``map`` of the small CNN is
    ~50× slower than the loop, and each of its steps takes seconds).
    """
    calls = {p: _plan_call(p, step_fn, states, x, y, w, extra, mesh) for p in plans}
    for call in calls.values():
        jax.block_until_ready(call())  # compile and warm up
    best = {p: float("inf") for p in plans}
    loop = next(p for p in plans if p.strategy == "loop")
    for r in range(rounds):
        for p, call in calls.items():
            if r > 0 and p != loop and best[p] > 3.0 * best[loop]:
                continue
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            best[p] = min(best[p], time.perf_counter() - t0)
    return best


def resolve_strategy(step_fn: StepFn, states, x, y, w, extra=None, *, strategy: str = "auto",
                     map_batch_size: int | None = None, mesh: Mesh | None = None,
                     memory_limit_bytes: int | None = None, rounds: int = 3,
                     cache: dict | None = None) -> Plan:
    """The plan for stacked inputs of these shapes: ``strategy`` checked against memory, or chosen.

    For an explicit strategy, checks (if a limit is known) that it fits. For ``"auto"``: one run
    is the loop (nothing to batch); for K > 1 it drops the candidates that do not fit (replacing
    ``vmap`` by ``map`` with the largest fitting batch size), times the rest on these inputs
    (:func:`_measure_plans`) and takes :func:`choose_strategy`'s pick.

    Args:
        extra: the step's K-run ``extra`` for this batch (leaves with a leading K axis).
        cache: where to keep the picks and timings, under :func:`plan_key` (JSON-able values:
            ``{"plan": {...}, "timings": {label: seconds}}``), e.g. a ``train.Trainer``'s
            ``calibrations``; None: measure every time.

    Raises:
        RunsMemoryError: the explicit strategy, or even the loop under ``auto``, needs more bytes
            than ``memory_limit_bytes``; the message says how many are needed and available.
    """
    STRATEGIES.check(strategy)
    _check_map_batch_size(map_batch_size)
    extra = {} if extra is None else extra
    limit = memory_limit_bytes
    k = num_runs(states)

    def need(plan: Plan) -> int:
        return strategy_memory(step_fn, plan.strategy, states, x, y, w, extra,
                               map_batch_size=plan.map_batch_size, mesh=mesh)

    if strategy != "auto":
        plan = Plan(strategy, map_batch_size if strategy == "map" else None)
        if limit is not None:
            needed = need(plan)
            if needed > limit:
                raise RunsMemoryError(
                    f"strategy {strategy!r} for K={k} runs needs {needed:,} bytes of device memory "
                    f"but {limit:,} are available; use strategy='auto' (falls back to lax.map with "
                    "a batch size that fits) or a smaller map_batch_size", needed, limit)
        return plan

    if k == 1:
        return Plan("loop")  # one run: nothing to batch, the loop is the single-run step itself
    key = plan_key(step_fn, (states, x, y, w, extra), k, mesh, limit, map_batch_size)
    if cache is not None and key in cache:
        return Plan(**cache[key]["plan"])
    candidates = [Plan("loop"), Plan("vmap"), Plan("map", map_batch_size)]
    if len(spread_devices(mesh)) > 1:
        candidates.append(Plan("spread"))
    if mesh is not None and axis_size(mesh, "runs") > 1 and k % axis_size(mesh, "runs") == 0:
        candidates.append(Plan("shard"))
    if limit is not None:
        fitting = []
        for plan in candidates:
            if need(plan) <= limit:
                fitting.append(plan)
            elif plan.strategy == "vmap":
                b = largest_fitting_map_batch(step_fn, states, x, y, w, limit, extra)
                if b is not None:
                    fitting.append(Plan("map", b))
        if not any(p.strategy == "loop" for p in fitting):
            needed = need(Plan("loop"))
            raise RunsMemoryError(
                f"K={k} runs do not fit: even the loop needs {needed:,} bytes of device memory but "
                f"{limit:,} are available; run fewer runs at once", needed, limit)
        candidates = list(dict.fromkeys(fitting))
    timings = _measure_plans(candidates, step_fn, states, x, y, w, extra, mesh, rounds)
    plan = choose_strategy(timings)
    if cache is not None:
        cache[key] = {"plan": dataclasses.asdict(plan),
                      "timings": {plan_label(p): t for p, t in timings.items()}}
    return plan


def plan_label(plan: Plan) -> str:
    """``'vmap'``, ``'loop'``, ``'map:8'`` (map with its batch size)."""
    if plan.map_batch_size is None:
        return plan.strategy
    return f"{plan.strategy}:{plan.map_batch_size}"


def plan_key(step_fn: StepFn, inputs, k: int, mesh: Mesh | None, limit: int | None,
             map_batch_size: int | None) -> str:
    """The key ``auto``'s pick is kept under: a string (JSON-able, so a run directory can keep
    its picks and a resumed run recomputes a stage with the plan the first process took, to the
    last bit): backend, the step's qualified name, the inputs' shapes and dtypes, K, the mesh's
    shape, the memory limit and the map batch size. Two steps of one name (e.g. the masked
    step around two losses) share a pick for the same shapes."""
    name = getattr(step_fn, "__qualname__", type(step_fn).__qualname__)
    shape_text = str([(jax.tree_util.keystr(path), tuple(np.shape(a)), str(a.dtype))
                      for path, a in jax.tree_util.tree_flatten_with_path(inputs)[0]])
    mesh_text = None if mesh is None else dict(mesh.shape)
    d = len(spread_devices(mesh))
    devices = f"|devices={d}" if d > 1 else ""  # one device: the keys of earlier plans.json
    return (f"{jax.default_backend()}|{name}|{shape_text}|K={k}|mesh={mesh_text}|limit={limit}"
            f"|map_batch_size={map_batch_size}{devices}")


# --- running epochs (used by train.Trainer.run_epochs) --------------------------------------------


def pad_runs(tree: PyTree, k_pad: int) -> PyTree:
    """Pads a stacked tree to ``k_pad`` runs with copies of run 0 (no-op runs: fed zero weights)."""
    if not jax.tree.leaves(tree):
        return tree
    k = num_runs(tree)
    if k_pad == k:
        return tree
    return jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[:1], k_pad - k, axis=0)]),
                        tree)


def listed(plan: Plan) -> bool:
    """Whether ``plan`` carries K separate states (a list) rather than one stacked state."""
    return plan.strategy in ("loop", "spread")


def run_devices(plan: Plan, mesh: Mesh | None, k: int) -> list | None:
    """Run r's device under ``spread`` (device r mod D), else None (runs stay where they are)."""
    if plan.strategy != "spread":
        return None
    devices = spread_devices(mesh)
    return [devices[r % len(devices)] for r in range(k)]


def to_carrier(plan: Plan, states, mesh: Mesh | None = None):
    """What ``plan`` steps: the stacked states, or their list (for ``spread``, each on its run's
    device, :func:`run_devices`)."""
    if not listed(plan):
        return states
    carrier = unstack(states)
    devices = run_devices(plan, mesh, len(carrier))
    return carrier if devices is None else [jax.device_put(s, d)
                                            for s, d in zip(carrier, devices)]


def set_lr(carrier, lrs: np.ndarray, plan: Plan):
    """Writes per-run learning rates into the carrier (a list of states for the loop)."""
    if listed(plan):
        return [s.replace(opt_state=optim.set_hyperparams(s.opt_state, learning_rate=lr))
                for s, lr in zip(carrier, lrs[: len(carrier)])]
    return carrier.replace(opt_state=optim.set_hyperparams(carrier.opt_state, learning_rate=lrs))


def finish(carrier, plan: Plan, k: int):
    """The stacked states of the K real runs (drops padding runs, restacks a list on the default
    device)."""
    if listed(plan):
        return stack(jax.device_put(list(carrier), jax.devices()[0]))
    if num_runs(carrier) > k:
        return jax.tree.map(lambda a: a[:k], carrier)
    return carrier


def _run_extra(extra, r: int, devices: list | None):
    """Run r's slice of a K-run ``extra``, on run r's device under ``spread``."""
    one = jax.tree.map(lambda a: a[r], extra)
    return one if devices is None or not jax.tree.leaves(one) else jax.device_put(one, devices[r])


def k_call(plan: Plan, step_fn, mesh, carrier, x, y, w, extra):
    """One K-run step of ``plan``; metrics leaves ``(K,)``."""
    if listed(plan):
        devices = run_devices(plan, mesh, len(carrier))
        out = [step_fn(s, x[r], y[r], w[r], _run_extra(extra, r, devices))
               for r, s in enumerate(carrier)]
        # gathered on the default device without waiting for them (spread: from every device)
        metrics = jax.device_put([o[1] for o in out], jax.devices()[0])
        return [o[0] for o in out], jax.tree.map(lambda *m: jnp.stack(m), *metrics)
    return make_k_step(step_fn, plan.strategy, plan.map_batch_size, mesh)(carrier, x, y, w, extra)


def run_epoch(plan, step_fn, mesh, carrier, x_pool, y_pool, idx, w, extra_at, progress, label):
    """One epoch, one dispatch per batch (per run and batch for the loop); metrics (nb, K).

    ``idx``, ``w``: ``(num_batches, K, B)``; ``extra_at(i)``: batch i's K-run ``extra``.
    """
    out = []
    bar = tqdm(range(idx.shape[0]), desc=label, disable=not progress, leave=False, unit="batch")
    if listed(plan):
        carrier = list(carrier)  # the caller keeps the epoch's starting list
        devices = run_devices(plan, mesh, len(carrier))
        for b in bar:
            extra, row = extra_at(b), []
            for r, s in enumerate(carrier):
                carrier[r], m = step_fn(s, x_pool[idx[b, r]], y_pool[idx[b, r]], w[b, r],
                                        _run_extra(extra, r, devices))
                row.append(m)
            out.append(row)
        out = jax.device_get(out)
        return carrier, {n: np.array([[m[n] for m in row] for row in out]) for n in out[0][0]}
    fn = make_k_step(step_fn, plan.strategy, plan.map_batch_size, mesh)
    for b in bar:
        carrier, m = fn(carrier, x_pool[idx[b]], y_pool[idx[b]], w[b], extra_at(b))
        out.append(m)
    out = jax.device_get(out)
    return carrier, {n: np.stack([m[n] for m in out]) for n in out[0]}


def run_scanned_epoch(plan, step_fn, mesh, carrier, x_pool, y_pool, idx, w, progress, label):
    """One epoch as one compiled scan per dispatch (per run for the loop); metrics (nb, K)."""
    pool_x, pool_y = jnp.asarray(x_pool), jnp.asarray(y_pool)
    if plan.strategy == "shard":
        pool_x = jax.device_put(pool_x, NamedSharding(mesh, P()))
    if listed(plan):
        fn = _single_epoch(step_fn)
        carrier, out = list(carrier), []
        devices = run_devices(plan, mesh, len(carrier)) or [None] * len(carrier)
        pools = {d: (pool_x, pool_y) if d is None else jax.device_put((pool_x, pool_y), d)
                 for d in set(devices)}
        for r in tqdm(range(len(carrier)), desc=label, disable=not progress, leave=False,
                      unit="run"):
            carrier[r], m = fn(carrier[r], *pools[devices[r]], idx[:, r], w[:, r])
            out.append(m)
        out = jax.device_get(out)
        return carrier, {n: np.stack([m[n] for m in out], axis=1) for n in out[0]}
    fn = _k_epoch(step_fn, plan.strategy, plan.map_batch_size, mesh)
    carrier, m = fn(carrier, pool_x, pool_y, idx, w)
    return carrier, {n: np.asarray(v) for n, v in jax.device_get(m).items()}
