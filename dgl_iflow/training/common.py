"""What the trainers share: one random-state policy, the garbage-collector freeze and the
backward pass of a mini-batch in chunks."""
from __future__ import annotations

import gc
import math
import numbers
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor

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


def check_label_range(model: Any, y: Tensor | None, name: str) -> None:
    """Raise ``ValueError`` unless the class labels ``y`` of ``model`` lie in ``[0, K)``.

    Real-valued targets (a law that is not discrete; :meth:`~dgl_iflow.models.base.FlowModel.check_labels`
    has checked them finite) and ``None`` (no law) have no range and pass: both trainers ask
    the model's law, not the labels' dtype, which kind they hold.
    """
    if y is None or model.continuous:
        return
    bad = (y < 0) | (y >= model.num_classes)
    if bad.any():
        raise ValueError(f"{name} must lie in [0, {model.num_classes}); found {sorted(set(y[bad].tolist()))}")


def check_lr_schedule(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is one of :data:`LR_SCHEDULES`."""
    if name not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {name!r}")


# -- configurations that check themselves -----------------------------------------------------

def _is_whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_count(config: Any, name: str, minimum: int = 1, optional: bool = False) -> None:
    """Raise ``ValueError`` unless ``config.<name>`` is an integer ``>= minimum`` (or ``None`` if ``optional``)."""
    value = getattr(config, name)
    if optional and value is None:
        return
    if not _is_whole(value) or value < minimum:
        also = " or None" if optional else ""
        raise ValueError(f"{type(config).__name__}.{name} must be an integer >= {minimum}{also}, got {value!r}")


def check_number(config: Any, name: str, low: float = 0.0, high: float = math.inf, low_open: bool = True,
                 high_open: bool = True, optional: bool = False) -> None:
    """Raise ``ValueError`` unless ``config.<name>`` is a finite number in the interval from
    ``low`` to ``high`` (open or closed at each end; ``None`` passes if ``optional``)."""
    value = getattr(config, name)
    if optional and value is None:
        return
    inside = _is_real(value) and math.isfinite(value) \
        and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not inside:
        if high == math.inf:
            where = f"> {low:g}" if low_open else f">= {low:g}"
        else:
            where = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        also = " or None" if optional else ""
        raise ValueError(f"{type(config).__name__}.{name} must be a number {where}{also}, got {value!r}")


def check_device(config: Any) -> None:
    """Raise ``ValueError`` unless ``config.device`` names a torch device such as ``"cpu"`` or ``"cuda:0"``."""
    try:
        torch.device(config.device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{type(config).__name__}.device must name a torch device such as 'cpu', 'cuda' or "
                         f"'cuda:1', got {config.device!r}") from None


def config_differences(saved: Mapping[str, Any], given: Mapping[str, Any], ignore: Iterable[str] = ()) -> str:
    """The settings that differ between a saved configuration and a given one, ``""`` if none.

    One ``name old -> new`` per difference, in the given configuration's order, comma-separated:
    the part of a one-line error that says exactly what to change back.
    """
    ignored = set(ignore)
    names = [*given, *(name for name in saved if name not in given)]
    return ", ".join(f"{name} {saved.get(name, '(absent)')!r} -> {given.get(name, '(absent)')!r}"
                     for name in names if name not in ignored and saved.get(name) != given.get(name))


def lr_scheduler(
    optimizer: torch.optim.Optimizer, name: str, steps: int, final_fraction: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """``"cosine"``: from the optimizer's rate to ``final_fraction`` of it over ``steps``; ``"constant"``."""
    check_lr_schedule(name)
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    lr = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=lr * final_fraction)


def respan_lr_schedule(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                       steps: int) -> None:
    """Make a resumed schedule of :func:`lr_scheduler` end at step ``steps`` instead of its own end.

    A cosine schedule continues from the step it reached on the cosine that spans ``steps``
    (the rate jumps there, up for a run that had ended); stepped past its own end it would
    instead rise again. A constant schedule is left as it is.
    """
    if not isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) or scheduler.T_max == steps:
        return
    scheduler.T_max = steps
    # The scheduler computes each rate from the last one, so the last one is put on the new curve.
    position = math.pi * scheduler.last_epoch / steps
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(position)) / 2
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def backward_in_chunks(batch_loss: Callable[[Tensor], dict[str, Tensor]], batch: Tensor,
                       chunk_size: int | None) -> dict[str, float]:
    """Back-propagate a mini-batch's mean loss in chunks of at most ``chunk_size`` samples.

    ``batch_loss`` maps sample indices to loss terms that are means over those samples (and
    constants such as a barrier); each chunk's terms are weighed by its share of ``batch``, so
    the accumulated gradients are the whole batch's. The terms come back as floats, the
    batch's means. ``chunk_size=None`` runs the batch at once.

    Chunks trade per-call overhead for working sets that stay in the CPU caches: on a graph of
    1e5 nodes, chunks of 4 samples take a batch of 32 in 1.3-1.9x less time (``docs/performance.md``,
    "Scale"). What draws random numbers per call (the estimator's probes) draws per chunk.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of samples or None, got {chunk_size}")
    totals: dict[str, float] = {}
    for chunk in batch.split(chunk_size or max(len(batch), 1)):
        share = len(chunk) / len(batch)
        terms = batch_loss(chunk)
        (terms["loss"] * share).backward()
        for key, value in terms.items():
            totals[key] = totals.get(key, 0.0) + float(value.detach()) * share
    return totals
