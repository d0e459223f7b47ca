"""Tests of dgl_iflow.plots: every figure is a real PNG a reader can read, bad inputs are refused.

Readable means, checked on the matplotlib objects: every panel's axes are named, the key has
the entries expected, and it lies outside every panel, so it covers no data.
"""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb

from dgl_iflow import plots
from dgl_iflow.training import TrainHistory

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The figures the plots write, kept for inspection."""
    figures = []
    save = plots._save

    def keep(figure, path):
        figures.append(figure)
        return save(figure, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def data_axes(figure) -> list:
    """The visible panels that show data (colour bars left out)."""
    return [axis for axis in figure.axes if axis.get_visible() and axis.get_label() != "<colorbar>"
            and (axis.collections or axis.lines or axis.images or axis.patches)]


def points_on_screen(axis) -> np.ndarray:
    """Every plotted point and line vertex of ``axis``, in display coordinates."""
    parts = [np.empty((0, 2))]
    for collection in axis.collections:
        offsets = np.asarray(collection.get_offsets(), dtype=float)
        if len(offsets):
            parts.append(collection.get_offset_transform().transform(offsets))
    for line in axis.lines:
        xy = np.asarray(line.get_xydata(), dtype=float)
        if len(xy):
            parts.append(line.get_transform().transform(xy))
    return np.concatenate(parts)


def check_readable(figure, entries: list[str] | None = None) -> list[str]:
    """Assert named axes and a key that covers no data; returns the key's entries."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    panels = data_axes(figure)
    assert panels, "no panel shows data"
    for axis in panels:
        # A panel may leave its axis name to the panel it shares the axis with (outer labels).
        for name, shared in (("x", axis.get_shared_x_axes()), ("y", axis.get_shared_y_axes())):
            labels = [getattr(other, f"get_{name}label")() for other in shared.get_siblings(axis)]
            assert any(label.strip() for label in labels), f"panel {axis.get_title()!r} has no {name} label"
    legends = list(figure.legends) + [axis.get_legend() for axis in figure.axes if axis.get_legend()]
    assert legends, "the figure has no key"
    texts = [text.get_text() for legend in legends for text in legend.get_texts()]
    if entries is not None:
        assert texts == entries
    figure_box = figure.bbox
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert figure_box.x0 - 1 <= box.x0 and box.x1 <= figure_box.x1 + 1 and figure_box.y0 - 1 <= box.y0, \
            "the key is cut off"
        for axis in figure.axes:  # colour bars included: a key must not hide the scale either
            if axis.get_visible():
                assert not box.overlaps(axis.get_window_extent(renderer)), \
                    f"the key overlaps the panel {axis.get_title()!r}"
        for axis in panels:
            points = points_on_screen(axis)
            inside = ((points[:, 0] > box.x0) & (points[:, 0] < box.x1)
                      & (points[:, 1] > box.y0) & (points[:, 1] < box.y1))
            assert not inside.any(), "the key covers plotted points"
    return texts


def marker_shape(collection) -> tuple:
    return tuple(map(tuple, collection.get_paths()[0].vertices.round(3)))


def test_the_readability_check_catches_a_key_over_the_data(tmp_path):
    figure = plots._figure(4, 3)
    axis = figure.subplots()
    axis.scatter(np.linspace(0, 1, 50), np.linspace(0, 1, 50), label="points")
    axis.set_xlabel("x")
    axis.set_ylabel("y")
    axis.legend(loc="center")
    with pytest.raises(AssertionError, match="overlaps the panel"):
        check_readable(figure)
    axis.get_legend().remove()
    axis.set_ylabel("")
    plots._key_below(figure, axis.collections)
    with pytest.raises(AssertionError, match="no y label"):
        check_readable(figure)
    axis.set_ylabel("y")
    assert check_readable(figure) == ["points"]


@pytest.fixture
def samples() -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(0)
    keys = [(0, 0, 0, 0), (0, 1, 1, 0), (1, 1, 0, 0)]
    real = {key: torch.randn(30, 4, 2, generator=gen) for key in keys}
    fake = {key: torch.randn(30, 4, 2, generator=gen) + 0.5 for key in keys}
    return real, fake


