"""Tests of dgl_iflow.plots: every figure is a real PNG, bad inputs are refused."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dgl_iflow import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


@pytest.fixture
def samples() -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(0)
    keys = [(0, 0, 0, 0), (0, 1, 1, 0), (1, 1, 0, 0)]
    real = {key: torch.randn(30, 4, 2, generator=gen) for key in keys}
    fake = {key: torch.randn(30, 4, 2, generator=gen) + 0.5 for key in keys}
    return real, fake


def test_generated_vs_real_writes_a_png(tmp_path, samples):
    real, fake = samples
    out = plots.generated_vs_real(real, fake, tmp_path / "sub" / "scatter.png",
                                  feature_names=["flow_t", "flow_t-1"], max_samples=10,
                                  title="test")
    assert out == tmp_path / "sub" / "scatter.png"
    check_png(out)


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


def test_training_curves_writes_a_png_and_rejects_bad_input(tmp_path):
    history = [dict(loss=5.0 / e, nll=4.0 / e, ce=0.7, transport=0.1 * e,
                    inversion_error=1e-7 * 10 ** (e / 3)) for e in range(1, 9)]
    history[3].pop("inversion_error")  # an epoch without an inversion check
    check_png(plots.training_curves(history, tmp_path / "curves.png"))
    with pytest.raises(ValueError, match="empty"):
        plots.training_curves([], tmp_path / "c.png")
    with pytest.raises(ValueError, match=r"none of \['accuracy'\].*\['ce', 'inversion_error'"):
        plots.training_curves(history, tmp_path / "c.png", keys=["accuracy"])


def test_convergence_writes_a_png_and_rejects_bad_input(tmp_path):
    from matplotlib.image import imread

    runs = {"a": [[(1, 0.1, 3.0), (10, 0.5, 2.0)], [(2, 0.2, 2.5)]], "b": [[(5, 1.0, 4.0), (50, 9.0, 1.0)]]}
    path = plots.convergence(runs, tmp_path / "curves" / "nll.png", title="toy")
    assert imread(path).shape[1] > 800
    with pytest.raises(ValueError, match="no points"):
        plots.convergence({"a": [[]]}, tmp_path / "empty.png")


def test_importing_the_package_does_not_import_matplotlib():
    code = "import sys, dgl_iflow; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
