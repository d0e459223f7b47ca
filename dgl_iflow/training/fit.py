"""Training loop for :class:`~dgl_iflow.IGNN`: mini-batches over samples of one graph."""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..graphs import GraphLike
from ..checkpoints import rng_state, set_rng_state
from ..models import IGNN
from ..models.readout import check_readout_size
from ..progress import progress_bar
from ..transforms import InversionError
from .common import (backward_in_chunks, check_count, check_device, check_label_range, check_lr_schedule,
                     check_number, config_differences, frozen_gc, lr_scheduler, respan_lr_schedule, seeded)


@dataclass
class TrainConfig:
    """Settings of :func:`fit`.

    Attributes
    ----------
    epochs : int
        Passes over the training samples.
    batch_size : int
        Samples per mini-batch; every sample is a whole graph signal ``(V, d)``.
    chunk_size : int, optional
        Samples per forward and backward pass: a mini-batch runs in chunks whose gradients
        add up to the batch's, and the optimizer steps once per batch
        (:func:`~dgl_iflow.training.common.backward_in_chunks`). Worth it on large graphs, where
        a whole batch's activations leave the CPU caches; ``None``: the whole batch at once.
        With ``lipschitz_coeff``, the power iteration advances once per chunk.
    lr, weight_decay : float
        Adam settings.
    lr_schedule : str
        ``"cosine"`` (to ``lr / 100`` at the last epoch), ``"constant"``.
    classification_weight : float
        :math:`\\mu`, weight of the latent cross-entropy.
    transport_weight : float
        :math:`\\gamma`, weight of the transport cost.
    label_vector_gaussians : bool
        Once trained, fit the latent law to the trained flow's latents of the training rows
        (:meth:`~dgl_iflow.latents.LatentLaw.fit_after_training`) before the final inversion
        check, so that check inverts latents drawn from the fitted law. The Gaussian laws give
        every training label vector its own Gaussian over all ``V d`` latent coordinates
        (:meth:`~dgl_iflow.latents.NodeGaussianLatent.fit_label_vector_gaussians`, with its
        cross-validated pseudo-count).
    readout : bool
        Once trained and checked, fit the model's discriminative head to the training rows
        (:meth:`~dgl_iflow.models.base.FlowModel.fit_readout`): per-node logistic regression
        on the features and the latent, which :meth:`~dgl_iflow.models.base.FlowModel.predict_proba`
        then uses, or ridge regression for real-valued targets, which
        :meth:`~dgl_iflow.models.base.FlowModel.predict` and ``predict_interval`` use. Densities
        and samples are unchanged.
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
        The check of the model :func:`fit` returns (the last epoch's, or with ``patience`` the
        restored best epoch's) draws this many times more latents, so that generation after
        training rarely meets a block that fails.
    patience : int, optional
        With validation data, training stops once the validation NLL has not been lower than
        its best for this many consecutive epochs, and the model is restored to the weights of
        its best epoch (also when ``epochs`` ends training first). ``epochs`` is then the most
        that run; the cosine schedule still spans ``epochs``.
    seed : int
        Seeds Python, NumPy and torch for the run, whose random streams are then put back as
        the caller left them; two runs with one seed give identical models.
    checkpoint_path : str, optional
        Written atomically after every epoch, with optimizer, schedule and RNG states.
    progress : bool
        Report progress and the loss terms on stderr: a tqdm bar on a terminal, otherwise a
        rate-limited plain line and one at the end (:func:`~dgl_iflow.progress.progress_bar`).
    device : str
        Where to train.
    """

    epochs: int = 100
    batch_size: int = 200
    chunk_size: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    classification_weight: float = 0.1
    transport_weight: float = 1.0
    label_vector_gaussians: bool = False
    readout: bool = False
    inversion_check_samples: int = 100
    inversion_check_iterations: int = 100
    inversion_rescale: float = 0.9
    final_check_repeats: int = 20
    patience: int | None = None
    seed: int = 0
    checkpoint_path: str | None = None
    progress: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError``, one line naming the setting, unless every setting is in range.

        Runs when the configuration is built, and again in :func:`fit` for one changed since.
        """
        check_count(self, "epochs")
        check_count(self, "batch_size")
        check_count(self, "chunk_size", optional=True)
        check_number(self, "lr")
        check_number(self, "weight_decay", low_open=False)
        check_lr_schedule(self.lr_schedule)
        check_number(self, "classification_weight", low_open=False)
        check_number(self, "transport_weight", low_open=False)
        check_count(self, "inversion_check_samples", minimum=0)
        check_count(self, "inversion_check_iterations")
        check_number(self, "inversion_rescale", high=1.0)
        check_count(self, "final_check_repeats", minimum=0)
        check_count(self, "patience", optional=True)
        check_count(self, "seed", minimum=0)
        if self.seed >= 2**32:  # NumPy's legacy seed is 32 bits
            raise ValueError(f"TrainConfig.seed must be below 2**32, got {self.seed}")
        check_device(self)


@dataclass
class TrainHistory:
    """What :func:`fit` measured.

    Attributes
    ----------
    epochs : list of dict
        One record per epoch: ``epoch`` (from 1), ``seconds``, ``lr``, the means of the loss
        terms, the inversion check's ``inversion_error`` and ``shrinks``, and with validation
        data ``val_nll``, the NLL per validation sample of the model the epoch ends with.
    best_epoch : int or None
        The first epoch of the lowest ``val_nll``; ``None`` without validation data (or while
        no epoch has a finite one).
    stopped_early : bool
        Whether ``patience`` ended training before ``epochs``.
    final_shrinks : int or None
        Shrinks made by the check with ``final_check_repeats`` (for a run without ``patience``
        the last epoch's ``shrinks``); ``None`` while training has not ended, or without checks.
    """

    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    final_shrinks: int | None = None

    def last(self) -> dict[str, float]:
        return self.epochs[-1]


def _check_samples(model: IGNN, graph: GraphLike, x: Tensor, y: Tensor, name: str) -> None:
    model.check_features(graph, x, f"{name} features")
    model.check_labels(x, y, f"{name} labels")
    check_label_range(model, y, f"{name} labels")


@torch.no_grad()
def repair_invertibility(
    model: IGNN, graph: GraphLike, latents: Callable[[], Tensor], factor: float = 0.9,
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


#: Samples per forward pass of the validation NLL; without a backward pass, far more fit than
#: in a training batch.
_VALIDATION_CHUNK = 4096


@torch.no_grad()
def _validation_nll(model: IGNN, graph: GraphLike, x: Tensor, y: Tensor, seed: int) -> float:
    """Mean NLL per sample of ``x`` given ``y``."""
    # The log-determinant estimator draws probes: the same ones every epoch make epochs
    # comparable, and the training streams stay where they are.
    with seeded(seed):
        total = sum(float(-model.log_prob(graph, x_part, y_part).sum())
                    for x_part, y_part in zip(x.split(_VALIDATION_CHUNK), y.split(_VALIDATION_CHUNK)))
    return total / len(x)


def fit(
    model: IGNN,
    graph: GraphLike,
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
    graph : GraphLike
        The graph of every sample, in any form of :mod:`dgl_iflow.graphs`.
    x_train : Tensor
        ``(N, V, d)`` training features (sample-first, as the data sets give them).
    y_train : Tensor
        ``(N, V)`` labels: classes, or real-valued targets (``(N, V)`` or ``(N, V, q)``) for a
        model with a continuous law.
    config : TrainConfig
        Settings; defaults when absent.
    x_val, y_val : Tensor, optional
        Held-out ``(M, V, d)`` features and ``(M, V)`` labels: their NLL after every epoch
        (``val_nll``, which ``config.patience`` stops on), and a random subset of them for the
        inversion checks, which take training samples when they are absent.
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
    if model.latent is None:
        raise ValueError("fit trains a model of X given labels: build it with num_classes, or with "
                         "latent=\"linear_gaussian\" for real-valued targets")
    graph = model.check_graph(graph)  # converted once, not at every mini-batch
    x_train, y_train = model.as_features(x_train, "x_train"), model.as_labels(y_train, "y_train")
    if x_val is not None:
        x_val, y_val = model.as_features(x_val, "x_val"), model.as_labels(y_val, "y_val")
    _check_samples(model, graph, x_train, y_train, "training")
    if x_val is not None:
        _check_samples(model, graph, x_val, y_val, "validation")
    config.validate()
    if config.patience is not None and x_val is None:
        raise ValueError("patience stops on the validation NLL: pass x_val and y_val")
    if config.readout:  # refused before training, not after
        outputs = math.prod(model.label_shape) if model.continuous else model.num_classes
        check_readout_size(model.num_nodes, model.feats, outputs)
    with seeded(config.seed), frozen_gc():
        return _train(model, graph, x_train, y_train, config, x_val, y_val, resume_from, callback, make_batch_loss)


def _train(
    model: IGNN, graph: GraphLike, x_train: Tensor, y_train: Tensor, config: TrainConfig,
    x_val: Tensor | None, y_val: Tensor | None, resume_from: str | os.PathLike | None,
    callback: Callable[[int, dict[str, float]], None] | None,
    make_batch_loss: Callable[..., Callable[[Tensor], dict[str, Tensor]]] | None,
) -> TrainHistory:
    device = torch.device(config.device)
    model.to(device)
    x_train = x_train.to(device, model.dtype)
    y_train = y_train.to(device)
    if x_val is not None:
        x_val, y_val = x_val.to(device, x_train.dtype), y_val.to(device)
    x_pool = x_train if x_val is None else x_val
    y_pool = y_train if y_val is None else y_val
    # A random subset: data sets are often ordered by label vector, and the latent check
    # must see every label vector that generation will be asked for.
    check_index = torch.randperm(len(x_pool), device=device)[: config.inversion_check_samples]
    x_check, y_check = x_pool[check_index], y_pool[check_index]
    model.latent.fit_before_training(y_train)
    model.readout.clear()  # fitted to other weights
    # Units already initialized (a trained or loaded model) keep their parameters.
    model.flow.initialize_from_data(*model.to_flow(graph, x_train))

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = lr_scheduler(optimizer, config.lr_schedule, config.epochs, final_fraction=0.01)
    history = TrainHistory()
    best_state = None  # the weights of history.best_epoch, kept when patience may restore them
    start_epoch = 0
    if resume_from is not None:
        checkpoint = model.load_weights(resume_from)
        # Settings that do not change the training may differ (the readout is fitted after it);
        # epochs may grow (checked below).
        unchecked = ("checkpoint_path", "progress", "device", "chunk_size", "epochs", "readout")
        differences = config_differences(checkpoint.get("train_config", {}), dataclasses.asdict(config), unchecked)
        if differences:
            raise ValueError(f"cannot resume from checkpoint {resume_from}: its TrainConfig differs in "
                             f"{differences} (saved -> given); resume with the saved settings, where only "
                             f"epochs may grow, or train afresh without resume_from")
        if checkpoint["epoch"] > config.epochs:
            raise ValueError(f"cannot resume from checkpoint {resume_from} with epochs={config.epochs}: it has "
                             f"trained {checkpoint['epoch']} epochs already; pass epochs >= {checkpoint['epoch']}")
        saved_epochs = checkpoint.get("train_config", {}).get("epochs", checkpoint["epoch"])
        finished = checkpoint["history"]["stopped_early"] or checkpoint["epoch"] >= saved_epochs
        if config.patience is not None and finished and config.epochs > saved_epochs:
            # Its weights are the best epoch's, its optimizer state the last epoch's: they do not go on together.
            raise ValueError(f"cannot extend checkpoint {resume_from}: a run with patience ends on its best "
                             "epoch's weights, not its last; train afresh with more epochs")
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        respan_lr_schedule(optimizer, scheduler, config.epochs)  # when epochs grew
        if checkpoint["epoch"] < config.epochs:
            # What a finished run fitted after training belongs to its last weights, as in a fresh run.
            model.latent.fit_before_training(y_train)
        history = TrainHistory(**checkpoint["history"])
        best_state = checkpoint["best_state"]
        start_epoch = checkpoint["epoch"]
        set_rng_state(checkpoint["rng"])

    def model_loss(batch: Tensor) -> dict[str, Tensor]:
        return model.loss(
            graph, x_train[batch], y_train[batch],
            classification_weight=config.classification_weight,
            transport_weight=config.transport_weight,
        )

    def repair(repeats: int) -> int:
        def check_latents() -> Tensor:
            encoded = model.encode(graph, x_check, logdet=False)[0]
            with warnings.catch_warnings():
                # Validation label vectors unseen in training are meant to be checked under the
                # node law; the latent's warning about that fallback is for users' sampling.
                warnings.filterwarnings("ignore", message=".*never seen in training")
                drawn = model.latent.sample(y_check.repeat(repeats, *[1] * (y_check.ndim - 1)))
            return torch.cat([encoded, drawn])

        return repair_invertibility(model, graph, check_latents, config.inversion_rescale,
                                    max_iter=config.inversion_check_iterations)

    def fit_after_training() -> None:
        with torch.no_grad():
            h = torch.cat([model.encode(graph, part, logdet=False)[0] for part in x_train.split(config.batch_size)])
        model.latent.fit_after_training(h, y_train)

    fits_after = config.label_vector_gaussians and model.latent.fits_after_training

    def finish() -> int | None:
        """The latent's fit after training if asked, the final check, then the readout if asked;
        the check's rescalings, None without checks."""
        if fits_after:
            fit_after_training()
        shrinks = None
        if checks:
            shrinks = repair(config.final_check_repeats)
            if shrinks and fits_after:
                # The rescaled flow moved the latents: fit to them, and check those draws too.
                fit_after_training()
                shrinks += repair(config.final_check_repeats)
        if config.readout:
            model.fit_readout(graph, x_train, y_train)
        return shrinks

    batch_loss = model_loss if make_batch_loss is None else make_batch_loss(model, graph, x_train, y_train, config)
    num_samples = len(x_train)
    checks = config.inversion_check_samples > 0
    end_epoch = start_epoch if history.stopped_early else config.epochs
    bar = progress_bar(range(start_epoch, end_epoch), total=config.epochs, initial=start_epoch, desc="train",
                       disable=not config.progress, unit="epoch")
    for epoch in bar:
        model.train()
        started = time.perf_counter()
        totals: dict[str, float] = {}
        order = torch.randperm(num_samples, device=device)
        num_batches = math.ceil(num_samples / config.batch_size)
        for batch in order.split(config.batch_size):
            optimizer.zero_grad(set_to_none=True)
            terms = backward_in_chunks(batch_loss, batch, config.chunk_size)
            optimizer.step()
            for key, value in terms.items():
                totals[key] = totals.get(key, 0.0) + value / num_batches
        scheduler.step()
        record = dict(epoch=epoch + 1, seconds=time.perf_counter() - started, lr=optimizer.param_groups[0]["lr"], **totals)
        model.eval()
        last = epoch + 1 == config.epochs
        # With patience the model returned is the best epoch's, checked once restored below.
        final_here = last and config.patience is None
        if checks:
            record["inversion_error"] = float(model.round_trip_error(graph, x_check, relative=True, max_iter=200).max())
        if final_here:
            history.final_shrinks = finish()
            if checks:
                record["shrinks"] = float(history.final_shrinks)
        elif checks:
            record["shrinks"] = float(repair(1))
        if x_val is not None:
            # Measured after the check: the model this epoch hands on, and saves.
            record["val_nll"] = _validation_nll(model, graph, x_val, y_val, config.seed)
            best = math.inf if history.best_epoch is None else history.epochs[history.best_epoch - 1]["val_nll"]
            if record["val_nll"] < best:
                history.best_epoch = epoch + 1
                if config.patience is not None:
                    best_state = copy.deepcopy(model.state_dict())
        history.epochs.append(record)
        if config.patience is not None:
            history.stopped_early = not last and epoch + 1 - (history.best_epoch or 0) >= config.patience
            if last or history.stopped_early:
                if best_state is not None:  # None only if no val_nll was below infinity
                    model.load_state_dict(best_state)
                history.final_shrinks = finish()
        shown = ("loss", "nll", "ce", "transport", "inversion_error", "val_nll")
        bar.set_postfix({k: f"{record[k]:.3g}" for k in shown if k in record})
        if config.checkpoint_path is not None:
            model.save(
                config.checkpoint_path, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                history=dataclasses.asdict(history), best_state=best_state, epoch=epoch + 1, rng=rng_state(),
                train_config=dataclasses.asdict(config),
            )
        if callback is not None:
            callback(epoch + 1, record)
        if history.stopped_early:
            break
    return history
