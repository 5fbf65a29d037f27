"""The lockstep engine: K runs trained at once as one batched model.

Runs share data, model shape and batching; each has its own clip, lr and seed
(runs with equal seeds share initial weights and minibatch order, so a comparison
differs only in what the user varied). Per step: forward, autograd backward,
clip (per strategy group), optimizer step. Metrics stay on the device and are read
back once per epoch. A run whose loss or gradient norm turns non-finite is marked
diverged (epoch, step) and frozen; the others go on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import clipping
from .config import Caps, RunSpec, validate_runs
from .data import Dataset, load_dataset
from .models import forward, init_params, param_names
from .optim import make_optimizer
from .records import VALUE_EDGES, EpochRecord, RunResult, group_records

_N_VALUE_BINS = len(VALUE_EDGES) + 2  # below, bins, above, NaN
# gradient elements buffered before they are binned: binning many steps in one pass is faster than a
# pass per step on small models, and the buffer (not the epoch's steps x runs x parameters) bounds memory
HIST_CHUNK = 1 << 22  # elements per side (pre / post), 16 MB each in float32
# how often (seconds of training) the engine calls its `hold` hook between steps; the stop event is
# checked every step (Event.is_set is a host-only flag read, no device sync)
HOLD_EVERY = 0.1


def value_bins(x: Tensor) -> Tensor:
    """Bin index of each float32 element on records.VALUE_EDGES, from its exponent bits.

    torch.bucketize does the same job 4-10x slower here (a binary search per element); the float's
    exponent field is floor(log2|x|) already. inf and NaN have the maximum exponent.
    """
    b = x.contiguous().view(torch.int32)
    o = ((b >> 23) & 255).sub_(127).clamp_(-15, 14).add_(15)  # 0: |x| < 2^-14 ... 29: |x| >= 2^14
    idx = torch.where(b < 0, 29 - o, o + 30)  # negative side mirrored: 0 = most negative
    return torch.where(torch.isnan(x), _N_VALUE_BINS - 1, idx).long()


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
    ):
        self.runs = list(runs)
        validate_runs(self.runs, caps)
        self.device = resolve_device(device)
        self.record = record
        self.histograms = record and histograms  # value histograms: a binning pass over every step's gradients
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
        self.names = param_names(self.model)
        per_run = [init_params(self.model, n_in, r.seed) for r in self.runs]
        self.layout = clipping.Layout([t.shape for t in per_run[0]], dev)
        # all K runs' parameters in one flat leaf [K, P]; the model sees per-tensor views of it, so autograd
        # returns one [K, P] gradient and every elementwise step (clip, mask, optimizer) is one op
        self.flat = torch.stack([self.layout.flatten([t.unsqueeze(0) for t in ts])[0] for ts in per_run])
        self.flat = self.flat.to(dev).requires_grad_(True)
        self.opt = make_optimizer([r.optim for r in self.runs], [self.flat])
        self.k = len(self.runs)
        strategies = [r.clip.strategy for r in self.runs]
        thr = torch.tensor([r.clip.threshold or 0.0 for r in self.runs], dtype=torch.float32, device=dev)
        self.clipper = clipping.Clipper(strategies, thr, self.layout)
        # distinct seeds -> their own minibatch order; runs map to a row of the order table
        self.seeds = list(dict.fromkeys(r.seed for r in self.runs))
        self.seed_row = torch.tensor([self.seeds.index(r.seed) for r in self.runs], device=dev)
        self.gens = [shuffle_generator(s) for s in self.seeds]
        self.n = self.x.shape[0]
        self.steps_per_epoch = -(-self.n // self.batch)
        self.alive = torch.ones(self.k, dtype=torch.bool, device=dev)
        self.div_step = torch.full((self.k,), -1, dtype=torch.long, device=dev)
        self.reported_dead: set[int] = set()
        self.epoch = 0

    @property
    def params(self) -> list[Tensor]:
        """Per-tensor [K, ...] views of the current parameters (detached)."""
        return self.layout.split(self.flat.detach())

    def _bin_into(self, counts: Tensor, vals: list[Tensor]) -> None:
        """Add the value-bin counts of buffered gradients (n x [K, P]) into counts [K, bins]; empties vals."""
        if not vals:
            return
        x = torch.stack(vals, 1).reshape(self.k, -1)  # [K, n*P]: one binning pass for the buffered steps
        counts.scatter_add_(1, value_bins(x), torch.ones(x.shape, dtype=torch.long, device=x.device))
        vals.clear()

    def _interrupted(self, last_hold: float) -> tuple[bool, float]:
        """Between steps: (stop now?, time of the last hold call). Host-only, no device sync."""
        if self.stop.is_set():
            return True, last_hold
        if self.hold is not None and time.perf_counter() - last_hold >= HOLD_EVERY:
            if not self.hold() or self.stop.is_set():
                return True, last_hold
            last_hold = time.perf_counter()
        return False, last_hold

    def _epoch(self) -> list[EpochRecord] | None:
        """Train one epoch and return its records; None if stopped part-way (the epoch is dropped)."""
        k, dev, rec = self.k, self.device, self.record
        # [n_seeds, N] -> each run's row of the order table
        order = torch.stack([epoch_order(g, self.n) for g in self.gens]).to(dev)
        shared = len(self.seeds) == 1
        if shared:
            xs, ys = self.x[order[0]], self.y[order[0]].expand(k, -1)
        else:
            rows = order[self.seed_row]  # [K, N]
            xs, ys = self.x[rows], self.y[rows]
        losses, pres, posts, tnorms, clipped, fracs = [], [], [], [], [], []
        pre_vals, post_vals = [], []  # buffered steps' [K, P] gradient values before / after clipping
        hist = torch.zeros(2, k, _N_VALUE_BINS, dtype=torch.long, device=dev) if self.histograms else None
        chunk = max(1, HIST_CHUNK // max(1, self.flat.numel()))  # steps buffered before binning
        base = self.epoch * self.steps_per_epoch
        last_hold = time.perf_counter()
        for s in range(self.steps_per_epoch):
            stopped, last_hold = self._interrupted(last_hold)
            if stopped:
                return None
            lo, hi = s * self.batch, min(self.n, (s + 1) * self.batch)
            xb = xs[lo:hi] if shared else xs[:, lo:hi]
            pred = forward(self.model, self.layout.split(self.flat), xb)  # [K, B]
            loss = F.mse_loss(pred, ys[:, lo:hi], reduction="none").mean(1)  # [K] per-run MSE
            (g,) = torch.autograd.grad(loss.sum(), self.flat)  # [K, P]
            if self.histograms:
                pre_vals.append(g.clone())
            stats = self.clipper(g, self.flat.detach() if self.clipper.needs_params else None)
            ok = torch.isfinite(loss + stats.pre_norm)  # both are >= 0: the sum is finite iff both are
            self.div_step = torch.where(self.alive & ~ok, base + s, self.div_step)
            self.alive = self.alive & ok
            # a frozen run steps with zeros (its grads may hold NaN): its optimizer state stays finite
            self.opt.step([g.masked_fill(~self.alive.unsqueeze(1), 0.0)], self.alive)
            losses.append(loss.detach())
            if self.histograms:
                post_vals.append(g)
                if len(post_vals) >= chunk:
                    self._bin_into(hist[0], pre_vals)
                    self._bin_into(hist[1], post_vals)
            if rec:
                pres.append(stats.pre_norm)
                posts.append(stats.post_norm)
                tnorms.append(stats.tensor_norms)
                clipped.append(stats.clipped)
                fracs.append(stats.frac_elements)
        with torch.no_grad():
            val = (forward(self.model, self.params, self.xv) - self.yv).pow(2).mean(1)
        # one host sync per epoch: everything read back in a single transfer
        parts = [torch.stack(losses).double(), val.double(), self.div_step.double()]
        if rec:
            parts += [torch.stack(t).double() for t in (pres, posts, tnorms, clipped, fracs)]
            if self.histograms:
                self._bin_into(hist[0], pre_vals)
                self._bin_into(hist[1], post_vals)
                parts += [hist[0].double(), hist[1].double()]
        flat = torch.cat([p.reshape(-1) for p in parts]).cpu().numpy()
        cuts = np.cumsum([p.numel() for p in parts])[:-1]
        # numpy from here: per-run slicing of small host arrays is ~10x cheaper than torch indexing
        host = [c.reshape(p.shape) for c, p in zip(np.split(flat, cuts), parts, strict=True)]
        self.epoch += 1
        return self._records(host)

    def _records(self, host: list[np.ndarray]) -> list[EpochRecord]:
        s_n, e = self.steps_per_epoch, self.epoch
        loss, val, div = host[0], host[1], host[2].astype(np.int64)
        out = []
        for r in range(self.k):
            if r in self.reported_dead:
                continue
            d = int(div[r])
            diverged = None
            n_steps = s_n
            if d >= 0:
                diverged = (d // s_n + 1, d % s_n + 1)
                self.reported_dead.add(r)
                n_steps = d % s_n + 1  # the epoch's loss counts steps up to the first non-finite one
            step_loss = loss[:n_steps, r]
            kw = {}
            if self.record:
                pre, post, tn, clipped, frac = host[3:8]
                kw = dict(
                    grad_norm_pre=pre[:n_steps, r].tolist(),
                    grad_norm_post=post[:n_steps, r].tolist(),
                    layer_norms=dict(zip(self.names, tn[:n_steps, r].mean(0).tolist(), strict=True)),
                    clip_rate=float(clipped[:n_steps, r].mean()),
                    elem_clip_frac=float(frac[:n_steps, r].mean()),
                    value_hist_pre=host[8][r].astype(np.int64).tolist() if self.histograms else [],
                    value_hist_post=host[9][r].astype(np.int64).tolist() if self.histograms else [],
                )
            else:
                kw = dict(grad_norm_pre=[], grad_norm_post=[], layer_norms={}, clip_rate=0.0, elem_clip_frac=0.0)
            out.append(
                EpochRecord(
                    run=r,
                    label=self.runs[r].name,
                    epoch=e,
                    train_loss=float(step_loss.mean()),
                    val_loss=float(val[r]),
                    wall_time=time.perf_counter() - self.t0,
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
