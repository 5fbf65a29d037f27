"""The MLP for K runs in seed groups, with a hand-written backward pass.

Runs that share a seed see the same minibatch rows, so their first layer is ONE wide GEMM per group,
`[d*H, in+1] @ [in+1, B]` (a ones row carries the bias), instead of d tiny per-run GEMMs. Activations
are kept transposed, `[K, H, B]` (units x batch, per run), which is exactly the wide GEMM's output
`[G, d*H, B]` viewed per run, so deeper layers and the width-1 output are plain per-run `bmm`s with
no permute copies. The backward pass is written out (no autograd graph, no grad scatter through
views): on these tiny models the time goes to op dispatch, not FLOPs, so fewer ops is what counts.
Activation derivatives are aten's own backward kernels, the ones autograd calls. Autograd stays the
oracle (tests/test_grouped.py) and the RNN's path (engine.py).

Shapes: K runs = G groups x d runs, internal run k = g*d + j; parameters are per-tensor views of the
flat [K, P] buffer (PyTorch layout per run: weight [out, in], bias [out]).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .clipping import Layout

aten = torch.ops.aten
# activation and its derivative as (forward, backward(grad_out, pre-activation z, activation a))
_ACT: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor, Tensor], Tensor]]] = {
    "relu": (torch.relu, lambda g, z, a: aten.threshold_backward(g, a, 0)),
    "tanh": (torch.tanh, lambda g, z, a: aten.tanh_backward(g, a)),
    "sigmoid": (torch.sigmoid, lambda g, z, a: aten.sigmoid_backward(g, a)),
    "leaky_relu": (torch.nn.functional.leaky_relu, lambda g, z, a: aten.leaky_relu_backward(g, z, 0.01, False)),
    "gelu": (torch.nn.functional.gelu, lambda g, z, a: aten.gelu_backward(g, z)),
    "linear": (lambda z: z, lambda g, z, a: g),
}
# in place where torch has it, for validation (nothing is kept for a backward pass): at K=250 the tutorial's
# validation pre-activations are 12.5 MB, and a second buffer of that size cost ~40% of validation's time
_ACT_INPLACE: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu_,
    "tanh": torch.tanh_,
    "sigmoid": torch.sigmoid_,
    "leaky_relu": torch.nn.functional.leaky_relu_,
    "gelu": torch.nn.functional.gelu,  # no in-place gelu in torch
    "linear": lambda z: z,
}


# validation's hidden activations are computed this many elements at a time (a chunk of runs): at K=250 the
# tutorial's whole [K*H, N_val] block is 12.5 MB and its GEMM ran at half the speed of 2 MB chunks (measured:
# validation 6.3 -> 3.0 ms an epoch), which stay in cache for the activation and output layer that follow
VAL_CHUNK = 1 << 19


class GroupedMLP:
    """loss_and_grad(x, y) -> per-run MSE [K]; writes d(loss_k)/d(params_k) into `grad` [K, P].

    flat, grad: [K, P] buffers, updated in place by the caller (views into them are built once here).
    x: [G, B, in+1] inputs with a ones column last; y: [G, B] targets; group g holds runs g*d .. g*d+d-1.
    """

    def __init__(self, activation: str, layout: Layout, flat: Tensor, grad: Tensor, groups: int):
        self.act, self.act_bwd = _ACT[activation]
        self.act_inplace = _ACT_INPLACE[activation]
        k = flat.shape[0]
        self.g, self.d = groups, k // groups
        ws, gs = layout.split(flat), layout.split(grad)  # per-tensor [K, ...] views, fixed for the engine's life
        self.ws, self.gs = ws, gs
        h, n_in = ws[0].shape[1], ws[0].shape[2]
        self.h, self.n_in = h, n_in
        self.depth = len(ws) // 2 - 2  # hidden-to-hidden layers (model depth - 1)
        # first layer, weight and bias side by side per run: [K, H, in+1], viewed per group as [G, d*H, in+1]
        self.w1 = torch.empty(k, h, n_in + 1, device=flat.device, dtype=flat.dtype)
        self.w1_w, self.w1_b = self.w1[..., :n_in], self.w1[..., n_in]  # views, built once (fewer ops a step)
        self.dw1 = torch.empty(groups, n_in + 1, self.d * h, device=flat.device, dtype=flat.dtype)
        # ^ [G, in+1, d*H]: dW1 and db1 from one bmm, transposed (X^T dZ^T: measured 1.5x faster than dZ X here)
        dw1 = self.dw1.view(groups, n_in + 1, self.d, h)
        self.gw1_src, self.gw1_dst = dw1[:, :n_in].permute(0, 2, 3, 1), gs[0].view(groups, self.d, h, n_in)
        self.gb1_src, self.gb1_dst = dw1[:, n_in], gs[1].view(groups, self.d, h)
        self.hidden = [(ws[2 * i], ws[2 * i + 1].unsqueeze(-1)) for i in range(1, self.depth + 1)]  # [K,H,H], [K,H,1]
        self.wo, self.bo = ws[-2], ws[-1].unsqueeze(-1)  # [K, 1, H], [K, 1, 1]
        self.wo_t = self.wo.transpose(1, 2)  # [K, H, 1]

    def forward(self, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Predictions [K, 1, B] and each hidden layer's (pre-activation, activation), [K, H, B] each, kept for
        the backward pass (validation, which keeps nothing, is val_loss).

        x: [G, B, in+1] rows per group, or [B, in+1] rows shared by all runs.
        """
        act, g, k = self.act, self.g, self.g * self.d
        # one copy into GEMM layout: flat holds each run's weights in a row of P, not as a [d*H, in] block
        self.w1_w.copy_(self.ws[0])
        self.w1_b.copy_(self.ws[1])
        if x.dim() == 2:  # rows shared by every run (validation): one GEMM for all K runs
            z = torch.mm(self.w1.view(-1, self.n_in + 1), x.t()).view(k, self.h, -1)  # [K, H, B]
        else:
            z = torch.bmm(self.w1.view(g, -1, self.n_in + 1), x.transpose(1, 2)).view(k, self.h, -1)
        saved, a = [], act(z)
        for w, b in self.hidden:
            saved.append((z, a))
            z = torch.baddbmm(b, w, a)
            a = act(z)
        saved.append((z, a))
        return torch.baddbmm(self.bo, self.wo, a), saved

    def val_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-run MSE [K] on rows x [N, in+1] shared by every run (validation), a chunk of runs at a time
        (VAL_CHUNK); activations in place, nothing kept."""
        k, n = self.g * self.d, x.shape[0]
        self.w1_w.copy_(self.ws[0])
        self.w1_b.copy_(self.ws[1])
        step = max(1, VAL_CHUNK // (self.h * n))
        out = torch.empty(k, dtype=x.dtype, device=x.device)
        for lo in range(0, k, step):
            r = slice(lo, min(k, lo + step))
            a = self.act_inplace(torch.mm(self.w1[r].reshape(-1, self.n_in + 1), x.t()).view(-1, self.h, n))
            for w, b in self.hidden:
                a = self.act_inplace(torch.baddbmm(b[r], w[r], a))
            pred = torch.baddbmm(self.bo[r], self.wo[r], a)  # [runs in the chunk, 1, N]
            out[r] = (pred.view(-1, n) - y).pow(2).mean(1)
        return out

    def loss_and_grad(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-run MSE [K] on this batch; gradients into `grad`."""
        g, d = self.g, self.d
        pred, saved = self.forward(x)
        b = pred.shape[-1]
        diff = pred.view(g, d, b) - y.unsqueeze(1)  # [G, d, B]
        loss = diff.square().mean(-1).view(-1)  # [K]
        dz = diff.mul_(2.0 / b).view(g * d, 1, b)  # d mean((p - y)^2) / dp, [K, 1, B]
        gs = self.gs
        gs[-1].copy_(dz.sum(-1))  # [K, 1] (no out= into a strided view: torch.compile breaks its graph there)
        # bmm into a view of grad (batch stride P) takes a per-run slow path: ~20x slower, measured; copy instead
        gs[-2].copy_(torch.bmm(dz, saved[-1][1].transpose(1, 2)))  # [K, 1, H]
        # into the last hidden layer through the width-1 output: an outer product, cheaper than a bmm
        da = self.wo_t * dz  # [K, H, B]
        for i in range(self.depth, 0, -1):
            z, a = saved[i]
            dz = self.act_bwd(da, z, a)
            gs[2 * i + 1].copy_(dz.sum(-1))  # [K, H]
            gs[2 * i].copy_(torch.bmm(dz, saved[i - 1][1].transpose(1, 2)))  # [K, H, H]
            da = torch.bmm(self.hidden[i - 1][0].transpose(1, 2), dz)
        z, a = saved[0]
        dz = self.act_bwd(da, z, a)
        torch.bmm(x.transpose(1, 2), dz.view(g, -1, b).transpose(1, 2), out=self.dw1)  # [G, in+1, d*H]
        self.gw1_dst.copy_(self.gw1_src)
        self.gb1_dst.copy_(self.gb1_src)
        return loss


