"""Data-parallel training over processes and machines with ``torch.distributed``.

Every process holds the whole graph and the whole model; the samples of each mini-batch are
split over the processes, and :class:`~torch.nn.parallel.DistributedDataParallel` averages
the gradients (gloo on CPUs, NCCL on GPUs). The trainer is :func:`dgl_iflow.training.fit`
itself, through its ``make_batch_loss`` hook, so schedules, inversion checks and checkpoints
behave as in one process; with the same seed, the parameters after every step equal those of
single-process training on the same global batches (up to float rounding).

Start one process per CPU socket or GPU with ``torchrun``::

    torchrun --nproc_per_node 2 -m dgl_iflow.training.distributed --dataset traffic --conv cheb --epochs 10

or call :func:`fit` from your own script started by ``torchrun`` (see ``docs/performance.md``
for several machines).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..models import IGNN
from .fit import TrainConfig, TrainHistory
from .fit import fit as _fit


def init_distributed(backend: str | None = None) -> tuple[int, int, int]:
    """Join the process group started by ``torchrun`` (``env://``) unless already joined.

    ``backend`` defaults to NCCL when CUDA is available, else gloo. Returns
    ``(rank, world_size, local_rank)``.
    """
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return dist.get_rank(), dist.get_world_size(), local_rank


def default_device(local_rank: int | None = None) -> str:
    """``cuda:LOCAL_RANK`` with a NCCL process group, else ``cpu``."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        if local_rank is None:
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return f"cuda:{local_rank}"
    return "cpu"


class _Loss(nn.Module):
    """``model.loss`` as a module forward, so that DistributedDataParallel can wrap it."""

    def __init__(self, model: IGNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, graph, x: Tensor, y: Tensor, classification_weight: float, transport_weight: float):
        return self.model.loss(graph, x, y, classification_weight=classification_weight,
                               transport_weight=transport_weight)


def sharded_batch_loss(**ddp_options) -> Callable[..., Callable[[Tensor], dict[str, Tensor]]]:
    """The ``make_batch_loss`` hook of :func:`~dgl_iflow.training.fit` for data parallelism.

    Each process takes its contiguous share of the global mini-batch (``tensor_split``, so
    shares differ by at most one sample) and weighs its loss by its share of the samples, so
    that DDP's gradient average is the gradient of the global batch mean even when the batch
    does not split evenly. A process whose share is empty (a last batch smaller than the
    world) runs one sample with weight 0, as every process must join each all-reduce. The
    returned terms are the global batch means (one extra all-reduce of a few numbers);
    ``"loss"`` carries the local weighted graph for backward. Random draws of the loss (the
    estimator's probes) differ between processes and leave the shared random stream alone.
    """

    def make(model: IGNN, graph, x_train: Tensor, y_train: Tensor, config: TrainConfig):
        rank, world = dist.get_rank(), dist.get_world_size()
        device = x_train.device
        ddp = nn.parallel.DistributedDataParallel(
            _Loss(model), device_ids=[device.index] if device.type == "cuda" else None, **ddp_options,
        )

        def batch_loss(batch: Tensor) -> dict[str, Tensor]:
            share = torch.tensor_split(batch, world)[rank]
            weight = len(share) / len(batch)
            if len(share) == 0:
                share = batch[:1]
            # Random draws inside the loss (estimator probes) come from a stream of this
            # process's own, forked from the shared one, which is left untouched: the processes
            # stay in step (batch order, inversion checks) whatever each one consumes.
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(int(torch.randint(2 ** 62, ())) + rank)
                terms = ddp(graph, x_train[share], y_train[share],
                            config.classification_weight, config.transport_weight)
            keys = list(terms)
            means = torch.stack([terms[key].detach().to(torch.float64) * weight for key in keys])
            dist.all_reduce(means)  # sum over processes of weight * local mean = global mean
            result = {key: means[index].to(terms[key].dtype) for index, key in enumerate(keys)}
            # Value: the global mean; gradient: world * weight * d(local loss), which DDP's
            # average over the world turns into sum_r weight_r * d(loss_r).
            local = terms["loss"] * (weight * world)
            result["loss"] = local + (result["loss"] - local.detach())
            return result

        return batch_loss

    return make


def fit(
    model: IGNN,
    graph,
    x_train: Tensor,
    y_train: Tensor,
    config: TrainConfig | None = None,
    *,
    backend: str | None = None,
    ddp_options: dict | None = None,
    **fit_options,
) -> TrainHistory:
    """:func:`dgl_iflow.training.fit` with the samples of every batch split over processes.

    Call it in every process of a ``torchrun`` launch (or after ``init_process_group``) with
    the same model initialization, data and ``config``; ``config.batch_size`` is the global
    batch. Only rank 0 shows progress and writes ``config.checkpoint_path``. ``config.device``
    ``"cpu"`` is replaced by ``cuda:LOCAL_RANK`` under NCCL. The model is trained in place in
    every process; all processes end with the same parameters.

    Parameters
    ----------
    backend : str, optional
        Process-group backend when this call has to initialize it: NCCL with CUDA, else gloo.
    ddp_options : dict, optional
        Passed to :class:`~torch.nn.parallel.DistributedDataParallel`.
    fit_options
        ``x_val``, ``y_val``, ``resume_from``, ``callback`` of :func:`~dgl_iflow.training.fit`.
    """
    rank, _, local_rank = init_distributed(backend)
    config = config or TrainConfig()
    replace = {}
    if rank != 0:
        replace.update(checkpoint_path=None, progress=False)
    if config.device == "cpu" and default_device(local_rank) != "cpu":
        replace["device"] = default_device(local_rank)
    if replace:
        config = dataclasses.replace(config, **replace)
    return _fit(model, graph, x_train, y_train, config, make_batch_loss=sharded_batch_loss(**(ddp_options or {})),
                **fit_options)


def main(argv: list[str] | None = None) -> None:
    """``torchrun ... -m dgl_iflow.training.distributed``: train IGNN on a data set, data-parallel."""
    from ..data import load_dataset

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--dataset", default="traffic")
    parser.add_argument("--conv", default="cheb", choices=["cheb", "l3", "mlp"])
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--logdet", default="auto", choices=["auto", "exact", "estimator"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, _ = init_distributed()
    data = load_dataset(args.dataset)
    x_train, y_train = data.split("train")
    torch.manual_seed(args.seed)
    model = IGNN(data.graph, feats=x_train.shape[-1], num_classes=data.num_classes, conv=args.conv,
                 num_blocks=args.blocks, hidden_feats=args.hidden, logdet=args.logdet)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         weight_decay=args.weight_decay, seed=args.seed, checkpoint_path=args.checkpoint)
    history = fit(model, data.graph, x_train, y_train, config)
    if rank == 0:
        last = history.last()
        print(f"{world} processes, {len(history.epochs)} epochs: " +
              ", ".join(f"{key} {value:.4g}" for key, value in last.items()))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
