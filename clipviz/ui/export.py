"""Downloads: records as CSV and JSON, charts as interactive HTML, and the setup as plain PyTorch code.

The builders are pure (tested without streamlit); `render_export` only draws download buttons,
whose data is generated when clicked.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import replace

import plotly.graph_objects as go
import streamlit as st

from ..config import RunSpec
from ..engine import SHUFFLE_OFFSET
from ..records import RunResult, dumps, to_frame
from ..strategies import REGISTRY


def csv_bytes(results: list[RunResult]) -> bytes:
    return to_frame(results).to_csv(index=False).encode()


def json_bytes(results: list[RunResult]) -> bytes:
    return dumps(results).encode()


def figure_html(fig: go.Figure | Callable[[], go.Figure]) -> bytes:
    """A self-contained interactive page (plotly.js embedded: it works offline, ~4.8 MB); takes a figure or a
    builder of one."""
    fig = fig() if callable(fig) else fig
    return fig.to_html(include_plotlyjs=True, full_html=True).encode()


_ACT = {"relu": "nn.ReLU", "tanh": "nn.Tanh", "sigmoid": "nn.Sigmoid", "leaky_relu": "nn.LeakyReLU",
        "gelu": "nn.GELU", "linear": "nn.Identity"}  # fmt: skip
# models.init_params' initialisers, with its generator: same weights as the dashboard for the same seed
_INIT = {"he_uniform": "nn.init.kaiming_uniform_({}, nonlinearity='relu', generator=gen)",
         "he_normal": "nn.init.kaiming_normal_({}, nonlinearity='relu', generator=gen)",
         "glorot_uniform": "nn.init.xavier_uniform_({}, generator=gen)",
         "glorot_normal": "nn.init.xavier_normal_({}, generator=gen)",
         "torch_default": "nn.init.kaiming_uniform_({}, a=math.sqrt(5), generator=gen)"}  # fmt: skip
_OPT = {"sgd": "torch.optim.SGD(model.parameters(), lr={lr!r}, momentum={momentum!r})",
        "adam": "torch.optim.Adam(model.parameters(), lr={lr!r})",
        "rmsprop": "torch.optim.RMSprop(model.parameters(), lr={lr!r})"}  # fmt: skip
_SKLEARN = {"regression": "make_regression", "friedman1": "make_friedman1", "diabetes": "load_diabetes"}


def _data_code(spec: RunSpec) -> str:
    """data.load_dataset's steps in plain sklearn (the adding task and a CSV call clipviz's loader)."""
    d = spec.data
    if d.name not in _SKLEARN:  # the adding task and a CSV: clipviz's loader builds the same tensors
        note = ""
        if d.name == "csv":  # never the server's upload path: the user has the file under their own name
            d, note = replace(d, csv_path="data.csv"), "# data.csv: the CSV file you uploaded, next to this script\n"
        return (
            "from clipviz.config import DataSpec\nfrom clipviz.data import load_dataset\n\n"
            f"{note}ds = load_dataset({d!r})\n"
            "x_train, y_train, x_val, y_val = ds.x_train, ds.y_train, ds.x_val, ds.y_val\n"
        )
    fn = _SKLEARN[d.name]
    call = (
        f"{fn}(return_X_y=True)"
        if d.name == "diabetes"
        else f"{fn}(n_samples={d.n_samples}, n_features={d.n_features}, noise={d.noise!r}, random_state={d.random_state})"
    )
    lines = [f"from sklearn.datasets import {fn}"]
    lines += ["from sklearn.preprocessing import StandardScaler"] if d.scale_x or d.scale_y else []
    lines += ["", f"x, y = {call}"]
    lines += [f"n = int(len(y) * {d.train_fraction!r})  # first rows train, the rest validate (no shuffle)"]
    lines += ["x_train, x_val, y_train, y_val = x[:n], x[n:], y[:n], y[n:]"]
    if d.scale_x:
        lines += ["sx = StandardScaler().fit(x_train)  # standardise inputs with train statistics only"]
        lines += ["x_train, x_val = sx.transform(x_train), sx.transform(x_val)"]
    if d.scale_y:
        lines += ["sy = StandardScaler().fit(y_train[:, None])  # standardise the target: the textbook fix"]
        lines += ["y_train, y_val = sy.transform(y_train[:, None])[:, 0], sy.transform(y_val[:, None])[:, 0]"]
    lines += ["x_train, x_val, y_train, y_val = (torch.tensor(a, dtype=torch.float32)"]
    lines += ["                                  for a in (x_train, x_val, y_train, y_val))"]
    return "\n".join(lines) + "\n"


def _init_code(spec: RunSpec, hidden: list[str], out: str, biases: list[str], drawn: list[str]) -> list[str]:
    """models.init_params line for line: hidden weights in order, the output weight, then the biases.

    drawn: (weight, bias) module names whose bias torch_default draws like nn.Linear, after every weight.
    """
    m = spec.model
    lines = [
        f"gen = torch.Generator().manual_seed({spec.seed})  # clipviz's init stream: the dashboard's weights",
        "with torch.no_grad():  # hidden weights as chosen, glorot_uniform output (Keras' default), zero biases",
    ]
    for w in hidden:
        lines.append("    " + _INIT[m.init].format(w))
        if m.init_scale != 1:
            lines.append(f"    {w}.mul_({m.init_scale!r})")
    lines.append(f"    nn.init.xavier_uniform_({out}, generator=gen)")
    for b in biases:
        lines.append(f"    {b}.zero_()")
    if m.init == "torch_default":
        for mod in drawn:
            lines.append(f"    bound = 1 / math.sqrt({mod}.weight.shape[1])  # nn.Linear's bias init")
            lines.append(f"    {mod}.bias.uniform_(-bound, bound, generator=gen)")
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
        biases = [r + "bias_ih_l0", r + "bias_hh_l0", "model.out.bias"]
        lines += _init_code(spec, [r + "weight_ih_l0", r + "weight_hh_l0"], "model.out.weight", biases, [])
        return "\n".join(lines) + "\n"
    hidden = [f"model[{2 * i}]" for i in range(m.depth)]  # Sequential: Linear, activation, Linear, ...
    lines = [
        f"sizes = [x_train.shape[-1]] + [{m.width}] * {m.depth}",
        "hidden = [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]",
        f"model = nn.Sequential(*[mod for lin in hidden for mod in (lin, {_ACT[m.activation]}())], "
        "nn.Linear(sizes[-1], 1))",
    ]
    layers = [*hidden, "model[-1]"]
    biases = [f"{x}.bias" for x in layers] if m.init != "torch_default" else []
    lines += _init_code(spec, [f"{x}.weight" for x in hidden], "model[-1].weight", biases, layers)
    return "\n".join(lines) + "\n"


def code_snippet(spec: RunSpec) -> str:
    """A plain-PyTorch script that reproduces this run: same data, initial weights, minibatch order,
    optimizer and clipping (the registry's torch call for the strategy), so it prints the dashboard's losses."""
    o = spec.optim
    imp, setup, clip = REGISTRY[spec.clip.strategy].export_lines(spec.clip.threshold)
    head = f'"""{spec.name}: {o.epochs} epochs of {o.name}, exported from clipviz."""\n\n'
    head += "import math\n\n" if spec.model.init == "torch_default" else ""
    head += "import torch\nfrom torch import nn\n"
    head += f"{imp}\n" if imp else ""
    body = [
        head,
        _data_code(spec),
        _model_code(spec),
        "opt = " + _OPT[o.name].format(lr=o.lr, momentum=o.momentum),
        "loss_fn = nn.MSELoss()",
        *([setup] if setup else []),
        f"shuffle = torch.Generator().manual_seed({spec.seed + SHUFFLE_OFFSET})  # clipviz's minibatch order stream",
        f"for epoch in range({o.epochs}):",
        "    order, total, steps = torch.randperm(len(x_train), generator=shuffle), 0.0, 0",
        f"    for i in range(0, len(x_train), {o.batch_size}):",
        f"        idx = order[i : i + {o.batch_size}]",
        "        opt.zero_grad()",
        "        loss = loss_fn(model(x_train[idx]).squeeze(-1), y_train[idx])",
        "        loss.backward()",
        *("        " + line for line in clip.splitlines()),
        "        opt.step()",
        "        total, steps = total + loss.item(), steps + 1",
        "    with torch.no_grad():",
        "        val = loss_fn(model(x_val).squeeze(-1), y_val).item()",
        "    print(f'epoch {epoch + 1}: train loss {total / steps:.8g}, validation loss {val:.8g}')",
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
               "for the rest. Same data, initial weights, minibatch order, optimizer and clipping: it prints the "
               "losses shown here (value clipping on the unscaled tutorial is chaotic: they part after epoch 1).")  # fmt: skip
    for tab, spec in zip(st.tabs([r.clip.label for r in picks]), picks):  # tabs, not a picker: nothing goes stale
        code = code_snippet(spec)
        tab.code(code, language="python")
        # deferred (a callable), like every download here: a static one is a media file that the next rerun
        # drops while the browser still checks its URL ('Download Button source error - 404' on a preset change)
        tab.download_button("Download .py", functools.partial(str, code), f"train_{_slug(spec.clip.label)}.py",
                            "text/x-python", key=f"dl_code_{_slug(spec.clip.label)}", on_click="ignore")  # fmt: skip
