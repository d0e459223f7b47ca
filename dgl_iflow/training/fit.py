"""Training loop for :class:`~dgl_iflow.IGNN`: mini-batches over samples of one graph."""
from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._backend import dgl
from ..checkpoints import rng_state, set_rng_state
from ..models import IGNN
from ..transforms import InversionError
from .common import check_lr_schedule, frozen_gc, lr_scheduler, seeded


@dataclass
class TrainConfig:
    """Settings of :func:`fit`.

    Attributes
    ----------
    epochs : int
        Passes over the training samples.
    batch_size : int
        Samples per mini-batch; every sample is a whole graph signal ``(V, d)``.
    lr, weight_decay : float
        Adam settings.
    lr_schedule : str
        ``"cosine"`` (to ``lr / 100`` at the last epoch), ``"constant"``.
    classification_weight : float
        :math:`\\mu`, weight of the latent cross-entropy.
    transport_weight : float
        :math:`\\gamma`, weight of the transport cost.
    inversion_check_samples : int
        After every epoch, the relative error of :math:`F^{-1}(F(x))` on this many held-out
        samples is recorded, and these samples' latents together with as many latents drawn
        given their labels are inverted with :func:`repair_invertibility` (0 disables both).
    inversion_check_iterations : int
        Fixed-point iterations the check allows each block to reach a relative residual of
        1e-5; generation allows 1000, so a model that passes inverts fresh samples with margin.
    inversion_rescale : float
        Factor (< 1) applied to the last layer of a block that fails the check.
    final_check_repeats : int
        After the last epoch the check draws this many times more latents, so that
        generation after training rarely meets a block that fails.
    seed : int
        Seeds Python, NumPy and torch for the run, whose random streams are then put back as
        the caller left them; two runs with one seed give identical models.
    checkpoint_path : str, optional
        Written atomically after every epoch, with optimizer, schedule and RNG states.
    progress : bool
        Show a tqdm bar with the loss terms.
    device : str
        Where to train.
    """

    epochs: int = 100
    batch_size: int = 200
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    classification_weight: float = 0.1
    transport_weight: float = 1.0
    inversion_check_samples: int = 100
    inversion_check_iterations: int = 100
    inversion_rescale: float = 0.9
    final_check_repeats: int = 20
    seed: int = 0
    checkpoint_path: str | None = None
    progress: bool = True
    device: str = "cpu"


@dataclass
class TrainHistory:
    """Per-epoch means of the loss terms, inversion errors, rescalings and timings."""

    epochs: list[dict[str, float]] = field(default_factory=list)

    def last(self) -> dict[str, float]:
        return self.epochs[-1]


def _check_samples(model: IGNN, graph: dgl.DGLGraph, x: Tensor, y: Tensor, name: str) -> None:
    model.check_features(graph, x, f"{name} features")
    model.check_labels(x, y)
    bad = (y < 0) | (y >= model.num_classes)
    if bad.any():
        raise ValueError(f"{name} labels must lie in [0, {model.num_classes}); found {sorted(set(y[bad].tolist()))}")


@torch.no_grad()
def repair_invertibility(
    model: IGNN, graph: dgl.DGLGraph, latents: Callable[[], Tensor], factor: float = 0.9,
    tol: float = 1e-5, max_iter: int = 100, max_rounds: int = 50,
) -> int:
    """Shrink the blocks whose fixed-point inverse fails on the latents ``latents()`` returns.

    Generation inverts the flow where no training data was encoded, and a block whose
    residual function is not contractive there fails first. Each round inverts fresh
    latents ``(N, V, d)`` block by block; the first block that does not reach ``tol`` within
    ``max_iter`` iterations is shrunk by ``factor`` (:meth:`~dgl_iflow.transforms.InvertibleResBlock.shrink`),
    and nothing else changes. A ``max_iter`` well
    below the one generation uses leaves a margin: a block that passes here contracts fast.
    Returns the number of shrinks; raises :class:`InversionError` if ``max_rounds`` did not
    suffice.
    """
    for shrinks in range(max_rounds + 1):
        flow_graph, z = model.to_flow(graph, latents())
        failed = None
        for block in reversed(model.flow.blocks):
            try:
                z, _ = block.inverse(flow_graph, z, tol=tol, max_iter=max_iter)
            except InversionError:
                failed = block
                break
        if failed is None:
            return shrinks
        failed.shrink(factor)
    raise InversionError(f"blocks still fail to invert after {max_rounds} shrinks by {factor}", math.inf, max_iter)


