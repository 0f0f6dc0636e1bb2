"""K pipelines as one batched run: forget-set sizes (or split seeds) side by side.

Each variant of the config is an ordinary pipeline run (its own run directory, checkpoints and
results, so it resumes like any run) executing in its own thread. Every training loop the
variants enter (:func:`train.fit`, through pruning, unlearning, un-pruning and the gold standard)
is handed to one :class:`FitBatcher`: when every live variant is waiting in a training loop, the
waiting loops are grouped by what they share (step function, data, schedule length, batch size,
data-order pool, start epoch), identical requests are computed once (e.g. the original model of
a forget-fraction sweep, which does not depend on the forget set), and each group of distinct
runs is stacked and trained by :func:`runs.fit_many` with the chosen strategy. A loop that cannot
be batched (per-example extras, per-epoch labels, snapshots after epoch 0) runs alone.

Since run k of ``fit_many`` equals ``fit`` of that run, every variant's results equal those of
its own ``unprune-jax run`` to float tolerance (exactly, under ``strategy='loop'``). Stage times
in a sweep are wall times of the batched computation, shared by the variants.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from . import checkpoint as ckpt
from .registry import unknown_name_error
from . import optim
from . import runs
from .config import Config, from_dict
from .data import load_dataset
from .train import FIT_HOOK, DivergenceError, fit


def _digest(*arrays) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.asarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@dataclasses.dataclass(eq=False)
class _Request:
    args: tuple  # state, step_fn, dataset, indices, cfg
    kwargs: dict
    result: Any = None
    error: BaseException | None = None
    done: bool = False

    def group_key(self):
        """Requests with equal keys can be stacked into one ``fit_many`` call."""
        _, step_fn, dataset, _, cfg = self.args
        kw = self.kwargs
        pool = None if kw["order_pool"] is None else _digest(kw["order_pool"])
        labels = None if kw["labels"] is None else _digest(kw["labels"])
        return (id(step_fn), id(dataset), cfg.epochs, cfg.batch_size, pool, labels,
                kw["start_epoch"], tuple(kw["snapshot_epochs"]))

    def identity_key(self):
        """Requests with equal keys compute exactly the same thing."""
        state, _, _, indices, cfg = self.args
        return (self.group_key(), cfg, _digest(indices),
                _digest(*jax.tree.leaves(jax.device_get(state))))


def _batchable(kw: dict) -> bool:
    return (not kw["extras"] and not kw["constants"] and not callable(kw["labels"])
            and set(kw["snapshot_epochs"]) <= {0})


class FitBatcher:
    """Takes over ``train.fit`` in K worker threads and batches their training loops.

    Install it in each worker with ``train.FIT_HOOK.set(batcher)`` and call :meth:`leave` when
    the worker finishes (or fails), so the others stop waiting for it.
    """

    def __init__(self, n_workers: int, *, strategy: str = "auto", progress: bool = True):
        self._cond = threading.Condition()
        self._live = n_workers
        self._waiting: list[_Request] = []
        self.strategy = strategy
        self.progress = progress
        self.stats = {"requests": 0, "computed": 0, "batched_calls": 0, "alone": 0}

    def __call__(self, state, step_fn, dataset, indices, cfg, **kw):
        self.stats["requests"] += 1
        if not _batchable(kw):
            self.stats["alone"] += 1
            return self._alone(state, step_fn, dataset, indices, cfg, **kw)
        req = _Request((state, step_fn, dataset, indices, cfg), kw)
        with self._cond:
            self._waiting.append(req)
            self._maybe_execute()
            while not req.done:
                self._cond.wait()
        if req.error is not None:
            raise req.error
        return req.result

    def leave(self) -> None:
        """The calling worker is done: it will not enter another training loop."""
        with self._cond:
            self._live -= 1
            self._maybe_execute()

    # -- with the lock held ---------------------------------------------------------------------

    def _maybe_execute(self) -> None:
        if not self._waiting or len(self._waiting) < self._live:
            return
        waiting, self._waiting = self._waiting, []
        groups: dict[Any, list[_Request]] = {}
        for r in waiting:
            groups.setdefault(r.group_key(), []).append(r)
        for group in groups.values():
            self._execute_group(group)
        self._cond.notify_all()

    def _execute_group(self, group: list[_Request]) -> None:
        distinct: dict[Any, list[_Request]] = {}
        for r in group:
            distinct.setdefault(r.identity_key(), []).append(r)
        leaders = [rs[0] for rs in distinct.values()]
        self.stats["computed"] += len(leaders)
        try:
            outs = self._fit_leaders(leaders)
        except BaseException as e:  # noqa: BLE001 - handed to each waiting worker
            outs = [e] * len(leaders)
        for rs, out in zip(distinct.values(), outs):
            for r in rs:
                if isinstance(out, BaseException):
                    r.error = out
                else:
                    r.result = out
                r.done = True

    def _fit_leaders(self, leaders: list[_Request]) -> list:
        if len(leaders) == 1:
            return [self._alone_or_error(leaders[0])]
        self.stats["batched_calls"] += 1
        _, step_fn, dataset, _, _ = leaders[0].args
        kw = leaders[0].kwargs
        states = [r.args[0] for r in leaders]
        cfgs = [r.args[4] for r in leaders]
        try:
            token = FIT_HOOK.set(None)
            try:
                stacked, histories = runs.fit_many(
                    runs.stack(states), step_fn, dataset, [r.args[3] for r in leaders], cfgs,
                    order_pool=kw["order_pool"], strategy=self.strategy, labels=kw["labels"],
                    start_epoch=kw["start_epoch"],
                    progress=self.progress, desc=f"{len(leaders)} runs: {kw['desc']}")
            finally:
                FIT_HOOK.reset(token)
        except DivergenceError:
            # one run diverged and fit_many stopped them all: redo each alone, so the others
            # finish and the diverged one gets its own error with its own last good state
            return [self._alone_or_error(r) for r in leaders]
        outs = []
        for state0, cfg, state, hist in zip(states, cfgs, runs.unstack(stacked), histories):
            snaps = {}
            if 0 in kw["snapshot_epochs"]:
                snaps[0] = state0.replace(opt_state=optim.set_hyperparams(
                    state0.opt_state, momentum=cfg.momentum, weight_decay=cfg.weight_decay))
            outs.append((state, hist, snaps))
        return outs

    def _alone_or_error(self, r: _Request):
        try:
            return self._alone(*r.args, **r.kwargs)
        except Exception as e:  # noqa: BLE001 - raised in the worker that asked
            return e

    @staticmethod
    def _alone(state, step_fn, dataset, indices, cfg, **kw):
        token = FIT_HOOK.set(None)
        try:
            return fit(state, step_fn, dataset, indices, cfg, **kw)
        finally:
            FIT_HOOK.reset(token)


def variants(cfg: Config, *, forget_fractions: Sequence[float] | None = None,
             seeds: Sequence[int] | None = None) -> list[tuple[str, Config]]:
    """``(label, config)`` per variant: every forget fraction × split seed (``data.seed``)."""
    if forget_fractions is None and seeds is None:
        raise ValueError("a sweep varies forget_fractions, seeds or both; got neither")
    for name, values in (("forget_fractions", forget_fractions), ("seeds", seeds)):
        if values is not None and not len(values):
            raise ValueError(f"{name} is empty")
        if values is not None and len(set(values)) != len(values):
            raise ValueError(f"{name} repeat: {list(values)}")
    for f in forget_fractions or ():
        if not 0.0 < float(f) < 1.0:
            raise ValueError(f"forget fraction must be in (0, 1), got {f!r}")
    if forget_fractions is not None and cfg.data.forget_classes:
        raise ValueError("a forget-fraction sweep needs data.forget_classes unset")
    d = cfg.to_dict()["data"]
    out = []
    for f in forget_fractions if forget_fractions is not None else [None]:
        for seed in seeds if seeds is not None else [None]:
            dv, parts = dict(d), []
            if f is not None:
                dv["forget_fraction"] = float(f)
                parts.append(f"forget{float(f):g}")
            if seed is not None:
                dv["seed"] = int(seed)
                parts.append(f"seed{int(seed)}")
            out.append(("_".join(parts),
                        dataclasses.replace(cfg, data=from_dict(type(cfg.data), dv, where="data"))))
    return out


@ckpt.with_run_dir_lock
def run_sweep(cfg: Config, run_dir: str | Path, *, forget_fractions=None, seeds=None,
              strategy: str = "auto", progress: bool = True,
              say: Callable[[str], None] = print) -> dict:
    """Runs the pipeline for K variants of ``cfg`` as one batched run; one results table.

    Each variant runs in ``run_dir/<label>`` (``forget0.05``, ``seed3``, ...) and is a complete,
    resumable pipeline run. Writes ``run_dir/sweep.json`` and ``sweep.md`` (every variant's rows
    in one table). If a variant fails, the others still finish and are written; the first error
    is raised afterwards. The sweep holds ``run_dir``'s lock, each variant its own directory's.
    """
    from . import pipeline

    if strategy not in runs.STRATEGIES:
        raise unknown_name_error("strategy", strategy, runs.STRATEGIES)
    vs = variants(cfg, forget_fractions=forget_fractions, seeds=seeds)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(cfg.data.name, cfg.data.data_dir)
    batcher = FitBatcher(len(vs), strategy=strategy, progress=progress)
    results: dict[str, dict] = {}
    errors: dict[str, BaseException] = {}
    print_lock = threading.Lock()

    def worker(label: str, vcfg: Config) -> None:
        FIT_HOOK.set(batcher)

        def vsay(msg: str) -> None:
            with print_lock:
                say("\n".join(f"[{label}] {line}" for line in str(msg).splitlines()))

        try:
            results[label] = pipeline.run(vcfg, run_dir / label, progress=False, say=vsay,
                                          dataset=dataset)
        except BaseException as e:  # noqa: BLE001 - reported after the others finish
            errors[label] = e
            vsay(f"failed: {type(e).__name__}: {e}")
        finally:
            batcher.leave()

    say(f"sweep: {len(vs)} variants ({', '.join(l for l, _ in vs)}), strategy {strategy}")
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=v, name=v[0], daemon=True) for v in vs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = [{"variant": label, **{k: v for k, v in row.items() if k != "mask_metrics"}}
            for label, _ in vs if label in results for row in results[label]["rows"]]
    summary = {
        "variants": [label for label, _ in vs],
        "strategy": strategy,
        "rows": rows,
        "IoU_original_gold": {l: results[l]["IoU_original_gold"] for l, _ in vs if l in results},
        "noise_floor": {l: results[l]["noise_floor"] for l, _ in vs if l in results},
        "batcher": batcher.stats,
        "failed": {l: f"{type(e).__name__}: {e}" for l, e in errors.items()},
        "total_seconds": time.perf_counter() - t0,
    }
    ckpt.save_json(run_dir / "sweep.json", summary)
    table = pipeline.format_table(rows, first=("variant", "variant"))
    lines = [f"{l}: IoU(original, gold) = {v:.4f}" for l, v in summary["IoU_original_gold"].items()]
    text = (f"# Sweep\n\n{table}\n\n" + "\n".join(lines) +
            f"\n\ntraining loops: {batcher.stats['requests']} requested, "
            f"{batcher.stats['computed']} computed (identical ones shared), "
            f"{batcher.stats['batched_calls']} batched fit_many calls, "
            f"{batcher.stats['alone']} not batchable; {summary['total_seconds']:.0f} s in all\n")
    (run_dir / "sweep.md").write_text(text)
    say("\n" + text + f"\nsweep results in {run_dir / 'sweep.md'}")
    if errors:
        label, e = next(iter(errors.items()))
        raise RuntimeError(f"sweep variant {label!r} failed ({len(errors)} of {len(vs)} "
                           f"failed; the others' results are in {run_dir}): {e}") from e
    return summary
