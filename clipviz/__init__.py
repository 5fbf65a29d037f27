"""clipviz: see, teach and tune gradient clipping.

The public names: specs and presets (config), the batched engine and its records, the sweep runner, and
drop-in clippers for your own PyTorch loops (clipping).
"""

from .config import (
    PRESETS,
    TUTORIAL,
    TUTORIAL_CLIPS,
    Caps,
    ClipSpec,
    ConfigError,
    DataSpec,
    ModelSpec,
    OptimSpec,
    RunSpec,
    with_clips,
)
from .dropins import (
    AutoClip,
    ZClip,
    adaptive_grad_clip_,
    clip_grad_norm_,
    clip_grad_norm_per_tensor_,
    clip_grad_value_,
)
from .engine import Engine, train
from .records import EpochRecord, RunResult

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "TUTORIAL",
    "TUTORIAL_CLIPS",
    "AutoClip",
    "Caps",
    "ClipSpec",
    "ConfigError",
    "DataSpec",
    "Engine",
    "EpochRecord",
    "ModelSpec",
    "OptimSpec",
    "RunResult",
    "RunSpec",
    "ZClip",
    "adaptive_grad_clip_",
    "clip_grad_norm_",
    "clip_grad_norm_per_tensor_",
    "clip_grad_value_",
    "train",
    "with_clips",
]