def keeps_bits(
    activation: str, layout: Layout, d_old: int, d_new: int, keep: list[int], k: int, batches, xv: Tensor
) -> bool:
    """Whether the runs `keep` of a K-run batch in seed groups of d_old get the same bits, forward, backward and
    in validation, in a batch of only them in groups of d_new (the engine drops diverged runs).

    The first layer's GEMMs change shape with d (validation's with K), and BLAS picks its kernel, so its
    summation order, by shape: measured here, a [M, 21] @ [21, 32] GEMM rounds differently for M <= 3 and
    [21, 32] @ [32, N] for N <= 11. Checked on random parameters and rows (the kernel depends on shapes, not
    values) through the real code, for each batch size of the epoch.
    """
    gen = torch.Generator().manual_seed(0)
    dev = xv.device
    flat = torch.randn(k, layout.numel, generator=gen).to(dev)
    rows = torch.tensor(keep, device=dev)
    nets = []
    for f, groups in ((flat, k // d_old), (flat[rows], len(keep) // d_new)):
        grad = torch.empty_like(f)
        nets.append((GroupedMLP(activation, layout, f, grad, groups), grad, groups))
    yv = torch.randn(xv.shape[0], generator=gen).to(dev)
    (old, g_old, _), (new, g_new, _) = nets
    if not torch.equal(old.val_loss(xv, yv)[rows], new.val_loss(xv, yv)):
        return False
    for b in batches:
        x1 = torch.randn(1, b, xv.shape[1], generator=gen).to(dev)
        y1 = torch.randn(1, b, generator=gen).to(dev)
        out = [
            (net.loss_and_grad(x1.expand(g, -1, -1).contiguous(), y1.expand(g, -1).contiguous()), grad)
            for net, grad, g in nets
        ]
        (l_old, _), (l_new, _) = out
        if not (torch.equal(l_old[rows], l_new) and torch.equal(g_old[rows], g_new)):
            return False
    return True