def test_generated_vs_real_writes_a_png(tmp_path, samples, drawn):
    real, fake = samples
    out = plots.generated_vs_real(real, fake, tmp_path / "sub" / "scatter.png",
                                  feature_names=["flow_t", "flow_t-1"], max_samples=10,
                                  title="test")
    assert out == tmp_path / "sub" / "scatter.png"
    check_png(out)
    (figure,) = drawn
    assert check_readable(figure) == ["nodes with Y_v = 0", "nodes with Y_v = 1",
                                      "real samples, behind the generated ones"]
    panels = data_axes(figure)
    assert len(panels) == 6  # a real and a generated panel per label vector
    assert panels[-1].get_xlabel() == "flow_t (standardized units)"
    assert panels[0].get_ylabel() == "flow_t-1 (standardized units)"
    # Label vector (0, 1, 1, 0): two groups of two nodes, 10 samples each, in two colours and shapes.
    real_panel, generated_panel = panels[2:4]
    groups = real_panel.collections
    assert [len(c.get_offsets()) for c in groups] == [20, 20]
    assert len({tuple(c.get_facecolor()[0][:3]) for c in groups}) == 2
    assert marker_shape(groups[0]) != marker_shape(groups[1])
    # The generated panel: the real points in grey behind, then the generated ones.
    reference, *generated = generated_panel.collections
    assert np.allclose(reference.get_facecolor()[0][:3], to_rgb(plots.REAL_GREY))
    assert len(reference.get_offsets()) == 40 and reference.get_zorder() < generated[0].get_zorder()
    np.testing.assert_allclose(np.concatenate([c.get_offsets() for c in generated]).mean(0),
                               fake[(0, 1, 1, 0)][:10].reshape(-1, 2).mean(0).numpy(), rtol=1e-5)


def test_generated_vs_real_takes_named_node_groups(tmp_path, samples, drawn):
    real, fake = samples
    groups = {"upstream": [0, 1], "downstream": [2, 3]}
    plots.generated_vs_real(real, fake, tmp_path / "g.png", node_groups=groups, units=None)
    (figure,) = drawn
    assert check_readable(figure) == ["upstream", "downstream", "real samples, behind the generated ones"]
    assert data_axes(figure)[-1].get_xlabel() == "x_0"
    with pytest.raises(ValueError, match="node_groups must map names to non-empty lists of nodes in"):
        plots.generated_vs_real(real, fake, tmp_path / "bad.png", node_groups={"far": [7]})


def test_generated_samples_with_and_without_real_data(tmp_path, drawn):
    gen = torch.Generator().manual_seed(2)
    samples = torch.randn(50, 15, 3, generator=gen)
    real = torch.randn(30, 15, 3, generator=gen)
    labels = torch.tensor([0] * 12 + [1] * 3)
    names = [f"s{v}" for v in range(15)]
    check_png(plots.generated_samples(samples, tmp_path / "alone.png", labels=labels, node_names=names))
    check_png(plots.generated_samples(samples, tmp_path / "beside.png", labels=labels, real=real,
                                      feature_names=["flow_t", "flow_t-1"]))
    check_png(plots.generated_samples(samples.numpy(), tmp_path / "groups.png"))
    alone, beside, groups = drawn
    assert check_readable(alone) == ["Y_v = 0 (12 nodes)", "Y_v = 1: nodes s12, s13, s14"]
    assert alone.get_suptitle() == "generated X | Y = 000000000000111"
    assert check_readable(beside) == ["Y_v = 0 (12 nodes)", "Y_v = 1: nodes 12, 13, 14",
                                      "real samples, behind the generated ones"]
    assert [axis.get_title() for axis in data_axes(beside)] == ["real: 30 of 30 samples",
                                                               "generated: 50 of 50 samples"]
    assert data_axes(beside)[0].get_xlabel() == "flow_t (standardized units)"
    # Without labels: 15 nodes in 5 runs of 3, not 15 colours.
    assert check_readable(groups) == ["nodes 0-2", "nodes 3-5", "nodes 6-8", "nodes 9-11", "nodes 12-14"]
    assert len({tuple(c.get_facecolor()[0][:3]) for c in data_axes(groups)[0].collections}) == 5


def test_generated_samples_rejects_bad_input(tmp_path):
    samples = torch.zeros(4, 3, 2)
    with pytest.raises(ValueError, match=r"samples must have shape \(n, V, d\) with d >= 2"):
        plots.generated_samples(samples[..., :1], tmp_path / "s.png")
    with pytest.raises(ValueError, match=r"labels must hold one label per node \(3\), got 2"):
        plots.generated_samples(samples, tmp_path / "s.png", labels=[0, 1])
    with pytest.raises(ValueError, match=r"real must have the shape of the samples \(m, 3, 2\)"):
        plots.generated_samples(samples, tmp_path / "s.png", real=torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="2 node names for V = 3"):
        plots.generated_samples(samples, tmp_path / "s.png", node_names=["a", "b"])
    assert not (tmp_path / "s.png").exists()


