"""Downloads: records as CSV and JSON, charts as interactive HTML, and the setup as plain PyTorch code.

The builders are pure (tested without streamlit); `render_export` only draws download buttons,
whose data is generated when clicked.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import plotly.graph_objects as go
import streamlit as st

from ..config import RunSpec
from ..records import RunResult, dumps, to_frame


def csv_bytes(results: list[RunResult]) -> bytes:
    return to_frame(results).to_csv(index=False).encode()


def json_bytes(results: list[RunResult]) -> bytes:
    return dumps(results).encode()


def figure_html(fig: go.Figure | Callable[[], go.Figure]) -> bytes:
    """A self-contained interactive page (plotly.js from its CDN); takes a figure or a builder of one."""
    fig = fig() if callable(fig) else fig
    return fig.to_html(include_plotlyjs="cdn", full_html=True).encode()


_ACT = {"relu": "nn.ReLU", "tanh": "nn.Tanh", "sigmoid": "nn.Sigmoid", "leaky_relu": "nn.LeakyReLU",
        "gelu": "nn.GELU", "linear": "nn.Identity"}  # fmt: skip
_INIT = {"he_uniform": "nn.init.kaiming_uniform_({}, nonlinearity='relu')",
         "he_normal": "nn.init.kaiming_normal_({}, nonlinearity='relu')",
         "glorot_uniform": "nn.init.xavier_uniform_({})", "glorot_normal": "nn.init.xavier_normal_({})"}  # fmt: skip
_OPT = {"sgd": "torch.optim.SGD(model.parameters(), lr={lr!r}, momentum={momentum!r})",
        "adam": "torch.optim.Adam(model.parameters(), lr={lr!r})",
        "rmsprop": "torch.optim.RMSprop(model.parameters(), lr={lr!r})"}  # fmt: skip
_SKLEARN = {"regression": "make_regression", "friedman1": "make_friedman1", "diabetes": "load_diabetes"}


def _data_code(spec: RunSpec) -> str:
    d = spec.data
    if d.name not in _SKLEARN:  # the adding task and a CSV: clipviz's loader builds the same tensors
        return (
            "from clipviz.config import DataSpec\nfrom clipviz.data import load_dataset\n\n"
            f"ds = load_dataset({d!r})\n"
            "x_train, y_train, x_val, y_val = ds.x_train, ds.y_train, ds.x_val, ds.y_val\n"
        )
    fn = _SKLEARN[d.name]
    call = (
        f"{fn}(return_X_y=True)"
        if d.name == "diabetes"
        else f"{fn}(n_samples={d.n_samples}, n_features={d.n_features}, noise={d.noise!r}, random_state={d.random_state})"
    )
    lines = [f"from sklearn.datasets import {fn}", "", f"x, y = {call}"]
    lines += [f"n = int(len(y) * {d.train_fraction!r})  # first rows train, the rest validate (no shuffle)"]
    lines += ["x_train, x_val, y_train, y_val = x[:n], x[n:], y[:n], y[n:]"]
    if d.scale_x:
        lines += ["mx, sx = x_train.mean(0), x_train.std(0) + (x_train.std(0) == 0)  # standardise inputs"]
        lines += ["x_train, x_val = (x_train - mx) / sx, (x_val - mx) / sx"]
    if d.scale_y:
        lines += ["my, sy = y_train.mean(), y_train.std()  # standardise the target: the textbook fix"]
        lines += ["y_train, y_val = (y_train - my) / sy, (y_val - my) / sy"]
    lines += ["x_train, x_val, y_train, y_val = (torch.tensor(a, dtype=torch.float32)"]
    lines += ["                                  for a in (x_train, x_val, y_train, y_val))"]
    return "\n".join(lines) + "\n"


def _init_code(spec: RunSpec, weights: list[str], biases: list[str], out: str) -> list[str]:
    m = spec.model
    lines = ["with torch.no_grad():  # Keras-style init: hidden weights as chosen, glorot output, zero biases"]
    if m.init in _INIT:
        for w in weights:
            lines.append("    " + _INIT[m.init].format(w))
    if m.init_scale != 1:
        lines += [f"    {w}.mul_({m.init_scale!r})" for w in weights]
    if m.init != "torch_default":
        lines += [f"    {b}.zero_()" for b in biases]
    lines += [f"    nn.init.xavier_uniform_({out}.weight)", f"    {out}.bias.zero_()"]
    return lines


def _model_code(spec: RunSpec) -> str:
    m = spec.model
    if m.kind == "rnn":
        lines = [
            "class Net(nn.Module):",
            "    def __init__(self, n_in, width):",
            "        super().__init__()",
            "        self.rnn = nn.RNN(n_in, width, batch_first=True, nonlinearity='tanh')",
            "        self.out = nn.Linear(width, 1)",
            "",
            "    def forward(self, x):  # x: [batch, time, features]",
            "        return self.out(self.rnn(x)[0][:, -1])",
            "",
            "",
            f"model = Net(x_train.shape[-1], {m.width})",
        ]
        r = "model.rnn."
        lines += _init_code(
            spec, [r + "weight_ih_l0", r + "weight_hh_l0"], [r + "bias_ih_l0", r + "bias_hh_l0"], "model.out"
        )
        return "\n".join(lines) + "\n"
    lines = [
        f"sizes = [x_train.shape[-1]] + [{m.width}] * {m.depth}",
        "hidden = [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]",
        f"model = nn.Sequential(*[mod for lin in hidden for mod in (lin, {_ACT[m.activation]}())], "
        "nn.Linear(sizes[-1], 1))",
    ]
    init = _init_code(spec, ["lin.weight"], ["lin.bias"], "model[-1]")
    per_layer = ["    " + x for x in init[1:-2]]
    lines += [init[0], *(["    for lin in hidden:", *per_layer] if per_layer else []), *init[-2:]]
    return "\n".join(lines) + "\n"


def _clip_code(spec: RunSpec) -> tuple[str, str, str]:
    """(import line, set-up line, the line between backward() and step())."""
    c = spec.clip
    t = c.threshold
    return {
        "none": ("", "", "# no clipping"),
        "value": ("", "", f"torch.nn.utils.clip_grad_value_(model.parameters(), clip_value={t!r})  # Keras clipvalue"),
        "norm": ("", "", f"torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={t!r})  # global_clipnorm"),
        "tensor-norm": ("from clipviz.clipping import clip_grad_norm_per_tensor_", "",
                        f"clip_grad_norm_per_tensor_(model.parameters(), max_norm={t!r})  # Keras 3 clipnorm"),
        "agc": ("from clipviz.clipping import adaptive_grad_clip_", "",
                f"adaptive_grad_clip_(model.parameters(), clipping={t!r})  # AGC, Brock et al. 2021"),
        "autoclip": ("from clipviz.clipping import AutoClip", f"clipper = AutoClip(percentile={t!r})",
                     "clipper(model.parameters())  # AutoClip, Seetharaman et al. 2020"),
        "zclip": ("from clipviz.clipping import ZClip", f"clipper = ZClip(z_thresh={t!r})",
                  "clipper(model.parameters())  # ZClip, Kumar et al. 2025"),
    }[c.strategy]  # fmt: skip


def code_snippet(spec: RunSpec) -> str:
    """A plain-PyTorch script that trains this run (same data, model, optimizer and clipping)."""
    o = spec.optim
    imp, setup, clip = _clip_code(spec)
    head = f'"""{spec.name}: {o.epochs} epochs of {o.name}, exported from clipviz."""\n\nimport torch\nfrom torch import nn\n'
    head += f"{imp}\n" if imp else ""
    body = [
        head,
        _data_code(spec),
        f"torch.manual_seed({spec.seed})",
        _model_code(spec),
        "opt = " + _OPT[o.name].format(lr=o.lr, momentum=o.momentum),
        "loss_fn = nn.MSELoss()",
        *([setup] if setup else []),
        f"for epoch in range({o.epochs}):",
        "    order, total, steps = torch.randperm(len(x_train)), 0.0, 0",
        f"    for i in range(0, len(x_train), {o.batch_size}):",
        f"        idx = order[i : i + {o.batch_size}]",
        "        opt.zero_grad()",
        "        loss = loss_fn(model(x_train[idx]).squeeze(-1), y_train[idx])",
        "        loss.backward()",
        f"        {clip}",
        "        opt.step()",
        "        total, steps = total + loss.item(), steps + 1",
        "    with torch.no_grad():",
        "        val = loss_fn(model(x_val).squeeze(-1), y_val).item()",
        "    print(f'epoch {epoch + 1}: train loss {total / steps:.4g}, validation loss {val:.4g}')",
    ]
    return "\n".join(body) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def render_export(
    results: list[RunResult], figures: dict[str, Callable[[], go.Figure]], runs: list[RunSpec] | None
) -> None:
    """Download buttons for what is on the charts, and the code for one run of the current setup."""
    st.subheader("Records")
    if not results:
        st.info("Train something first: the records of the runs shown on the charts are exported here.")
    else:
        c1, c2 = st.columns(2)
        c1.download_button("Records as CSV", functools.partial(csv_bytes, results), "clipviz_records.csv",
                           "text/csv", key="dl_csv", on_click="ignore")  # fmt: skip
        c2.download_button("Records as JSON", functools.partial(json_bytes, results), "clipviz_records.json",
                           "application/json", key="dl_json", on_click="ignore")  # fmt: skip
        st.caption("JSON keeps every per-step gradient norm; NaN/inf are written as strings and flagged.")
    st.subheader("Charts (interactive HTML)")
    cols = st.columns(3)
    for i, (name, fig) in enumerate(figures.items()):
        cols[i % 3].download_button(name, functools.partial(figure_html, fig), f"clipviz_{_slug(name)}.html",
                                    "text/html", key=f"dl_fig_{i}", on_click="ignore")  # fmt: skip
    st.subheader("Export as code")
    if not runs:
        st.info("Fix the setup in the sidebar to export it as code.")
        return
    by_clip = {r.clip.label: r for r in reversed(runs)}  # one per clip setting (its first seed)
    picks = list(reversed(by_clip.values()))
    st.caption("A plain PyTorch script per run: torch.nn.utils.clip_grad_* where torch has it, clipviz's drop-ins "
               "for the rest. Same data, model, initialisation scheme, optimizer and clipping.")  # fmt: skip
    for tab, spec in zip(st.tabs([r.clip.label for r in picks]), picks):  # tabs, not a picker: nothing goes stale
        code = code_snippet(spec)
        tab.code(code, language="python")
        tab.download_button("Download .py", code, f"train_{_slug(spec.clip.label)}.py", "text/x-python",
                            key=f"dl_code_{_slug(spec.clip.label)}", on_click="ignore")  # fmt: skip
