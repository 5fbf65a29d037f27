"""The one registry of clipping strategies: what each is called, means, looks like and corresponds to.

Metadata only (no torch import): config, the dashboard's controls and charts, the sweep defaults, the
exported code, the reference loop and the CLI help all read it from here. The rules themselves live in
`clipping.RULES`, one per entry. Adding a strategy = one rule + one entry below + its tests.
"""

from __future__ import annotations

from dataclasses import dataclass

OTHER_COLOUR = "#444444"  # a label whose strategy we cannot tell


@dataclass(frozen=True)
class Strategy:
    """One clipping strategy, as users know it."""

    name: str  # the key: `--clip norm:1`, ClipSpec.strategy, URL values
    title: str  # as users know it
    formula: str  # LaTeX, shown in the lesson
    reference: str  # the paper or library it comes from
    same_as: str  # library functions that compute the same thing
    threshold_meaning: str  # what the one number per run means ('' for none)
    default: float | None  # a sensible threshold (None for none)
    slider: tuple[float, float] | None  # dashboard slider range, log scale (the tutorial's values on the grid)
    sweep: tuple[float, float, int] | None  # default sweep: lo, hi, count, log-spaced
    colour: str  # one hue in every chart: Okabe-Ito, colour-blind safe; vermillion kept for NaN/inf, yellow darkened
    call: str  # plain-PyTorch equivalent, dotted: fn(params, **{arg: t}) or, when stateful, a class
    arg: str = ""  # keyword of `call` that takes the threshold
    stateful: bool = False  # the clipper keeps history: one per group of runs, never reused across jobs
    max_threshold: float | None = None  # an upper bound the threshold must respect (autoclip: a percentile)
    aliases: tuple[str, ...] = ()  # other names users type for it

    @property
    def module(self) -> str:
        return self.call.rpartition(".")[0]

    @property
    def attr(self) -> str:
        return self.call.rpartition(".")[2]

    def export_lines(self, threshold: float | None) -> tuple[str, str, str]:
        """(import line, set-up line, the lines between backward() and step()) of a plain PyTorch script."""
        if not self.call:
            return "", "", "# no clipping"
        # torch.* is called by its full name; clipviz's drop-ins are imported
        imp = "" if self.module.startswith("torch") else f"from {self.module} import {self.attr}"
        fn = self.call if self.module.startswith("torch") else self.attr
        note = f"# {self.title}: same as {self.same_as}\n"
        if self.stateful:
            return imp, f"clipper = {fn}({self.arg}={threshold!r})", note + "clipper(model.parameters())"
        return imp, "", note + f"{fn}(model.parameters(), {self.arg}={threshold!r})"


_N = r"\lVert g\rVert_2"
_ENTRIES = (
    Strategy("none", "No clipping", r"g \leftarrow g", "", "", "", None, None, None, "#7f7f7f", ""),
    Strategy(
        "value",
        "Value",
        r"g_j \leftarrow \min(\max(g_j, -c), c)",
        "Mikolov (2012), PhD thesis",
        "torch.nn.utils.clip_grad_value_, Keras clipvalue, optax.clip",
        "clip value c",
        5.0,
        (0.01, 100.0),
        (0.01, 1000.0, 25),
        "#e69f00",
        "torch.nn.utils.clip_grad_value_",
        "clip_value",
    ),
    Strategy(
        "norm",
        "Global norm",
        rf"g \leftarrow g \min\left(1, \frac{{c}}{{{_N} + 10^{{-6}}}}\right)",
        "Pascanu, Mikolov & Bengio 2013, arXiv:1211.5063",
        "torch.nn.utils.clip_grad_norm_, Keras global_clipnorm (and standalone Keras 2 clipnorm), "
        "optax.clip_by_global_norm",
        "max global norm",
        1.0,
        (0.01, 1000.0),
        (0.01, 1000.0, 25),
        "#0072b2",
        "torch.nn.utils.clip_grad_norm_",
        "max_norm",
        aliases=("global-norm",),
    ),
    Strategy(
        "tensor-norm",
        "Per-tensor norm",
        r"g_l \leftarrow g_l \frac{c}{\max(\lVert g_l\rVert_2, c)}",
        "Keras 3 clip_by_norm (keras/src/optimizers/base_optimizer.py)",
        "Keras 3 clipnorm, tf.clip_by_norm per variable",
        "max norm per tensor",
        1.0,
        (0.01, 1000.0),
        (0.01, 1000.0, 25),
        "#009e73",
        "clipviz.dropins.clip_grad_norm_per_tensor_",
        "max_norm",
        aliases=("per-tensor-norm", "tensor"),
    ),
    Strategy(
        "agc",
        "Adaptive gradient clipping (AGC)",
        r"G_i \leftarrow G_i \frac{\lambda \max(\lVert W_i\rVert, 10^{-3})}{\max(\lVert G_i\rVert, 10^{-6})}"
        r"\ \text{if}\ \lVert G_i\rVert > \lambda \max(\lVert W_i\rVert, 10^{-3})",
        "Brock, De, Smith & Simonyan 2021 (NFNets), arXiv:2102.06171",
        "optax.adaptive_grad_clip, timm adaptive_clip_grad",
        "clipping ratio lambda",
        0.01,
        (0.001, 1.0),
        (0.001, 10.0, 13),
        "#cc79a7",
        "clipviz.dropins.adaptive_grad_clip_",
        "clipping",
    ),
    Strategy(
        "autoclip",
        "AutoClip",
        rf"c_t = \mathrm{{percentile}}_p(\lVert g_1\rVert, \dots, \lVert g_t\rVert),\ "
        rf"g \leftarrow g \min\left(1, \frac{{c_t}}{{{_N} + 10^{{-6}}}}\right)",
        "Seetharaman, Wichern, Pardo & Le Roux 2020, arXiv:2007.14469",
        "github.com/pseeth/autoclip",
        "percentile p",
        10.0,
        (1.0, 100.0),
        (1.0, 100.0, 9),
        "#56b4e9",
        "clipviz.dropins.AutoClip",
        "percentile",
        stateful=True,
        max_threshold=100.0,
    ),
    Strategy(
        "zclip",
        "ZClip",
        rf"z = \frac{{{_N} - \mu}}{{\sigma + \epsilon}},\ z > z_t:\ "
        rf"g \leftarrow g \frac{{\mu + z_t^2 \sigma / z}}{{{_N} + 10^{{-6}}}}",
        "Kumar, Owen, Chowdhury & Güra 2025, arXiv:2504.02507",
        "zclip.ZClip(mode='zscore', clip_option='adaptive_scaling', max_grad_norm=None)",
        "z-score threshold",
        2.5,
        (0.5, 10.0),
        (0.5, 20.0, 9),
        "#c4b000",
        "clipviz.dropins.ZClip",
        "z_thresh",
        stateful=True,
    ),
)
REGISTRY: dict[str, Strategy] = {s.name: s for s in _ENTRIES}
NAMES: tuple[str, ...] = tuple(REGISTRY)
_ALIASES = {a: s.name for s in _ENTRIES for a in s.aliases}


def canonical(name: str) -> str:
    """A name or alias as users type it ('global-norm', ' Norm ') -> the registry key (unknown names pass through)."""
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def colour(name: str) -> str:
    """The one hue of a strategy (OTHER_COLOUR for a name the registry does not know)."""
    s = REGISTRY.get(name)
    return s.colour if s else OTHER_COLOUR