def fit(
    model: IGNN,
    graph: dgl.DGLGraph,
    x_train: Tensor,
    y_train: Tensor,
    config: TrainConfig | None = None,
    *,
    x_val: Tensor | None = None,
    y_val: Tensor | None = None,
    resume_from: str | os.PathLike | None = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    make_batch_loss: Callable[..., Callable[[Tensor], dict[str, Tensor]]] | None = None,
) -> TrainHistory:
    """Train ``model`` on samples of ``graph``.

    Parameters
    ----------
    model : IGNN
        Trained in place.
    graph : DGLGraph
        The graph of every sample.
    x_train : Tensor
        ``(N, V, d)`` training features (sample-first, as the data sets give them).
    y_train : Tensor
        ``(N, V)`` labels.
    config : TrainConfig
        Settings; defaults when absent.
    x_val, y_val : Tensor, optional
        Held-out ``(M, V, d)`` features and ``(M, V)`` labels for the per-epoch inversion
        checks (a random subset of them); training samples when absent.
    resume_from : path, optional
        Checkpoint written by a previous :func:`fit`; training continues after its last epoch
        with the same optimizer, schedule and random state.
    callback : callable, optional
        Called as ``callback(epoch, record)`` after every epoch.
    make_batch_loss : callable, optional
        Hook for :mod:`dgl_iflow.training.distributed`: called once before the first epoch as
        ``make_batch_loss(model, graph, x_train, y_train, config)`` (tensors on the training
        device), it returns the function mapping a mini-batch's sample indices to the loss
        terms (``model.loss`` on those samples by default) whose ``"loss"`` is back-propagated.

    Returns
    -------
    TrainHistory
    """
    config = config or TrainConfig()
    _check_samples(model, graph, x_train, y_train, "training")
    if x_val is not None:
        _check_samples(model, graph, x_val, y_val, "validation")
    check_lr_schedule(config.lr_schedule)
    with seeded(config.seed), frozen_gc():
        return _train(model, graph, x_train, y_train, config, x_val, y_val, resume_from, callback, make_batch_loss)


def _train(
    model: IGNN, graph: dgl.DGLGraph, x_train: Tensor, y_train: Tensor, config: TrainConfig,
    x_val: Tensor | None, y_val: Tensor | None, resume_from: str | os.PathLike | None,
    callback: Callable[[int, dict[str, float]], None] | None,
    make_batch_loss: Callable[..., Callable[[Tensor], dict[str, Tensor]]] | None,
) -> TrainHistory:
    device = torch.device(config.device)
    model.to(device)
    x_train = x_train.to(device, model.dtype)
    y_train = y_train.to(device)
    x_pool = x_train if x_val is None else x_val.to(device, x_train.dtype)
    y_pool = y_train if y_val is None else y_val.to(device)
    # A random subset: data sets are often ordered by label vector, and the latent check
    # must see every label vector that generation will be asked for.
    check_index = torch.randperm(len(x_pool), device=device)[: config.inversion_check_samples]
    x_check, y_check = x_pool[check_index], y_pool[check_index]
    model.latent.fit_priors(y_train.reshape(-1))

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = lr_scheduler(optimizer, config.lr_schedule, config.epochs, final_fraction=0.01)
    history = TrainHistory()
    start_epoch = 0
    if resume_from is not None:
        checkpoint = model.load_weights(resume_from)
        unchecked = dict(checkpoint_path=None, progress=None, device=None)
        if {**checkpoint.get("train_config", {}), **unchecked} != {**dataclasses.asdict(config), **unchecked}:
            raise ValueError(f"checkpoint {resume_from} was written with another TrainConfig: "
                             f"{checkpoint.get('train_config')}")
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        history = TrainHistory(list(checkpoint["history"]))
        start_epoch = checkpoint["epoch"]
        set_rng_state(checkpoint["rng"])

    def model_loss(batch: Tensor) -> dict[str, Tensor]:
        return model.loss(
            graph, x_train[batch], y_train[batch],
            classification_weight=config.classification_weight,
            transport_weight=config.transport_weight,
        )

    batch_loss = model_loss if make_batch_loss is None else make_batch_loss(model, graph, x_train, y_train, config)
    num_samples = len(x_train)
    bar = tqdm(range(start_epoch, config.epochs), desc="train", disable=not config.progress, unit="epoch")
    for epoch in bar:
        model.train()
        started = time.perf_counter()
        totals: dict[str, float] = {}
        order = torch.randperm(num_samples, device=device)
        num_batches = math.ceil(num_samples / config.batch_size)
        for batch in order.split(config.batch_size):
            terms = batch_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            for key, value in terms.items():
                totals[key] = totals.get(key, 0.0) + float(value) / num_batches
        scheduler.step()
        record = dict(epoch=epoch + 1, seconds=time.perf_counter() - started, lr=optimizer.param_groups[0]["lr"], **totals)
        model.eval()
        if config.inversion_check_samples > 0:
            record["inversion_error"] = float(model.round_trip_error(graph, x_check, relative=True, max_iter=200).max())
            repeats = config.final_check_repeats if epoch + 1 == config.epochs else 1

            def check_latents() -> Tensor:
                encoded = model.encode(graph, x_check, logdet=False)[0]
                drawn = model.latent.sample(y_check.repeat(repeats, 1))
                return torch.cat([encoded, drawn])

            record["shrinks"] = float(repair_invertibility(
                model, graph, check_latents, config.inversion_rescale,
                max_iter=config.inversion_check_iterations,
            ))
        history.epochs.append(record)
        bar.set_postfix({k: f"{record[k]:.3g}" for k in ("loss", "nll", "ce", "transport", "inversion_error") if k in record})
        if config.checkpoint_path is not None:
            model.save(
                config.checkpoint_path, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                history=history.epochs, epoch=epoch + 1, rng=rng_state(),
                train_config=dataclasses.asdict(config),
            )
        if callback is not None:
            callback(epoch + 1, record)
    return history