def test_index_groups():
    assert plots.index_groups(7, 3) == {"nodes 0-2": [0, 1, 2], "nodes 3-5": [3, 4, 5], "node 6": [6]}
    assert plots.index_groups(2) == {"node 0": [0], "node 1": [1]}
    with pytest.raises(ValueError, match="num_nodes >= 1"):
        plots.index_groups(0)


def test_generated_vs_real_rejects_bad_input(tmp_path, samples):
    real, fake = samples
    key = next(iter(real))
    with pytest.raises(ValueError, match="same label vectors"):
        plots.generated_vs_real(real, {key: fake[key]}, tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"generated samples of Y = 0000 must have shape "
                                          r"\(n, 4, 2\)"):
        plots.generated_vs_real({key: real[key]}, {key: fake[key][:, :, :1]}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="at least one label vector"):
        plots.generated_vs_real({}, {}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="2 feature names"):
        plots.generated_vs_real(real, fake, tmp_path / "a.png", feature_names=["a"])
    assert not (tmp_path / "a.png").exists()


def test_node_probabilities_writes_a_png(tmp_path, monkeypatch):
    gen = torch.Generator().manual_seed(1)
    p1 = torch.rand(60, 5, generator=gen)
    proba = torch.stack([1 - p1, p1], dim=-1)
    labels = (p1 > 0.5).long()
    figures = []

    def keep(figure, path):
        figures.append(figure)
        return save(figure, path)

    save = plots._save
    monkeypatch.setattr(plots, "_save", keep)
    out = plots.node_probabilities(proba, labels, tmp_path / "proba.png",
                                   node_names=list("abcde"), max_samples=25)
    check_png(out)
    assert check_readable(figures[0]) == ["true label Y_v = 1 (a dot on a pale cell: missed)"]
    # Sample-first in, one row per node out: the image is (V, max_samples) = p1[:25].T.
    axis = figures[0].axes[0]
    image = axis.get_images()[0].get_array()
    assert image.shape == (5, 25)
    assert torch.allclose(torch.as_tensor(image, dtype=torch.float32), p1[:25].T)
    assert [tick.get_text() for tick in axis.get_yticklabels()] == list("abcde")
    # The dots mark (sample, node) pairs with label 1.
    dots = axis.collections[0].get_offsets()
    samples, nodes = torch.nonzero(labels[:25] == 1, as_tuple=True)
    assert sorted(map(tuple, dots.tolist())) == sorted(zip(samples.tolist(), nodes.tolist()))


def test_node_probabilities_rejects_bad_input(tmp_path):
    proba = torch.full((8, 5, 2), 0.5)  # (n, V, K): 8 samples, 5 nodes
    with pytest.raises(ValueError, match=r"proba \(n, V, K\) and labels \(n, V\)"):
        plots.node_probabilities(proba, torch.zeros(5, 8), tmp_path / "p.png")
    with pytest.raises(ValueError, match=r"proba \(n, V, K\)"):
        plots.node_probabilities(proba[..., 1], torch.zeros(8, 5), tmp_path / "p.png")
    with pytest.raises(ValueError, match="3 node names for V = 5"):
        plots.node_probabilities(proba, torch.zeros(8, 5), tmp_path / "p.png",
                                 node_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="positive must lie in"):
        plots.node_probabilities(proba, torch.zeros(8, 5), tmp_path / "p.png", positive=2)
    assert not (tmp_path / "p.png").exists()


def test_training_curves_writes_a_png_and_rejects_bad_input(tmp_path, drawn):
    history = [dict(loss=5.0 / e, nll=4.0 / e, ce=0.7, transport=0.1 * e,
                    inversion_error=1e-7 * 10 ** (e / 3)) for e in range(1, 9)]
    history[3].pop("inversion_error")  # an epoch without an inversion check
    check_png(plots.training_curves(history, tmp_path / "curves.png"))
    assert check_readable(drawn[0]) == ["training: mean over the epoch's mini-batches", "measured after the epoch"]
    titles = {axis.get_title(): axis for axis in data_axes(drawn[0])}
    assert titles["negative log-likelihood"].get_ylabel() == "nats per sample"
    assert titles["round-trip error of the inverse"].get_yscale() == "log"
    with pytest.raises(ValueError, match="empty"):
        plots.training_curves([], tmp_path / "c.png")
    with pytest.raises(ValueError, match=r"none of \['accuracy'\].*\['ce', 'inversion_error'"):
        plots.training_curves(history, tmp_path / "c.png", keys=["accuracy"])


