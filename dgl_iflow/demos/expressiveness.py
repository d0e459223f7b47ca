"""Spectral vs spatial: what a ChebConv flow provably cannot generate and an L3Conv flow can.

On the path graph 0 - 1 - 2 the reflection :math:`P` swapping nodes 0 and 2 is an automorphism.
A ChebConv flow commutes with it, :math:`F(PX) = P F(X)`, and for a label vector with
:math:`y_0 = y_2` the latent law is reflection-invariant, so the generated
:math:`X = F^{-1}(H)` has :math:`PX \\overset{d}{=} X`: nodes 0 and 2 get the same
distribution, in particular the same mean. The data puts them apart (true means :math:`t_0 \\ne
t_2`), so for any equivariant generator with common mean :math:`m`,

.. math::
    \\max(\\|m - t_0\\|, \\|m - t_2\\|) \\ge \\tfrac12 \\|t_0 - t_2\\|,

whatever the training. An L3Conv flow has a filter per node and is not bound by this.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .. import metrics
from ..data import load_dataset
from ..data.base import GraphDataset
from ..files import atomic_write_json, atomic_write_text
from ..models import IGNN
from ..training import TrainConfig, fit
from ..training.common import seed_everything

#: Latent means and variance of the paper's 3-node experiment.
THREE_NODE_LATENT_MEANS = ((0.0, 1.5), (0.0, -1.5))
THREE_NODE_LATENT_SIGMA = 0.375 ** 0.5
REFLECTION = (2, 1, 0)
#: How the figure names the models.
CONV_LABELS = {"cheb": "ChebConv", "l3": "L3Conv"}
#: True samples in the figure: small dots, dark enough to show on top of the generated clouds.
TRUE_COLOUR = "#1a1a1a"


@dataclass
class LabelVectorResult:
    """Generated vs true node features of one label vector."""

    label_vector: tuple[int, ...]
    reflection_fixed: bool
    true_means: Tensor       # (V, d)
    generated_means: Tensor  # (V, d)
    mean_errors: Tensor      # (V,) ||generated mean - true mean||
    node_mmd: Tensor         # (V,) MMD^2 per node at alpha = 1

    @property
    def lower_bound(self) -> float:
        """Least possible max error over nodes 0 and 2 of a reflection-equivariant generator."""
        return 0.5 * float((self.true_means[0] - self.true_means[2]).norm())


def evaluate_label_vectors(model: IGNN, dataset: GraphDataset, num_samples: int) -> list[LabelVectorResult]:
    """Compare generated and held-out test features for every label vector of the 3-node data."""
    x_test, y_test = dataset.split("test")
    results = []
    for labels in itertools.product((0, 1), repeat=3):
        label_vector = torch.tensor(labels)
        real = x_test[(y_test == label_vector).all(dim=1)].double()
        generated = model.sample(dataset.graph, label_vector, num_samples).double()
        true_means, generated_means = real.mean(0), generated.mean(0)
        node_mmd = torch.tensor([metrics.mmd(real[:, v], generated[:, v], alphas=(1.0,))[1.0] for v in range(3)])
        results.append(LabelVectorResult(
            label_vector=labels, reflection_fixed=labels[0] == labels[2], true_means=true_means,
            generated_means=generated_means, mean_errors=(generated_means - true_means).norm(dim=-1),
            node_mmd=node_mmd,
        ))
    return results


def train_three_node_models(
    epochs: int = 60, num_blocks: int = 6, n_per_label: int = 250, seed: int = 0, progress: bool = True,
) -> tuple[GraphDataset, dict[str, IGNN], dict[str, float]]:
    """Train a ChebConv and an L3Conv iGNN on the 3-node data with the same budget."""
    dataset = load_dataset("three_node", n_per_label=n_per_label, seed=seed)
    x_train, y_train = dataset.split("train")
    models, seconds = {}, {}
    for conv in ("cheb", "l3"):
        seed_everything(seed)
        model = IGNN(
            dataset.graph, 2, 2, conv=conv, num_blocks=num_blocks, hidden_feats=(32, 32), cheb_k=3,
            orders=(0, 1, 2), means=THREE_NODE_LATENT_MEANS, sigma=THREE_NODE_LATENT_SIGMA,
        )
        started = time.perf_counter()
        fit(model, dataset.graph, x_train, y_train, TrainConfig(epochs=epochs, batch_size=200, lr=3e-3, seed=seed, progress=progress))
        seconds[conv] = time.perf_counter() - started
        models[conv] = model.eval()
    return dataset, models, seconds


def format_table(results: dict[str, list[LabelVectorResult]]) -> str:
    """Plain-text table of mean errors and per-node MMD, one row per model and label vector."""
    lines = [f"{'model':6} {'Y':9} {'fixed':5} {'|m0-t0|':>8} {'|m1-t1|':>8} {'|m2-t2|':>8} "
             f"{'bound':>6} {'MMD0':>7} {'MMD1':>7} {'MMD2':>7}"]
    for name, rows in results.items():
        for row in rows:
            errors = " ".join(f"{float(e):8.3f}" for e in row.mean_errors)
            mmds = " ".join(f"{float(m):7.4f}" for m in row.node_mmd)
            bound = f"{row.lower_bound:6.2f}" if row.reflection_fixed else " " * 6
            lines.append(f"{name:6} {str(row.label_vector).replace(' ', ''):9} {'yes' if row.reflection_fixed else 'no':5} "
                         f"{errors} {bound} {mmds}")
    return "\n".join(lines)


def plot_fixed_label_vectors(dataset: GraphDataset, models: dict[str, IGNN], path: Path, num_samples: int = 500) -> None:
    """Scatter true vs generated features of nodes 0 and 2 for the reflection-fixed label vectors.

    One row per model, one column per label vector. Generated samples are a coloured cloud, one
    colour and marker per node, so a model that cannot tell node 0 from node 2 (ChebConv, by the
    reflection) puts both colours on both clusters; true samples are small black dots on top,
    each node's cluster named at its foot, so they stay visible where generation is right.
    Columns share their axes, so the two models compare directly.
    """
    from .. import plots

    x_test, y_test = dataset.split("test")
    fixed = [labels for labels in itertools.product((0, 1), repeat=3) if labels[0] == labels[2]]
    nodes = {node: plots._style(style) for node, style in ((0, 0), (2, 3))}  # blue circles, red diamonds
    figure = plots._figure(4.0 * len(fixed), 3.8 * len(models) + 0.8)
    axes = figure.subplots(len(models), len(fixed), sharex=True, sharey="col", squeeze=False)
    for row, (name, model) in enumerate(models.items()):
        for column, labels in enumerate(fixed):
            axis = axes[row, column]
            label_vector = torch.tensor(labels)
            real = x_test[(y_test == label_vector).all(dim=1)]
            generated = model.sample(dataset.graph, label_vector, num_samples)
            for node, (colour, marker) in nodes.items():
                axis.scatter(*generated[:, node].T, s=12, color=colour, marker=marker, alpha=0.35, linewidths=0,
                             zorder=1)
            for node in nodes:
                axis.scatter(*real[:, node].T, s=3, color=TRUE_COLOUR, alpha=0.7, linewidths=0, zorder=2)
                axis.annotate(f"true node {node}", (float(real[:, node, 0].mean()), float(real[:, node, 1].min())),
                              xytext=(0, -3), textcoords="offset points", ha="center", va="top", fontsize=7,
                              color=TRUE_COLOUR, zorder=3,
                              bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.8))
            axis.set_title(f"{CONV_LABELS.get(name, name)}: Y = {labels}", fontsize=10)
            axis.grid(alpha=0.25)
            axis.margins(y=0.12)  # room for the node names under the clusters
    for axis in axes[-1]:  # x is shared by all panels, y only within a column
        axis.set_xlabel(dataset.feature_names[0])
    for axis in axes.flat:
        axis.set_ylabel(dataset.feature_names[1])
    handles = [plots._key_entry(TRUE_COLOUR, "o", "true samples (test rows with that Y)", size=3)]
    handles += [plots._key_entry(colour, marker, f"generated, node {node}") for node, (colour, marker) in nodes.items()]
    plots._key_below(figure, handles, columns=3)
    figure.suptitle("3-node path graph: nodes 0 and 2 for label vectors fixed by the reflection 0<->2")
    plots._save(figure, path)


def run(out_dir: str | Path = "runs/expressiveness", epochs: int = 60, num_blocks: int = 6,
        num_samples: int = 500, seed: int = 0, progress: bool = True) -> dict:
    """Train both models, print the table, write ``table.txt``, ``results.json`` and ``generated.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset, models, seconds = train_three_node_models(epochs, num_blocks, seed=seed, progress=progress)
    seed_everything(seed)
    results = {name: evaluate_label_vectors(model, dataset, num_samples) for name, model in models.items()}
    table = format_table(results)
    summary = {}
    for name, rows in results.items():
        fixed = [row for row in rows if row.reflection_fixed]
        summary[name] = dict(
            train_seconds=seconds[name],
            worst_fixed_error=max(float(row.mean_errors[[0, 2]].max()) for row in fixed),
            mean_fixed_mmd=float(torch.stack([row.node_mmd[[0, 2]] for row in fixed]).mean()),
        )
    bound = min(row.lower_bound for row in results["cheb"] if row.reflection_fixed)
    print(table)
    print(f"\nequivariance bound on the worst node-0/2 mean error for fixed label vectors: >= {bound:.2f}")
    for name, values in summary.items():
        print(f"{name:5} worst node-0/2 mean error {values['worst_fixed_error']:.3f}, "
              f"mean node-0/2 MMD^2 {values['mean_fixed_mmd']:.4f}, trained in {values['train_seconds']:.1f} s")
    atomic_write_text(out_dir / "table.txt", table + "\n")
    atomic_write_json(out_dir / "results.json", dict(summary=summary, bound=bound))
    plot_fixed_label_vectors(dataset, models, out_dir / "generated.png", num_samples)
    print(f"wrote {out_dir / 'table.txt'}, {out_dir / 'results.json'}, {out_dir / 'generated.png'}")
    return dict(summary=summary, bound=bound, results=results)
