"""What both trainers share: one random-state policy and the garbage-collector freeze."""
from __future__ import annotations

import gc
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

LR_SCHEDULES = ("cosine", "constant")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Within the block Python, NumPy and torch are seeded with ``seed``; on exit, even on an
    error, they are back where the caller left them.

    The trainers run inside it: a seeded run is reproducible, and training does not move the
    caller's own random streams.
    """
    # torch.manual_seed seeds every CUDA device, so every one is forked and restored.
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        try:
            seed_everything(seed)
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


@contextmanager
def frozen_gc() -> Iterator[None]:
    """Within the block, objects that existed before it are left out of cyclic garbage collection.

    Autograd creates enough container objects per step that Python's full collections run
    every few steps, and each one traverses every object of torch, DGL and the data (about
    300,000): 15 % of the training time on the traffic benchmark (``docs/performance.md``).
    Objects created inside are collected as usual; the old ones are back on exit.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def check_lr_schedule(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is one of :data:`LR_SCHEDULES`."""
    if name not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {name!r}")


def lr_scheduler(
    optimizer: torch.optim.Optimizer, name: str, steps: int, final_fraction: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """``"cosine"``: from the optimizer's rate to ``final_fraction`` of it over ``steps``; ``"constant"``."""
    check_lr_schedule(name)
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    lr = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=lr * final_fraction)
