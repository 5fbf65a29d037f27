"""The lockstep engine: K runs trained at once as one batched model.

Runs share data, model shape and batching; each has its own clip, lr and seed
(runs with equal seeds share initial weights and minibatch order, so a comparison
differs only in what the user varied). Per step: forward, backward, clip (per
strategy group), optimizer step, all on one flat [K, P] parameter buffer and one
[K, P] gradient buffer. The MLP is seed-grouped with a hand-written backward
(grouped.py: runs sharing a seed share one wide GEMM); the RNN uses autograd.
Metrics stay on the device and are read back once per epoch. A run whose loss or
gradient norm turns non-finite is marked diverged (epoch, step) and frozen; the
others go on, and at the end of that epoch it leaves the batch (its records stand).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import clipping
from .config import Caps, RunSpec, validate_runs
from .cost import HIST_CHUNK, DataShape, check_runs
from .data import Dataset, load_dataset
from .engine_support import N_VALUE_BINS as _N_VALUE_BINS
from .engine_support import compile_unsupported, read_back, reuse_freed_memory, value_bins  # noqa: F401
from .grouped import GroupedMLP, keeps_bits
from .models import forward, init_params, param_names
from .optim import make_optimizer
from .records import EpochRecord, RunResult, group_records

# HIST_CHUNK (clipviz/cost.py, which prices it): gradient elements buffered before they are binned: binning
# many steps in one pass is faster than a pass per step on small models, and the buffer (not the epoch's
# steps x runs x parameters) bounds memory
# how often (seconds of training) the engine calls its `hold` hook between steps; the stop event is
# checked every step (Event.is_set is a host-only flag read, no device sync)
HOLD_EVERY = 0.1


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from .config import ConfigError

        raise ConfigError("device 'cuda' asked for, but this machine has no CUDA GPU (use 'auto' or 'cpu')")
    return torch.device(device)


SHUFFLE_OFFSET = 1_000_003  # the minibatch stream of seed s is seeded s + this (the exported code says so too)


def shuffle_generator(seed: int) -> torch.Generator:
    """Minibatch order for a seed: its own stream, apart from the init stream, so both are reproducible."""
    return torch.Generator().manual_seed(seed + SHUFFLE_OFFSET)


def epoch_order(gen: torch.Generator, n: int) -> Tensor:
    return torch.randperm(n, generator=gen)


class Engine:
    """Iterate over an Engine to train; it yields EpochRecords, one per live run, after each epoch."""

    def __init__(
        self,
        runs: Sequence[RunSpec],
        *,
        device: str = "auto",
        record: bool = True,
        dataset: Dataset | None = None,
        caps: Caps | None = None,
        stop: threading.Event | None = None,
        threads: int | None = 1,
        histograms: bool = True,
        hold: Callable[[], bool] | None = None,
        keep_records: bool = True,  # the caller keeps every record (priced by the cost model); sweeps do not
        compile: bool = False,
        detail: bool = True,  # post-clip and per-layer norms per step: the dashboard draws them, a sweep keeps neither
        compact: bool = True,  # drop diverged runs from the batch between epochs (False: they stay in it, frozen)
    ):
        self.runs = list(runs)
        caps = caps or Caps.from_env()
        priced = dict(histograms=record and histograms, keep_records=keep_records)
        validate_runs(self.runs, caps, **priced)  # before anything is allocated (a CSV is priced once read)
        self.device = resolve_device(device)
        reuse_freed_memory()
        self.record = record
        self.detail = record and detail  # measured only when recorded
        self.histograms = record and histograms  # value histograms: a binning pass over every step's gradients
        # with histograms, the per-tensor norms are measured from the histogram buffer's pre-clip gradients, many
        # steps in one pass where they are binned, not in every step (measured: ~40 µs a step saved at K=2-3)
        self.layers_from_hist = self.detail and self.histograms
        # stop is checked between steps: a stopped epoch is dropped whole (no record pretends a part
        # of an epoch was the epoch); records yielded before it stand
        self.stop = stop or threading.Event()
        # called between steps every HOLD_EVERY s of training; may block (a pause); False means stop
        self.hold = hold
        # torch's default intra-op threads oversubscribe a small CPU on these tiny models: measured here,
        # a 3-run tutorial job took 9.3 s with 2 threads beside one busy process and 0.15 s with 1 thread
        self.threads = threads
        first = self.runs[0]
        self.model, self.epochs, self.batch = first.model, first.optim.epochs, first.optim.batch_size
        ds = dataset if dataset is not None else load_dataset(first.data, caps)
        self.dataset = ds
        dev = self.device
        self.x, self.y = ds.x_train.to(dev), ds.y_train.to(dev)
        self.xv, self.yv = ds.x_val.to(dev), ds.y_val.to(dev)
        n_in = ds.x_train.shape[-1]
        validate_runs(self.runs, caps, n_in=n_in)  # the caps again, on the data's real width (a CSV's columns)
        seq, n_tr = (ds.x_train.shape[1] if ds.x_train.dim() == 3 else 1), ds.x_train.shape[0]
        check_runs(self.runs, caps, DataShape(n_tr + ds.x_val.shape[0], n_in, seq, n_tr), **priced)
        self.names = param_names(self.model)
        self.k = k = len(self.runs)
        # inside, runs sit in blocks of one strategy (the clipper's groups are then views, not gathers) and,
        # within a block, runs that share a seed sit next to each other (they share data rows: one wide
        # GEMM); `perm[i]` is the caller's index of inner run i, records go out under the caller's index
        self.seeds = list(dict.fromkeys(r.seed for r in self.runs))
        strategies = list(dict.fromkeys(r.clip.strategy for r in self.runs))
        key = [(strategies.index(r.clip.strategy), self.seeds.index(r.seed)) for r in self.runs]
        self.perm = sorted(range(k), key=key.__getitem__)  # stable
        self.inner = [self.runs[i] for i in self.perm]
        self._seed_groups()
        per_run = [init_params(self.model, n_in, r.seed) for r in self.inner]
        self.layout = clipping.Layout([t.shape for t in per_run[0]], dev)
        # all K runs' parameters in one flat buffer [K, P] and their gradients in another: every
        # elementwise step (clip, mask, optimizer) is one op over all runs and tensors
        self.flat = torch.stack([self.layout.flatten([t.unsqueeze(0) for t in ts])[0] for ts in per_run]).to(dev)
        self.grad = torch.zeros_like(self.flat)
        self.opt = make_optimizer([r.optim for r in self.inner], self.flat)
        thr = torch.tensor([r.clip.threshold or 0.0 for r in self.inner], dtype=torch.float32, device=dev)
        clips = [r.clip.strategy for r in self.inner]
        self.clipper = clipping.Clipper(
            clips, thr, self.layout, detail=self.detail, layer_norms=not self.layers_from_hist
        )
        if self.model.kind == "mlp":  # hand-written backward; the inputs carry a ones column for the bias
            self.net = GroupedMLP(self.model.activation, self.layout, self.flat, self.grad, self.n_groups)
            self.x = torch.cat([self.x, torch.ones_like(self.x[:, :1])], 1)
            self.xv = torch.cat([self.xv, torch.ones_like(self.xv[:, :1])], 1)
        else:  # the RNN: autograd through models.forward
            self.net = None
            self.flat.requires_grad_(True)
        self.gens = [shuffle_generator(s) for s in self.seeds]
        self.n = self.x.shape[0]
        self.steps_per_epoch = -(-self.n // self.batch)
        self.alive = torch.ones(k, dtype=torch.bool, device=dev)  # inner order
        self.div_step = torch.full((k,), -1, dtype=torch.long, device=dev)  # inner order, -1 = alive
        self.reported_dead: set[int] = set()  # caller's indices
        self.epoch = 0
        self._hist_buffers()
        # diverged runs leave the batch at the end of the epoch they are reported in (compact=False: they stay,
        # frozen, as before; the tests compare both); their last parameters are kept for `params`
        self.compact = compact
        self.frozen: dict[int, Tensor] = {}  # caller's index -> a diverged run's parameters [P], once compacted
        self._refused: list[int] | None = None  # the live runs of the last compaction refused (bits would change)
        # a step's numbers in the epoch's table: loss, finite, then (recording) pre, clipped, frac, (detail) post
        self.n_scalars = 2 + (3 if record else 0) + (1 if self.detail else 0)
        # optional torch.compile (off by default: the dashboard never waits on a compile)
        self._setup_compile(compile)

    @staticmethod
    def _group_width(inner: list[RunSpec]) -> int:
        """d: the gcd of the same-seed stretches of these runs (in inner order), so all seed groups are one size."""
        return math.gcd(*(len(list(g)) for _, g in itertools.groupby(r.seed for r in inner)))

    def _seed_groups(self) -> None:
        """The inner runs' seed groups: G groups of d runs with one seed each, and each group's and run's row
        of the epoch's order table."""
        d = self._group_width(self.inner)
        self.n_groups = len(self.inner) // d
        group_seed = [self.seeds.index(self.inner[g * d].seed) for g in range(self.n_groups)]
        self.group_seed = torch.tensor(group_seed, device=self.device)  # [G] row of the epoch's order table
        self.one_group_per_seed = group_seed == list(range(len(self.seeds)))  # then the order table is per group
        self.run_seed = torch.tensor([self.seeds.index(r.seed) for r in self.inner], device=self.device)  # [K]

    def _hist_buffers(self) -> None:
        """The value histograms' gradient buffers for the inner runs (when histograms are recorded)."""
        k, dev = len(self.inner), self.device
        self.hist_steps = max(1, HIST_CHUNK // max(1, self.flat.numel()))  # steps buffered before binning
        if self.histograms:
            shape = (min(self.hist_steps, self.steps_per_epoch), k, self.layout.numel)
            self.hist_buf = torch.empty((2, *shape), device=dev)  # pre / post clip values of buffered steps
            self.hist_slots = list(zip(self.hist_buf[0], self.hist_buf[1], strict=True))  # views, built once
            # run k's pre-clip counts at k*bins, its post-clip counts after all K pre-clip ones: [2, 1, K, 1]
            self.bin_offset = torch.arange(2 * k, device=dev, dtype=torch.int32).view(2, 1, k, 1) * _N_VALUE_BINS

    def _compact(self, div: np.ndarray) -> None:
        """Drop the runs that diverged (div >= 0, inner order; reported this epoch) from the batch.

        Every per-run buffer is cut to the live rows, in the same order: the parameters, the optimizer's and
        the stateful clippers' state, the thresholds, the seed groups (their size d is recomputed), the
        histogram buffers. A frozen run would otherwise pay its share of every GEMM, clip and update to the
        end (the 3-way comparison's 'none' dies in epoch 1). Not under torch.compile (a new batch shape is a
        new compile)."""
        keep = [i for i, d in enumerate(div) if d < 0]
        if not self.compact or self._compiling or len(keep) == len(self.perm) or not keep:
            return
        if self.net is not None:  # the MLP's wide GEMMs change shape: only where that changes no live run's bits
            d_old, d_new = len(self.perm) // self.n_groups, self._group_width([self.inner[i] for i in keep])
            batches = sorted({self.batch, self.n - (self.steps_per_epoch - 1) * self.batch})
            args = (self.model.activation, self.layout, d_old, d_new, keep, len(self.perm), batches, self.xv)
            if keep == self._refused or not keeps_bits(*args):
                self._refused = keep  # checked once per set of live runs
                return
        flat = self.flat.detach()
        for i, r in enumerate(self.perm):
            if div[i] >= 0:
                self.frozen[r] = flat[i].clone()
        rows = torch.tensor(keep, device=self.device)
        self.perm, self.inner = [self.perm[i] for i in keep], [self.inner[i] for i in keep]
        self.flat = flat.index_select(0, rows)
        self.grad = torch.zeros_like(self.flat)
        self.opt = self.opt.subset(self.flat, rows)
        self.clipper = self.clipper.subset(keep)
        self.alive, self.div_step = self.alive[rows], self.div_step[rows]
        self._seed_groups()
        if self.net is not None:
            self.net = GroupedMLP(self.model.activation, self.layout, self.flat, self.grad, self.n_groups)
        else:
            self.flat.requires_grad_(True)
        self._hist_buffers()

    @property
    def params(self) -> list[Tensor]:
        """Per-tensor [K, ...] copies of the current parameters, in the caller's run order (a diverged run's
        as it was when it left the batch)."""
        live = dict(zip(self.perm, self.flat.detach(), strict=True))
        return self.layout.split(torch.stack([live[r] if r in live else self.frozen[r] for r in range(self.k)]))

    def _bin_into(self, counts: Tensor, n: int, table: Tensor, s0: int) -> None:
        """Add the value-bin counts of the n buffered steps (pre and post) into counts [2, K, bins]; with detail,
        their per-tensor pre-clip norms into rows s0 .. s0+n of the epoch's table [S, columns, K]."""
        buf = self.hist_buf[:, :n]  # [2, n, K, P]
        idx = value_bins(buf).add_(self.bin_offset)
        counts += torch.bincount(idx.view(-1), minlength=counts.numel()).view(counts.shape)
        if self.layers_from_hist:  # the same norms, from the same copy of g, as the clipper's per step
            tn = self.layout.tensor_norms(buf[0].reshape(-1, buf.shape[-1]))  # [n*K, L] float64
            table[s0 : s0 + n, self.n_scalars :].copy_(tn.view(n, -1, tn.shape[1]).transpose(1, 2))

    def _interrupted(self, last_hold: float) -> tuple[bool, float]:
        """Between steps: (stop now?, time of the last hold call). Host-only, no device sync."""
        if self.stop.is_set():
            return True, last_hold
        if self.hold is not None and time.perf_counter() - last_hold >= HOLD_EVERY:
            if not self.hold() or self.stop.is_set():
                return True, last_hold
            last_hold = time.perf_counter()
        return False, last_hold

    def _grads(self, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        """This step's per-run loss [K] and gradient [K, P]."""
        if self.net is not None:
            return self.net.loss_and_grad(xb, yb), self.grad
        pred = forward(self.model, self.layout.split(self.flat), xb)  # [K, B]
        loss = F.mse_loss(pred, yb, reduction="none").mean(1)  # [K] per-run MSE
        (g,) = torch.autograd.grad(loss.sum(), self.flat)  # [K, P]
        return loss.detach(), g

    def _step(self, xb: Tensor, yb: Tensor, pre: Tensor | None, post: Tensor | None) -> tuple[Tensor, Tensor, tuple]:
        """One step: gradients, clip, optimizer. Returns (loss [K], finite [K], ClipStats); pre/post: [K, P]
        slots for the value histograms' gradient copies, or None."""
        loss, g = self._grads(xb, yb)
        if pre is not None:
            pre.copy_(g)
        stats = self.clipper(g, self.flat.detach() if self.clipper.needs_params else None)
        ok = torch.isfinite(loss + stats.pre_norm)  # both are >= 0: the sum is finite iff both are
        self.alive &= ok
        if self._host_flags and bool(self.alive.all()):  # eager on the CPU: a flag read is free, no device sync
            self.opt.step(g, None)  # the same bits: nothing to mask, every lr times 1
        else:  # a frozen run steps with zeros (its grads may hold NaN): its optimizer state stays finite
            self.opt.step(g.masked_fill_(~self.alive.unsqueeze(1), 0.0), self.alive)
        if post is not None:
            post.copy_(g)
        return loss, ok, tuple(stats)

    def _compiled_step(self, *args) -> tuple[Tensor, Tensor, tuple]:
        """_step through torch.compile; a batch shape seen for the first time counts as compile time."""
        key = tuple(a.shape if a is not None else None for a in args)
        if key in self._compiled_shapes:
            return self._step_c(*args)
        t = time.perf_counter()
        try:
            out = self._step_c(*args)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: train on, eagerly, and say so
            self.compile_note = f"torch.compile failed ({type(exc).__name__}); training eagerly"
            self._step_fn = self._step
            return self._step(*args)
        self.compile_seconds += time.perf_counter() - t
        self._compiled_shapes.add(key)
        return out

    def _write_row(self, row: Tensor, loss: Tensor, ok: Tensor, stats: clipping.ClipStats) -> None:
        """One step's per-run numbers into its table row [columns, K]: one stack (and the layer norms, one copy)."""
        cols = [loss, ok]
        if self.record:
            cols += [stats.pre_norm, stats.clipped, stats.frac_elements]
        if self.detail:
            cols.append(stats.post_norm)
        if stats.tensor_norms is not None:  # else measured from the histogram buffer (_bin_into)
            row[self.n_scalars :].copy_(stats.tensor_norms.t())
        torch.stack(cols, out=row[: self.n_scalars] if self.detail else row)

    def _all_steps(self, xs: Tensor, ys: Tensor, table: Tensor) -> None:
        """Every step of one epoch into table [S, columns, K] (and each step's gradients into hist_buf): what
        the whole-epoch torch.compile compiles, its loop unrolled into one graph (no Python between steps)."""
        for s in range(self.steps_per_epoch):
            lo, hi = s * self.batch, min(self.n, (s + 1) * self.batch)
            slots = (self.hist_buf[0, s], self.hist_buf[1, s]) if self.histograms else (None, None)
            loss, ok, stats = self._step(xs[:, lo:hi], ys[:, lo:hi], *slots)
            self._write_row(table[s], loss, ok, clipping.ClipStats(*stats))

    def _compiled_epoch(self, xs: Tensor, ys: Tensor, table: Tensor) -> None:
        """_all_steps through torch.compile; the first call (per data shape) counts as compile time."""
        if xs.shape in self._compiled_shapes:
            return self._epoch_c(xs, ys, table)
        t = time.perf_counter()
        try:
            self._epoch_c(xs, ys, table)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: train on, eagerly, and say so
            self.compile_note = f"torch.compile failed ({type(exc).__name__}); training eagerly"
            self._epoch_c = None
            return self._all_steps(xs, ys, table)
        self.compile_seconds += time.perf_counter() - t
        self._compiled_shapes.add(xs.shape)

    def _setup_compile(self, want: bool) -> None:
        """Choose eager or compiled steps; compile_note says why a requested compile is not used (else None).

        The whole epoch compiles as one graph where nothing must run between steps (no hold hook) and every
        step's gradients fit the histogram buffer; else the step alone compiles (Python runs the loop)."""
        self._step_fn, self.compile_note, self.compile_seconds = self._step, None, 0.0
        self._epoch_c, self._compiling = None, False
        # read the alive flags on the host between steps (skips a [K, P] masked_fill with a [K, 1] mask, measured
        # 130-170 us a step at K=250, where all runs are alive): on the CPU in eager mode only, where the read
        # costs ~3 us and no device sync (not under torch.compile: a graph break)
        self._host_flags = self.device.type == "cpu"
        if not want:
            return
        why = compile_unsupported(
            self.model.kind, {r.optim.name for r in self.runs}, {r.clip.strategy for r in self.runs}
        )
        if why:
            self.compile_note = f"--compile: {why}; training eagerly"
            return
        self._compiled_shapes: set = set()
        self._compiling = True  # the batch keeps its shape (no compaction): a new shape would compile again
        self._host_flags = False
        if self.hold is None and (not self.histograms or self.hist_buf.shape[1] == self.steps_per_epoch):
            self._epoch_c = torch.compile(self._all_steps, dynamic=False)
            return
        self._step_c = torch.compile(self._step, dynamic=False)
        self._step_fn = self._compiled_step

    def _epoch_data(self) -> tuple[Tensor, Tensor]:
        """The epoch's shuffled rows: per group [G, N, ...] (mlp), else shared [N, ...] or per run [K, N, ...]."""
        order = torch.stack([epoch_order(g, self.n) for g in self.gens]).to(self.device)  # [seeds, N]
        if self.net is not None:  # one gather per seed, not per run
            o = order if self.one_group_per_seed else order[self.group_seed]
            return self.x[o], self.y[o]
        if len(self.seeds) == 1:
            return self.x[order[0]], self.y[order[0]].expand(len(self.perm), -1)
        rows = order[self.run_seed]  # [K, N]
        return self.x[rows], self.y[rows]

    def _epoch(self) -> list[EpochRecord] | None:
        """Train one epoch and return its records; None if stopped part-way (the epoch is dropped)."""
        k, dev, rec, hist = len(self.perm), self.device, self.record, self.histograms
        xs, ys = self._epoch_data()
        # per-step metrics go into buffers allocated once per epoch [S, K, ...], not lists of tiny tensors:
        # thousands of small live allocations between the big per-step temporaries fragment the CPU heap
        # (measured: peak RSS +800 MB instead of +70 MB over 500 steps of a 206k-parameter model)
        s_n = self.steps_per_epoch
        # one float64 table [S, columns, K]: loss, finite, then (recording) pre, clipped, frac, and (detail) post,
        # layer norms; a step's per-run numbers go in as ONE stack (and the layer norms as one copy), where a
        # buffer per metric costs a select and a copy each (measured: recording overhead 1.23x -> see README);
        # float64 keeps norms past float32's range
        n_cols = self.n_scalars + (len(self.names) if self.detail else 0)
        table = torch.empty(s_n, n_cols, k, dtype=torch.float64, device=dev)
        counts = torch.zeros(2, k, _N_VALUE_BINS, dtype=torch.long, device=dev) if hist else None
        alive0, n_buf = self.alive.clone(), 0
        last_hold = time.perf_counter()
        whole = self._epoch_c is not None
        if whole:  # compiled as one graph: stop is checked between epochs
            if self.stop.is_set():
                return None
            self._compiled_epoch(xs, ys, table)
            n_buf = self.steps_per_epoch if hist else 0
        shared = self.net is None and xs.dim() == self.x.dim()  # rnn, one seed: rows shared by every run
        batches = zip(xs.split(self.batch, 0 if shared else 1), ys.split(self.batch, 1), strict=True)
        for s in range(0 if whole else self.steps_per_epoch):
            stopped, last_hold = self._interrupted(last_hold)
            if stopped:
                return None
            xb, yb = next(batches)
            loss, ok, stats = self._step_fn(xb, yb, *(self.hist_slots[n_buf] if hist else (None, None)))
            self._write_row(table[s], loss, ok, clipping.ClipStats(*stats))
            if hist:
                n_buf += 1
                if n_buf == self.hist_buf.shape[1]:
                    self._bin_into(counts, n_buf, table, s + 1 - n_buf)
                    n_buf = 0
        if hist and n_buf:
            self._bin_into(counts, n_buf, table, s_n - n_buf)
        # the first non-finite step of each run that was alive when the epoch began
        bad = table[:, 1] == 0  # [S, K]
        died = alive0 & bad.any(0)
        self.div_step = torch.where(died, self.epoch * self.steps_per_epoch + bad.int().argmax(0), self.div_step)
        with torch.no_grad():
            val = self._val_loss()
        # one host sync per epoch: everything read back in a single transfer
        parts = [table, val, self.div_step]
        if hist:
            parts += [counts[0], counts[1]]
        t, val_h, div_h, *hists = read_back(parts)
        host = [t[:, 0], val_h, div_h]  # loss, val, divergence step, then pre, post, layer norms, clipped, frac
        if rec:  # without detail, post and layer norms are None
            post, layer = (t[:, 5], t[:, 6:].transpose(0, 2, 1)) if self.detail else (None, None)  # [S, K], [S, K, L]
            host += [t[:, 2], post, layer, t[:, 3], t[:, 4], *hists]
        self.epoch += 1
        recs = self._records(host)
        self._compact(div_h)
        return recs

    def _val_loss(self) -> Tensor:
        """Validation MSE per run [K] (inner order)."""
        if self.net is not None:
            return self.net.val_loss(self.xv, self.yv)
        return (forward(self.model, self.params_inner, self.xv) - self.yv).pow(2).mean(1)

    @property
    def params_inner(self) -> list[Tensor]:
        return self.layout.split(self.flat.detach())

    def _records(self, host: list[np.ndarray]) -> list[EpochRecord]:
        """EpochRecords from the host arrays (inner order), vectorised over runs, out in the caller's order."""
        s_n, e, rec, hist = self.steps_per_epoch, self.epoch, self.record, self.histograms
        loss, val, div = host[0], host[1], host[2].astype(np.int64)
        mean_loss = loss.mean(0).tolist()
        if rec:
            pre, post, tn, clipped, frac = host[3:8]
            pre_l, rate_l, frac_l = pre.T.tolist(), clipped.mean(0).tolist(), frac.mean(0).tolist()
            n_runs = len(self.perm)  # without detail: no post-clip norms, no layer norms
            post_l = post.T.tolist() if post is not None else [[] for _ in range(n_runs)]
            layer_l = tn.mean(0).tolist() if tn is not None else [None] * n_runs
            if hist:
                h_pre, h_post = host[8].astype(np.int64).tolist(), host[9].astype(np.int64).tolist()
        now = time.perf_counter() - self.t0
        inner_of = {r: i for i, r in enumerate(self.perm)}
        out = []
        for r in range(self.k):
            if r in self.reported_dead:
                continue
            i = inner_of[r]
            d = int(div[i])
            diverged, n = None, s_n
            if d >= 0:
                diverged = (d // s_n + 1, d % s_n + 1)
                self.reported_dead.add(r)
                n = d % s_n + 1  # the epoch's loss counts steps up to the first non-finite one
            kw = dict(grad_norm_pre=[], grad_norm_post=[], layer_norms={}, clip_rate=0.0, elem_clip_frac=0.0)
            if rec and n == s_n:
                kw = dict(
                    grad_norm_pre=pre_l[i],
                    grad_norm_post=post_l[i],
                    layer_norms=dict(zip(self.names, layer_l[i], strict=True)) if tn is not None else {},
                    clip_rate=rate_l[i],
                    elem_clip_frac=frac_l[i],
                )
            elif rec:
                kw = dict(
                    grad_norm_pre=pre[:n, i].tolist(),
                    grad_norm_post=post[:n, i].tolist() if post is not None else [],
                    layer_norms=dict(zip(self.names, tn[:n, i].mean(0).tolist(), strict=True))
                    if tn is not None
                    else {},
                    clip_rate=float(clipped[:n, i].mean()),
                    elem_clip_frac=float(frac[:n, i].mean()),
                )
            if hist:
                kw.update(value_hist_pre=h_pre[i], value_hist_post=h_post[i])
            out.append(
                EpochRecord(
                    run=r,
                    label=self.runs[r].name,
                    epoch=e,
                    train_loss=mean_loss[i] if n == s_n else float(loss[:n, i].mean()),
                    val_loss=float(val[i]),
                    wall_time=now,
                    diverged=diverged,
                    **kw,
                )
            )
        return out

    def __iter__(self) -> Iterator[EpochRecord]:
        self.t0 = time.perf_counter()
        if self.threads and self.device.type == "cpu":
            torch.set_num_threads(self.threads)
        while self.epoch < self.epochs and not self.stop.is_set():
            if len(self.reported_dead) == self.k:
                return  # every run diverged: nothing left to train
            recs = self._epoch()
            if recs is None:
                return  # stopped mid-epoch: the partial epoch is not reported
            yield from recs


def train(runs: Sequence[RunSpec], **kwargs) -> list[RunResult]:
    """Train to the end and return each run's records (the CLI and tests use this)."""
    runs = list(runs)
    return group_records(runs, list(Engine(runs, **kwargs)))
