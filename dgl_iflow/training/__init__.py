"""Training loops: :func:`fit` for :class:`~dgl_iflow.IGNN`, :func:`fit_jko` for :class:`~dgl_iflow.JKOFlow`."""
from .fit import TrainConfig, TrainHistory, fit, repair_invertibility
from .jko import (
    BlockRecord, JKOConfig, JKOHistory, JKOTrainer, SavedTensorMeter, StageDecision, block_objective, fit_jko,
)
from .jko_schedule import refine, reparametrize, reparametrized_steps, step_size

__all__ = [
    "BlockRecord", "JKOConfig", "JKOHistory", "JKOTrainer", "SavedTensorMeter", "StageDecision", "TrainConfig",
    "TrainHistory",
    "block_objective", "fit", "fit_jko", "refine", "repair_invertibility", "reparametrize",
    "reparametrized_steps", "step_size",
]
