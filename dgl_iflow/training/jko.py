"""Block-wise training of a :class:`JKOFlow`: one JKO step at a time, earlier blocks frozen."""
from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..graphs import GraphLike
from ..checkpoints import rng_state, set_rng_state
from ..progress import Progress, progress_bar
from .common import (check_count, check_device, check_label_range, check_lr_schedule, check_number,
                     config_differences, frozen_gc, lr_scheduler, seeded)
from ..transforms.ode_block import JKOBlock
from ..models import JKOFlow
from .jko_schedule import refine, reparametrize, step_size


@dataclass
class JKOConfig:
    """Settings of :func:`fit_jko`.

    Attributes
    ----------
    h0, rho, h_max : float
        Step sizes of the first pass, :math:`h_k = \\min(\\rho^k h_0, h_{max})`.
    max_blocks : int
        Most blocks the first pass adds.
    min_blocks : int
        Fewest blocks it adds before the stopping rule applies. The rule assumes that the first
        blocks move the most, as exact JKO steps do; blocks trained on a small budget, or a
        target that the flow approaches slowly at first (interleaved classes), can break that.
    tol : float
        The first pass stops once a block moves the data little:
        :math:`\\mathbb{E}\\|x(t_{k+1}) - x(t_k)\\|^2 / \\mathbb{E}\\|x(t_{k+1}) - \\mu_Y\\|^2 <` ``tol``,
        with :math:`\\mu_Y` the latent means of a conditional model (the law's ``centers``: class
        means, or :math:`A y + b` for real-valued targets; zero otherwise): far apart means
        would otherwise make every movement look small.
    iterations : int
        Mini-batches per block in the first pass.
    retrain_iterations : int, optional
        Mini-batches per block when retraining after re-spacing or refinement; default
        ``iterations``.
    batch_size : int
        Samples per mini-batch.
    lr : float
        Adam learning rate, restarted for every block.
    lr_schedule : str
        ``"cosine"`` (to ``lr / 10`` over each block's mini-batches) or ``"constant"``.
    grad_clip : float, optional
        Largest gradient norm of a step.
    warm_start : bool
        Start block :math:`k` as a copy of block :math:`k - 1`'s flow map; else as the identity.
    reparametrize_rounds : int
        Rounds of re-spacing the grid by block movement (:func:`reparametrize`) and retraining,
        after the first pass; with validation data a round is kept only if it lowers the
        validation NLL.
    eta : float
        Damping of the re-spacing.
    refine_rounds : int
        Rounds of splitting every block in two (:func:`refine`) and retraining, after the
        re-spacing rounds; kept like them.
    patience : int, optional
        Early stopping on validation data (``fit_jko(..., x_val=, y_val=)``; required then):
        every ``eval_every`` mini-batches the block's JKO objective on the validation samples
        is measured, the block stops once it has not improved for ``patience`` measurements and
        keeps its best weights, so ``iterations`` (and ``retrain_iterations``) become the most
        a block trains. The first pass also stops when a new block does not lower the
        validation NLL (once ``min_blocks`` are trained); that block is dropped
        (:attr:`JKOHistory.discarded`). ``None`` trains every block for its full budget.
    eval_every : int
        Mini-batches between two validation measurements of a block.
    check_samples : int
        Training samples on which each block's forward/backward round trip is checked.
    round_trip_tol : float, optional
        Stiffness control: after a block is trained, its RK4 sub-steps are doubled (up to
        ``max_steps``) until the relative round trip ``max ||x - T^-1(T(x))|| / ||x||`` on the
        check samples is at most this; ``None`` keeps the model's ``steps``.
    max_steps : int
        Most RK4 sub-steps the stiffness control gives a block.
    push_batch_size : int
        Samples per chunk when pushing the training data through a finished block.
    seed : int
        :meth:`JKOTrainer.fit` (and :func:`fit_jko`) seeds the initial weights, mini-batch order
        and Hutchinson probes with it and puts the caller's random streams back afterwards;
        :meth:`JKOTrainer.grow` and :meth:`JKOTrainer.retrain` called on their own draw
        weights and probes from the caller's streams (the mini-batch order is always seeded).
    checkpoint_path : str, optional
        Written atomically after every finished block: the model and what the trainer needs
        to resume there (``fit_jko(..., resume_from=path)``) with identical results.
    progress : bool
        Report each pass on stderr: a tqdm bar on a terminal, otherwise a rate-limited plain
        line and one at the pass's end (:func:`~dgl_iflow.progress.progress_bar`).
    device : str
        Where to train.
    """

    h0: float = 0.5
    rho: float = 1.4
    h_max: float = 2.0
    max_blocks: int = 10
    min_blocks: int = 1
    tol: float = 0.01
    iterations: int = 300
    retrain_iterations: int | None = None
    batch_size: int = 256
    lr: float = 1e-2
    lr_schedule: str = "cosine"
    grad_clip: float | None = 10.0
    warm_start: bool = True
    reparametrize_rounds: int = 0
    eta: float = 0.5
    refine_rounds: int = 0
    patience: int | None = None
    eval_every: int = 10
    check_samples: int = 256
    round_trip_tol: float | None = None
    max_steps: int = 48
    push_batch_size: int = 4096
    seed: int = 0
    checkpoint_path: str | None = None
    progress: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError``, one line naming the setting, unless every setting is in range."""
        for name in ("h0", "rho", "h_max", "lr"):
            check_number(self, name)
        check_number(self, "tol", low_open=False)
        check_number(self, "eta", high=1.0, high_open=False)
        check_number(self, "grad_clip", optional=True)
        check_number(self, "round_trip_tol", optional=True)
        for name in ("max_blocks", "iterations", "batch_size", "eval_every", "check_samples", "max_steps",
                     "push_batch_size"):
            check_count(self, name)
        for name in ("min_blocks", "reparametrize_rounds", "refine_rounds", "seed"):
            check_count(self, name, minimum=0)
        check_count(self, "retrain_iterations", optional=True)
        check_count(self, "patience", optional=True)
        check_lr_schedule(self.lr_schedule)
        if self.seed >= 2**32:  # NumPy's legacy seed is 32 bits
            raise ValueError(f"JKOConfig.seed must be below 2**32, got {self.seed}")
        check_device(self)


@dataclass
class BlockRecord:
    """What training one block gave; means are over all training samples after the block.

    Attributes
    ----------
    stage : str
        ``"grow"``, ``"reparametrize 1"``, ``"refine 1"``, ...
    block : int
        Index :math:`k` from 0.
    t0, t1 : float
        The block's interval.
    loss : float
        Mean mini-batch objective over its last mini-batches (a tenth of the budget).
    objective : float
        :math:`\\mathbb{E}[\\mathrm{potential}(x_{k+1}) - \\ell_k + \\|x_{k+1} - x_k\\|^2 / (2 h_k)]`.
    potential : float
        :math:`\\mathbb{E}[-\\log q(x_{k+1} \\mid Y)]`.
    logdet : float
        :math:`\\mathbb{E}\\,\\ell_k`, the integrated divergence.
    movement : float
        :math:`\\mathbb{E}\\|x_{k+1} - x_k\\|^2`; its square root is :math:`a_k`.
    spread : float
        :math:`\\mathbb{E}\\|x_{k+1} - \\mu_Y\\|^2`, about the latent means (about 0 without labels).
    round_trip : float
        Largest absolute error of backward(forward(x)) over ``check_samples`` samples.
    steps : int
        RK4 sub-steps of the block (more than the model's where the stiffness control added some).
    minibatches : int
        Mini-batches the block was trained on.
    seconds : float
        Wall time of training, validation and pushing.
    val_nll : float
        NLL per validation sample of the model's first ``block + 1`` blocks, by the training
        map (``nan`` without validation data).
    saved_bytes : int
        Bytes of the tensors autograd kept for the first training step of this block: the
        memory that would grow with :math:`k` if earlier blocks were not frozen.
    """

    stage: str
    block: int
    t0: float
    t1: float
    loss: float
    objective: float
    potential: float
    logdet: float
    movement: float
    spread: float
    round_trip: float
    steps: int
    minibatches: int
    seconds: float
    saved_bytes: int
    val_nll: float = math.nan

    @property
    def ratio(self) -> float:
        """Relative movement ``movement / spread``, the stopping statistic of the first pass."""
        return self.movement / self.spread


@dataclass
class StageDecision:
    """Whether a re-spacing or refinement stage was kept, by validation NLL per sample.

    Without validation data every stage is kept and both NLLs are ``nan``.
    """

    stage: str
    nll_before: float
    nll_after: float
    kept: bool


@dataclass
class JKOHistory:
    """Every :class:`BlockRecord` of a training run, in order."""

    records: list[BlockRecord] = field(default_factory=list)
    #: One :class:`StageDecision` per re-spacing or refinement stage, in order.
    decisions: list[StageDecision] = field(default_factory=list)
    #: Blocks of the first pass trained and then dropped for not lowering the validation NLL.
    discarded: list[BlockRecord] = field(default_factory=list)

    def stages(self) -> list[str]:
        """Stage names in the order they ran."""
        return list(dict.fromkeys(record.stage for record in self.records))

    def kept_stages(self) -> list[str]:
        """The stages whose result the model keeps: ``"grow"`` and every stage not rolled back."""
        rejected = {decision.stage for decision in self.decisions if not decision.kept}
        return [name for name in self.stages() if name not in rejected]

    def stage(self, name: str | None = None) -> list[BlockRecord]:
        """Records of one stage; by default the last kept one, which describes the model."""
        name = self.kept_stages()[-1] if name is None else name
        return [record for record in self.records if record.stage == name]

    def movements(self, name: str | None = None) -> list[float]:
        r""":math:`a_k = (\mathbb{E}\|x(t_{k+1}) - x(t_k)\|^2)^{1/2}` per block of a stage."""
        return [math.sqrt(record.movement) for record in self.stage(name)]

    def train_nll(self, name: str | None = None) -> float:
        r"""Training NLL per sample after a stage: :math:`\mathbb{E}[\mathrm{potential}(x_K) - \sum_k \ell_k]`."""
        records = self.stage(name)
        return records[-1].potential - sum(record.logdet for record in records)

    @property
    def minibatches(self) -> int:
        """Mini-batches of the whole run, dropped blocks and rolled-back stages included."""
        return sum(record.minibatches for record in self.records + self.discarded)

    @property
    def seconds(self) -> float:
        """Wall time of the whole run, as :attr:`minibatches` counts."""
        return sum(record.seconds for record in self.records + self.discarded)


@dataclass
class _Position:
    """Samples pushed through the first blocks: features in the blocks' layout ``(V, N, d)``,
    their sample-first labels (``(N, V)`` classes, or targets ``(N, V)`` or ``(N, V, q)``), and
    the mean log-determinant of those blocks per sample."""

    x: Tensor
    labels: Tensor | None
    logdet: float = 0.0

    def labels_at(self, index: Tensor | slice) -> Tensor | None:
        return None if self.labels is None else self.labels[index]


class _BlockStopping:
    """Early stopping inside one block: the best validation objective and the block's weights
    at it; stop after ``patience`` measurements without a strictly lower one (``nan`` never is).

    A block is trained within one call, so unlike ``fit``'s per-epoch stopping nothing of this
    needs to survive a checkpoint.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = math.inf
        self.best_state: dict | None = None
        self.waited = 0

    def update(self, score: float, block: torch.nn.Module) -> bool:
        """Record ``score`` for ``block`` as it is now; ``True`` once training should stop."""
        if score < self.best:
            self.best, self.best_state, self.waited = score, copy.deepcopy(block.state_dict()), 0
        else:
            self.waited += 1
        return self.waited >= self.patience

    def restore(self, block: torch.nn.Module) -> None:
        """Put the best weights back into ``block`` (nothing if no score was finite)."""
        if self.best_state is not None:
            block.load_state_dict(self.best_state)


class SavedTensorMeter:
    """Counts the bytes of distinct storages autograd saves for backward inside the context."""

    def __init__(self) -> None:
        self.bytes = 0
        self._seen: set[int] = set()

    def _pack(self, tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            self.bytes += storage.nbytes()
        return tensor

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def block_objective(
    model: JKOFlow, x0: Tensor, x1: Tensor, logdet: Tensor, y: Tensor | None, h: float
) -> Tensor:
    r"""JKO objective of one block per sample, on features in the blocks' layout.

    .. math::
        \mathrm{potential}(x_{k+1}) - \int_{t_k}^{t_{k+1}} \operatorname{div} f\, dt
        + \frac{\|x_{k+1} - x_k\|^2}{2 h_k},

    the free energy :math:`\mathrm{KL}(p_{k+1} \| q)` (up to the fixed entropy of
    :math:`p_k`) plus the Wasserstein proximal term of the JKO step.
    """
    movement = (x1 - x0).pow(2).sum(dim=(0, -1))
    return model.potential(model.from_flow(x1), y) - logdet + movement / (2.0 * h)


class JKOTrainer:
    """Trains a :class:`JKOFlow` block by block on one training set.

    The training data are pushed through each finished block once and only the pushed
    samples are kept, so a step of block :math:`k` holds the autograd graph of one block on
    one mini-batch whatever :math:`k` is.

    Parameters
    ----------
    model : JKOFlow
        Trained in place. :meth:`grow` needs it without blocks; :meth:`retrain` retrains the
        blocks it has.
    graph : GraphLike
        The graph of every sample, in any form of :mod:`dgl_iflow.graphs`.
    x_train : Tensor
        ``(N, V, d)`` features, sample-first as the data sets give them.
    y_train : Tensor, optional
        ``(N, V)`` class labels, or real-valued targets ``(N, V)`` or ``(N, V, q)`` for a model
        of ``latent="linear_gaussian"``; required by conditional models, refused by
        unconditional ones.
    config : JKOConfig, optional
    callback : callable, optional
        Called with every :class:`BlockRecord` as it is made.
    x_val, y_val : Tensor, optional
        Held-out ``(M, V, d)`` features and their labels, shaped as ``y_train``. With them every re-spacing and
        refinement stage is kept only if it lowers the validation NLL (by the model's own
        solver), and rolled back otherwise (:class:`StageDecision`).
    """

    def __init__(
        self,
        model: JKOFlow,
        graph: GraphLike,
        x_train: Tensor,
        y_train: Tensor | None = None,
        config: JKOConfig | None = None,
        callback: Callable[[BlockRecord], None] | None = None,
        x_val: Tensor | None = None,
        y_val: Tensor | None = None,
    ) -> None:
        self.config = config or JKOConfig()
        check_lr_schedule(self.config.lr_schedule)
        counts = {name: getattr(self.config, name) for name in ("iterations", "batch_size", "max_blocks")}
        if min(counts.values()) < 1 or (self.config.retrain_iterations or 1) < 1:
            raise ValueError(f"iterations, retrain_iterations, batch_size and max_blocks must be >= 1, got {counts}")
        x_train, y_train = model.as_features(x_train, "x_train"), model.as_labels(y_train, "y_train")
        graph = model.check_features(graph, x_train, "x_train")
        model.check_labels(x_train, y_train, "y_train")
        check_label_range(model, y_train, "y_train")
        self.model = model.to(self.config.device)
        self.callback = callback
        self.history = JKOHistory()
        self.graph, x_flow = model.to_flow(graph, x_train.to(self.config.device, model.dtype))
        #: The training data before any block.
        self.data = _Position(x_flow, None if y_train is None else y_train.to(self.config.device))
        self.model_graph = graph
        if y_train is not None:
            # As fit does: what the law takes from the labels alone before training, on the
            # training device; predictions use it (the class frequencies, or for real-valued
            # targets the prior N(m_v, S_v) of every node's target).
            model.latent.fit_before_training(self.data.labels)
        self.validation = None
        self.validation_data: _Position | None = None
        if x_val is not None:
            x_val, y_val = model.as_features(x_val, "x_val"), model.as_labels(y_val, "y_val")
            model.check_features(graph, x_val, "x_val")
            model.check_labels(x_val, y_val, "y_val")
            check_label_range(model, y_val, "y_val")
            self.validation = (x_val.to(self.config.device, model.dtype),
                               None if y_val is None else y_val.to(self.config.device))
            #: The validation data before any block.
            self.validation_data = _Position(model.to_flow(graph, self.validation[0])[1], self.validation[1])
        if self.config.patience is not None:
            if self.config.patience < 1 or self.config.eval_every < 1:
                raise ValueError(f"patience and eval_every must be >= 1, got {self.config.patience}, "
                                 f"{self.config.eval_every}")
            if self.validation is None:
                raise ValueError("JKOConfig.patience stops on validation data: pass x_val (and y_val)")
        #: The model before the running re-spacing or refinement stage, and its validation NLL.
        self._before_stage: dict | None = None
        self.order = torch.Generator().manual_seed(self.config.seed)
        self._solver = model.solver
        self._permutation = torch.empty(0, dtype=torch.long)

    # -- one block --------------------------------------------------------

    def _batch_indices(self) -> Tensor:
        # Epochs of random permutations: every sample is seen once before any is seen twice.
        size = self.config.batch_size
        if len(self._permutation) < size:
            fresh = torch.randperm(self.data.x.shape[1], generator=self.order)
            self._permutation = torch.cat([self._permutation, fresh])
        batch, self._permutation = self._permutation[:size], self._permutation[size:]
        return batch.to(self.config.device)

    def _train_block(
        self, block: JKOBlock, cache: _Position, iterations: int, bar: Progress, validation: _Position | None,
    ) -> tuple[float, int, int]:
        """Adam on ``block`` alone, stopped early on ``validation`` under ``patience``.

        Returns the mean loss of the last mini-batches (a tenth of the budget), the saved bytes
        of one step and the mini-batches trained.
        """
        config = self.config
        optimizer = torch.optim.Adam(block.parameters(), lr=config.lr)
        schedule = lr_scheduler(optimizer, config.lr_schedule, iterations, final_fraction=0.1)
        late_losses: collections.deque[float] = collections.deque(maxlen=max(1, iterations // 10))
        stopping = None if config.patience is None else _BlockStopping(config.patience)
        block.train()
        trained = 0
        for iteration in range(iterations):
            index = self._batch_indices()
            x0 = cache.x[:, index]
            # Steps are alike, so the first one is measured: the hooks cost a Python call per tensor.
            with SavedTensorMeter() if iteration == 0 else contextlib.nullcontext() as meter:
                x1, logdet = block(self.graph, x0)
                loss = block_objective(self.model, x0, x1, logdet, cache.labels_at(index), block.h).mean()
            if iteration == 0:
                saved_bytes = meter.bytes
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(block.parameters(), config.grad_clip)
            optimizer.step()
            schedule.step()
            late_losses.append(loss.item())
            trained += 1
            bar.update(1)
            bar.set_postfix(block=len(self.history.records), loss=f"{loss.item():.4g}")
            measure = trained % config.eval_every == 0 or trained == iterations
            if stopping is not None and measure and stopping.update(self._objective(block, validation), block):
                bar.total -= iterations - trained
                break
        block.eval()
        if stopping is not None:
            stopping.restore(block)
        return sum(late_losses) / len(late_losses), saved_bytes, trained


    def _spread(self, x1: Tensor, labels: Tensor | None) -> Tensor:
        """Squared distance of pushed samples from their latent mean, per sample."""
        h = self.model.from_flow(x1)
        return (h - self.model.latent_mean(h, labels)).pow(2).sum(dim=(-2, -1))

    def _objective(self, block: JKOBlock, position: _Position) -> float:
        """The block's JKO objective per sample at ``position`` (the validation samples)."""
        return self._push(block, position)[1]["objective"]

    @torch.no_grad()
    def _push(self, block: JKOBlock, cache: _Position) -> tuple[_Position, dict[str, float]]:
        """The samples moved through ``block``, in chunks, and the means of the block's statistics."""
        pushed, totals = [], dict(objective=0.0, potential=0.0, logdet=0.0, movement=0.0, spread=0.0)
        num_samples = cache.x.shape[1]
        for start in range(0, num_samples, self.config.push_batch_size):
            index = slice(start, start + self.config.push_batch_size)
            x0 = cache.x[:, index]
            x1, logdet = block(self.graph, x0)
            labels = cache.labels_at(index)
            terms = dict(
                objective=block_objective(self.model, x0, x1, logdet, labels, block.h),
                potential=self.model.potential(self.model.from_flow(x1), labels), logdet=logdet,
                movement=(x1 - x0).pow(2).sum(dim=(0, -1)), spread=self._spread(x1, labels),
            )
            for key, value in terms.items():
                totals[key] += float(value.sum()) / num_samples
            pushed.append(x1)
        return _Position(torch.cat(pushed, dim=1), cache.labels, cache.logdet + totals["logdet"]), totals

    def _nll(self, position: _Position) -> float:
        """NLL per sample of the blocks that pushed the samples to ``position``, by their map."""
        h = self.model.from_flow(position.x)
        return float(self.model.potential(h, position.labels).mean()) - position.logdet

    def _fit_block(
        self, stage: str, index: int, block: JKOBlock, cache: _Position, validation: _Position | None,
        iterations: int, bar: Progress,
    ) -> tuple[_Position, _Position | None]:
        """Train ``block``, check its round trip, record it; the training and validation samples after it."""
        started = time.perf_counter()
        loss, saved_bytes, trained = self._train_block(block, cache, iterations, bar, validation)
        check = cache.x[:, : self.config.check_samples]
        if self.config.round_trip_tol is not None:
            while (block.steps < self.config.max_steps
                   and float(block.round_trip_error(self.graph, check, relative=True).max()) > self.config.round_trip_tol):
                block.steps = min(2 * block.steps, self.config.max_steps)
        pushed, stats = self._push(block, cache)
        validation = None if validation is None else self._push(block, validation)[0]
        round_trip = float(block.round_trip_error(self.graph, check).max())
        record = BlockRecord(
            stage=stage, block=index, t0=block.t0, t1=block.t1, loss=loss, round_trip=round_trip, steps=block.steps,
            minibatches=trained, seconds=time.perf_counter() - started, saved_bytes=saved_bytes,
            val_nll=math.nan if validation is None else self._nll(validation), **stats,
        )
        self.history.records.append(record)
        if self.callback is not None:
            self.callback(record)
        return pushed, validation

    # -- passes -----------------------------------------------------------

    def stages(self) -> list[str]:
        """The passes :meth:`fit` runs, in order: ``"grow"``, ``"reparametrize 1"``, ..., ``"refine 1"``, ..."""
        return (["grow"] + [f"reparametrize {r}" for r in range(1, self.config.reparametrize_rounds + 1)]
                + [f"refine {r}" for r in range(1, self.config.refine_rounds + 1)])

    def _bar(self, stage: str, total: int, done: int = 0) -> Progress:
        return progress_bar(total=total, initial=done, desc=f"JKO {stage}", unit="batch",
                            disable=not self.config.progress, leave=False)

    @contextlib.contextmanager
    def _training_solver(self):
        """Training, and pushing data to train on, integrate by fixed-step RK4; the model's own
        solver (adaptive by default) is back afterwards, for evaluation and generation."""
        self.model.set_solver("rk4")
        try:
            yield
        finally:
            self.model.set_solver(self._solver)

    def _cache_after(self, num_blocks: int) -> tuple[_Position, _Position | None]:
        """The training and validation data pushed through the first ``num_blocks`` blocks.

        Hutchinson probes drawn on the way come from a forked stream, so the run's own streams
        continue as they were saved.
        """
        cache = self.data
        validation = self.validation_data
        device = torch.device(self.config.device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for block in self.model.blocks[:num_blocks]:
                cache = self._push(block, cache)[0]
                validation = None if validation is None else self._push(block, validation)[0]
        return cache, validation

    def grow(self, start: int = 0) -> None:
        """First pass: add blocks one by one until the data stop moving or ``max_blocks``.

        ``start`` is the number of blocks already grown (a resumed run); a fresh pass needs a
        model without blocks.
        """
        model = self.model
        if len(model.blocks) != start:
            raise ValueError(f"grow() continues after {start} blocks, this model has {len(model.blocks)}; "
                             "use retrain() to train the blocks of a trained model again")
        with self._training_solver():
            self._grow(start)

    def _grow(self, start: int) -> None:
        config = self.config
        model = self.model
        cache, validation = self._cache_after(start)
        t = model.time_grid[-1] if model.blocks else 0.0
        with self._bar("grow", config.max_blocks * config.iterations, start * config.iterations) as bar:
            while len(model.blocks) < config.max_blocks:
                k = len(model.blocks)
                h = step_size(k, config.h0, config.rho, config.h_max)
                if config.warm_start and model.blocks:
                    block = copy.deepcopy(model.blocks[-1])
                    block.retime(t, t + h)
                else:
                    block = model.new_block(t, t + h)
                model.blocks.append(block)
                nll_before = math.nan if validation is None else self._nll(validation)
                pushed, pushed_validation = self._fit_block("grow", k, block, cache, validation, config.iterations, bar)
                record = self.history.records[-1]
                if (config.patience is not None and len(model.blocks) > config.min_blocks
                        and not record.val_nll < nll_before):
                    del model.blocks[-1]
                    self.history.discarded.append(self.history.records.pop())
                    self._save("grow", k, True)
                    break
                cache, validation = pushed, pushed_validation
                t += h
                stopped = len(model.blocks) >= config.min_blocks and record.ratio < config.tol
                finished = stopped or len(model.blocks) >= config.max_blocks
                self._save("grow", k + 1, finished)
                if stopped:
                    break

    def retrain(self, stage: str, start: int = 0) -> None:
        """Retrain every block in order from block ``start``, each warm-started from itself, on freshly pushed data."""
        iterations = self.config.retrain_iterations or self.config.iterations
        num_blocks = len(self.model.blocks)
        with self._training_solver():
            cache, validation = self._cache_after(start)
            with self._bar(stage, num_blocks * iterations, start * iterations) as bar:
                for k in range(start, num_blocks):
                    cache, validation = self._fit_block(stage, k, self.model.blocks[k], cache, validation,
                                                        iterations, bar)
                    # The stage ends with its decision (fit), which saves again.
                    self._save(stage, k + 1, False)

    @torch.no_grad()
    def validation_nll(self) -> float:
        """NLL per validation sample by the model's own solver; ``nan`` without validation data."""
        if self.validation is None:
            return math.nan
        x_val, y_val = self.validation
        total = 0.0
        for start in range(0, len(x_val), self.config.push_batch_size):
            part = slice(start, start + self.config.push_batch_size)
            labels = None if y_val is None else y_val[part]
            total -= float(self.model.log_prob(self.model_graph, x_val[part], labels).sum())
        return total / len(x_val)

    def _run_stage(self, stage: str, start: int) -> None:
        if stage == "grow":
            self.grow(start)
            return
        if start == 0:
            self._before_stage = dict(structure=self.model.checkpoint_structure(),
                                      state_dict=copy.deepcopy(self.model.state_dict()), nll=self.validation_nll())
            if stage.startswith("reparametrize"):
                reparametrize(self.model, self.history.movements(), self.config.eta)
            else:
                refine(self.model)
        self.retrain(stage, start)
        self._decide(stage)

    def _decide(self, stage: str) -> None:
        """Keep the stage's model if it lowered the validation NLL, else restore the one before."""
        before = self._before_stage
        after = self.validation_nll()
        kept = self.validation is None or after < before["nll"]
        if not kept:
            self.model.restore_structure(before["structure"])
            self.model.load_state_dict(before["state_dict"])
        self.history.decisions.append(StageDecision(stage, before["nll"], after, kept))
        self._before_stage = None
        self._save(stage, len(self.model.blocks), True)

    # -- checkpoints --------------------------------------------------------

    def _save(self, stage: str, blocks_done: int, stage_finished: bool) -> None:
        if self.config.checkpoint_path is None:
            return
        stages = self.stages()
        position = (stages[stages.index(stage) + 1], 0) if stage_finished and stage != stages[-1] else \
            ((stage, blocks_done) if not stage_finished else ("done", 0))
        solver = self.model.solver
        self.model.set_solver(self._solver)  # the checkpoint holds the model as the user built it
        self.model.save(
            self.config.checkpoint_path, trainer=dict(
                position=list(position), history=[dataclasses.asdict(record) for record in self.history.records],
                decisions=[dataclasses.asdict(decision) for decision in self.history.decisions],
                discarded=[dataclasses.asdict(record) for record in self.history.discarded],
                before_stage=self._before_stage, rng=rng_state(), order=self.order.get_state(),
                permutation=self._permutation, config=dataclasses.asdict(self.config),
            ),
        )
        self.model.set_solver(solver)

    def _resume(self, path: str | os.PathLike) -> tuple[str, int]:
        """Load the model and trainer state saved at ``path``; returns the stage and block to continue at."""
        checkpoint = self.model.load_weights(path)
        state = checkpoint["trainer"]
        differences = config_differences(state["config"], dataclasses.asdict(self.config),
                                         ("checkpoint_path", "progress"))
        if differences:
            raise ValueError(f"cannot resume from checkpoint {path}: its JKOConfig differs in {differences} "
                             f"(saved -> given); resume with the saved settings, or train afresh")
        self.history = JKOHistory([BlockRecord(**record) for record in state["history"]],
                                  [StageDecision(**decision) for decision in state["decisions"]],
                                  [BlockRecord(**record) for record in state["discarded"]])
        self._before_stage = state["before_stage"]
        # Last, since rebuilding the blocks drew fresh weights from the streams.
        set_rng_state(state["rng"])
        self.order.set_state(state["order"])
        self._permutation = state["permutation"]
        stage, start = state["position"]
        return stage, int(start)

    def fit(self, resume_from: str | os.PathLike | None = None) -> JKOHistory:
        """First pass, then the configured re-spacing and refinement rounds, each retrained.

        ``resume_from``: a checkpoint written by a run with the same configuration
        (:attr:`JKOConfig.checkpoint_path`); training continues after its last finished block
        and ends as the uninterrupted run would have.
        """
        with seeded(self.config.seed):
            stage, start = ("grow", 0) if resume_from is None else self._resume(resume_from)
            stages = self.stages()
            for name in stages[stages.index(stage):] if stage != "done" else []:
                self._run_stage(name, start if name == stage else 0)
        return self.history


def fit_jko(
    model: JKOFlow,
    graph: GraphLike,
    x_train: Tensor,
    y_train: Tensor | None = None,
    config: JKOConfig | None = None,
    callback: Callable[[BlockRecord], None] | None = None,
    resume_from: str | os.PathLike | None = None,
    *,
    x_val: Tensor | None = None,
    y_val: Tensor | None = None,
) -> JKOHistory:
    """Train ``model`` block by block; see :class:`JKOTrainer` and :class:`JKOConfig`.

    Parameters
    ----------
    model : JKOFlow
        Trained in place.
    graph : GraphLike
        The graph of every sample, in any form of :mod:`dgl_iflow.graphs`.
    x_train : Tensor
        ``(N, V, d)`` features.
    y_train : Tensor, optional
        ``(N, V)`` labels of a conditional model: classes, or real-valued targets (``(N, V)``
        or ``(N, V, q)``) for ``latent="linear_gaussian"``.
    config : JKOConfig, optional
    callback : callable, optional
        Called with every :class:`BlockRecord`.
    resume_from : path, optional
        A checkpoint written after a finished block (:attr:`JKOConfig.checkpoint_path`);
        the run continues there with identical results.
    x_val, y_val : Tensor, optional
        Held-out data that decide whether each re-spacing or refinement stage is kept.

    Returns
    -------
    JKOHistory
    """
    with frozen_gc():
        return JKOTrainer(model, graph, x_train, y_train, config, callback, x_val, y_val).fit(resume_from)
