"""Spectral flows are bound by the graph's symmetry; spatial flows are not."""
import pytest
import torch

from dgl_iflow import IGNN
from dgl_iflow.data import load_dataset
from dgl_iflow.demos import expressiveness
from graphs import in_degrees

REFLECTION = list(expressiveness.REFLECTION)


@pytest.fixture(scope="module")
def three_node():
    return load_dataset("three_node", n_per_label=250)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cheb_flow_commutes_with_the_reflection_and_l3_flow_does_not(three_node, seed):
    torch.manual_seed(seed)
    graph = three_node.graph
    x = torch.randn(16, 3, 2, dtype=torch.float64)  # (N, V, d)
    gaps = {}
    for conv in ("cheb", "l3"):
        model = IGNN(graph, 2, 2, conv=conv, num_blocks=3, hidden_feats=(16, 16), init_scale=1.0).double()
        h = model.encode(graph, x, logdet=False)[0]
        assert h.shape == x.shape
        h_reflected = model.encode(graph, x[:, REFLECTION], logdet=False)[0]
        gaps[conv] = float((h_reflected - h[:, REFLECTION]).abs().max())
    assert gaps["cheb"] < 1e-12
    assert gaps["l3"] > 1e-3


def test_reflection_is_an_automorphism_of_the_path_graph(three_node):
    src, dst = three_node.graph.edges()
    edges = set(zip(src.tolist(), dst.tolist()))
    reflected = {(REFLECTION[u], REFLECTION[v]) for u, v in edges}
    assert reflected == edges


@pytest.mark.slow
def test_trained_l3_generates_what_cheb_provably_cannot(three_node):
    dataset, models, _ = expressiveness.train_three_node_models(epochs=40, num_blocks=4, progress=False)
    torch.manual_seed(0)
    results = {name: expressiveness.evaluate_label_vectors(model, dataset, 1000) for name, model in models.items()}
    for cheb_row, l3_row in zip(results["cheb"], results["l3"]):
        if not cheb_row.reflection_fixed:
            continue
        # Any reflection-equivariant generator gives nodes 0 and 2 one mean m; then
        # max(|m - t0|, |m - t2|) >= |t0 - t2| / 2 (about 2 here). Sampling noise of the
        # 1000-sample means is below 0.05 (feature std < 0.6), hence the 0.1 slack.
        bound = cheb_row.lower_bound
        assert bound > 1.5
        assert float(cheb_row.mean_errors[[0, 2]].max()) > bound - 0.1
        assert float(l3_row.mean_errors[[0, 2]].max()) < 0.5 * bound


def test_chordal_demo_covariances_match_numpy():
    import numpy as np

    from dgl_iflow.demos import chordal

    dataset = load_dataset("chordal", p=11, num_label_vectors=2, n_per_label=50)
    nodes = chordal.neighbourhood(dataset.graph, 0)
    assert 0 in nodes and len(nodes) == in_degrees(dataset.graph)[0]
    expected = np.cov(dataset.x[:, nodes].reshape(len(dataset.x), -1).double().numpy(), rowvar=False)
    assert np.allclose(chordal.subgraph_covariance(dataset.x, nodes).numpy(), expected)