def test_training_curves_of_what_fit_returns(tmp_path, drawn):
    # A resumed run with validation: epochs numbered from 4, the best one marked.
    epochs = [dict(epoch=e, loss=5.0 / e, nll=4.0 / e, ce=0.7, transport=0.1, val_nll=4.5 / e + 0.05 * e,
                   inversion_error=1e-6, lr=1e-3, seconds=0.5) for e in range(4, 12)]
    history = TrainHistory(epochs=epochs, best_epoch=9)
    check_png(plots.training_curves(history, tmp_path / "curves.png", title="run"))
    (figure,) = drawn
    assert check_readable(figure) == ["training: mean over the epoch's mini-batches", "validation",
                                      "measured after the epoch", "best validation epoch (9)"]
    nll = next(axis for axis in data_axes(figure) if axis.get_title() == "negative log-likelihood")
    train, validation, best = nll.lines
    assert list(train.get_xdata()) == list(range(4, 12))
    assert list(validation.get_ydata()) == [epoch["val_nll"] for epoch in epochs]
    assert list(best.get_xdata()) == [9, 9]
    assert train.get_marker() != validation.get_marker() and train.get_color() != validation.get_color()
    # history.json holds the epochs alone: the same figure, without the best epoch.
    plots.training_curves(epochs, tmp_path / "from_json.png")
    assert "best validation epoch (9)" not in check_readable(drawn[1])


def fake_jko_history():
    record = SimpleNamespace
    records = {"grow": [record(t0=0.0, t1=0.5), record(t0=0.5, t1=1.2), record(t0=1.2, t1=2.2)],
               "reparametrize 1": [record(t0=0.0, t1=0.9), record(t0=0.9, t1=1.6), record(t0=1.6, t1=2.4)]}
    movements = {"grow": [0.3, 1.0, 1.6], "reparametrize 1": [1.1, 1.5, 1.0]}
    return SimpleNamespace(stages=lambda: list(records), stage=records.__getitem__, movements=movements.__getitem__,
                           decisions=[SimpleNamespace(stage="reparametrize 1", kept=False)])


def test_jko_movements_are_readable(tmp_path, drawn):
    gen = torch.Generator().manual_seed(3)
    real, generated = torch.randn(40, 3, 2, generator=gen), torch.randn(30, 3, 2, generator=gen) + 1
    check_png(plots.jko_movements(fake_jko_history(), tmp_path / "m.png", generated=generated, real=real,
                                  units="standardized units"))
    check_png(plots.jko_movements(fake_jko_history(), tmp_path / "alone.png"))
    both, alone = drawn
    assert check_readable(both) == ["grow", "reparametrize 1 (rolled back)", "real (40)", "generated (30)"]
    assert check_readable(alone) == ["grow", "reparametrize 1 (rolled back)"]
    movements, samples = data_axes(both)
    assert movements.get_xlabel() == "flow time t"
    assert samples.get_xlabel() == "node 0, feature 0 (standardized units)"
    assert [patch.get_linestyle() for patch in movements.patches] == ["-", "--"]
    assert len({tuple(patch.get_edgecolor()[:3]) for patch in movements.patches}) == 2


def test_convergence_writes_a_png_and_rejects_bad_input(tmp_path, drawn):
    from matplotlib.image import imread

    runs = {"a": [[(1, 0.1, 3.0), (10, 0.5, 2.0)], [(2, 0.2, 2.5)]], "b": [[(5, 1.0, 4.0), (50, 9.0, 1.0)]]}
    path = plots.convergence(runs, tmp_path / "curves" / "nll.png", title="toy")
    assert imread(path).shape[1] > 800
    assert check_readable(drawn[0]) == ["a (2 runs)", "b (1 run)"]
    lines = data_axes(drawn[0])[0].lines
    assert lines[0].get_marker() != lines[-1].get_marker()
    with pytest.raises(ValueError, match="no points"):
        plots.convergence({"a": [[]]}, tmp_path / "empty.png")


def test_demo_figures_are_readable(tmp_path, drawn):
    from dgl_iflow import IGNN
    from dgl_iflow.data import load_dataset
    from dgl_iflow.demos import expressiveness, three_moons

    # Untrained models: the figures' layout is under test, not the models.
    torch.manual_seed(0)
    three = load_dataset("three_node", n_per_label=20)
    models = {conv: IGNN(three.graph, 2, 2, conv=conv, num_blocks=1, hidden_feats=(4, 4)).eval()
              for conv in ("cheb", "l3")}
    expressiveness.plot_fixed_label_vectors(three, models, tmp_path / "generated.png", num_samples=30)
    moons = load_dataset("three_moons", n=300)
    model = IGNN(moons.graph, 2, 3, conv="mlp", num_blocks=1, hidden_feats=(4, 4), sigma=0.3).eval()
    generated = {k: model.sample(moons.graph, torch.tensor([k]), 20) for k in range(3)}
    three_moons.plot(model, moons, generated, tmp_path / "moons.png")
    check_png(tmp_path / "generated.png")
    figure, moons_figure = drawn
    assert check_readable(figure) == ["true samples (test rows with that Y)", "generated, node 0",
                                      "generated, node 2"]
    panel = data_axes(figure)[0]
    generated_0, generated_2, true_0, true_2 = panel.collections
    assert np.allclose(true_0.get_facecolor()[0][:3], to_rgb(expressiveness.TRUE_COLOUR))
    assert true_0.get_zorder() > generated_0.get_zorder()  # the true dots stay visible on the clouds
    assert marker_shape(generated_0) != marker_shape(generated_2)
    assert len({tuple(c.get_facecolor()[0][:3]) for c in (generated_0, generated_2, true_0)}) == 3
    assert check_readable(moons_figure) == [f"class {k}: points and 90% set" for k in range(3)] + [
        "held-out points, behind the generated ones"]


def test_importing_the_package_does_not_import_matplotlib():
    code = "import sys, dgl_iflow; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


def _target_rows(n: int = 60, nodes: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    y = torch.randn(n, nodes, generator=generator)
    x = torch.stack([2 * y, -y], -1) + 0.3 * torch.randn(n, nodes, 2, generator=generator)
    return x, y, x + 0.1 * torch.randn(n, nodes, 2, generator=generator)


def test_target_sweep_draws_one_panel_per_node_group(tmp_path, drawn):
    x, y, fake = _target_rows()
    out = plots.target_sweep(x, y, fake, tmp_path / "sweep.png", node_groups={"a": [0, 1], "b": [2, 3]},
                             feature_name="flow_t", bins=5)
    check_png(out)
    (figure,) = drawn
    assert check_readable(figure) == ["generated, given the real targets", "real", "generated mean per target bin",
                                      "real mean per target bin"]
    panels = data_axes(figure)
    assert [axis.get_title() for axis in panels] == ["a", "b"]
    assert panels[0].get_xlabel() == "target Y_v (standardized units)"
    assert panels[0].get_ylabel() == "flow_t (standardized units)"
    # Every node of every row of the group, real and generated.
    assert [len(c.get_offsets()) for c in panels[0].collections] == [120, 120]
    with pytest.raises(ValueError, match="alike"):
        plots.target_sweep(x, y[:, :3], fake, tmp_path / "bad.png")


def test_target_sweep_draws_the_chosen_coordinate_of_vector_targets(tmp_path, drawn):
    x, y, fake = _target_rows()
    stacked = torch.stack([torch.zeros_like(y), y], -1)  # (N, V, 2): coordinate 1 is y
    plots.target_sweep(x, stacked, fake, tmp_path / "sweep.png", target=1)
    (figure,) = drawn
    real_points = data_axes(figure)[0].collections[0].get_offsets()
    np.testing.assert_allclose(np.asarray(real_points)[:, 0], y[:, [0]].numpy().ravel(), rtol=1e-6)
    with pytest.raises(ValueError, match="target coordinate"):
        plots.target_sweep(x, stacked, fake, tmp_path / "bad.png", target=2)


def test_predicted_vs_true_reports_the_coverage(tmp_path, drawn):
    _, y, _ = _target_rows()
    mean = y + 0.1
    lower, upper = mean - 0.5, mean + 0.5
    truth = y.clone()
    truth[:6, 0] = upper[:6, 0] + 0.01  # 6 of the 240 targets above their intervals
    out = plots.predicted_vs_true(truth, mean, lower, upper, tmp_path / "pred.png", max_points=50)
    check_png(out)
    (figure,) = drawn
    (entry, diagonal) = check_readable(figure)
    assert "covers 0.975" in entry and diagonal == "prediction = truth"
    with pytest.raises(ValueError, match="alike in shape"):
        plots.predicted_vs_true(y, mean[:3], lower, upper, tmp_path / "bad.png")
