"""dgl_iflow.recipe: the settings it builds, what overrides them, and that the benchmark and CLI use them."""
import pytest
import torch

from dgl_iflow import IGNN, TrainConfig
from dgl_iflow.cli import main
from dgl_iflow.data import load_dataset
from dgl_iflow.recipe import EPOCHS, LIPSCHITZ, SIGMA, TARGET_LAW, recipe_config, recipe_model
from dgl_iflow.transforms import GraphMeanLinear, NodeAffine
from test_reproduce_paper import load_script


@pytest.fixture(scope="module")
def dataset():
    return load_dataset("three_node", n_per_label=20, seed=0)


def test_the_recipe_model_has_every_ingredient(dataset):
    model = recipe_model(dataset.graph, 2, 2, conv="l3")
    assert isinstance(model.flow.blocks[0], GraphMeanLinear) and isinstance(model.flow.blocks[-1], NodeAffine)
    config = model.config
    assert config["graph_mean"] and config["label_context"] and config["trainable_means"]
    assert (config["sigma"], config["lipschitz_coeff"], config["means"]) == (SIGMA, LIPSCHITZ, [[1.0, -1.0], [-1.0, 1.0]])
    flat = recipe_model(dataset.graph, 2, 2, conv="mlp").config  # one node: nothing graph-wide
    assert not flat["graph_mean"] and not flat["graph_mean_linear"]
    changed = recipe_model(dataset.graph, 2, 2, num_blocks=3, label_context=False).config
    assert changed["num_blocks"] == 3 and not changed["label_context"] and changed["graph_mean_linear"]
    three_classes = recipe_model(dataset.graph, 2, 3)  # the means are the recipe's for two classes only
    assert three_classes.config["means"] is None and three_classes.latent.means.shape == (3, 2)


@pytest.mark.parametrize("label_dim", [None, 3])
def test_the_recipe_model_of_real_valued_targets(dataset, label_dim):
    model = recipe_model(dataset.graph, 2, None, label_dim=label_dim)
    config = model.config
    assert model.continuous and config["latent"] == TARGET_LAW and config["label_dim"] == label_dim
    assert config["trainable_means"] and config["graph_mean"] and config["sigma"] == 1.0
    assert config["num_classes"] is None and config["means"] is None and not config["label_context"]
    with pytest.raises(ValueError, match="num_classes=None"):
        recipe_model(dataset.graph, 2, 2, label_dim=3)


def test_the_recipe_config_per_data_set():
    assert recipe_config("traffic") == TrainConfig(epochs=EPOCHS["traffic"], batch_size=64, classification_weight=1.0,
                                                   transport_weight=0.0, label_vector_gaussians=True, readout=True)
    assert recipe_config("solar").epochs == 200 and recipe_config("three_node").epochs == 60
    assert recipe_config("solar", epochs=5, lr=2e-3).epochs == 5


@pytest.mark.parametrize("conv", ["l3", "cheb", "mlp"])
def test_the_benchmark_defaults_are_the_recipe(dataset, conv):
    script = load_script()
    args = script.parse_args([])
    torch.manual_seed(0)
    built = script.build_model(dataset, conv, args)
    torch.manual_seed(0)
    expected = recipe_model(dataset.graph, dataset.num_features, dataset.num_classes, conv=conv)
    assert built.config == expected.config
    for name in ("traffic", "solar"):
        assert script.train_config(name, args) == recipe_config(name, progress=False)


def test_cli_train_uses_the_recipe_unless_told(tmp_path):
    common = ["train", "--dataset", "three_node", "--blocks", "1", "--hidden", "8", "8", "--epochs", "1",
              "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "recipe")]) == 0
    recipe = IGNN.load(tmp_path / "recipe" / "model.pt")
    config = recipe.config
    assert config["graph_mean_linear"] and config["label_context"] and config["lipschitz_coeff"] == LIPSCHITZ
    assert recipe.latent.pseudo_count is not None  # the joint Gaussians are saved with the model
    assert main(common + ["--out", str(tmp_path / "plain"), "--no-graph-mean", "--no-graph-mean-linear",
                          "--no-node-affine", "--no-label-context", "--no-label-vector-gaussians", "--fixed-means",
                          "--lipschitz", "0.9"]) == 0
    plain = IGNN.load(tmp_path / "plain" / "model.pt")
    assert plain.latent.pseudo_count is None
    config = plain.config
    assert not any(config[key] for key in ("graph_mean", "graph_mean_linear", "node_affine", "label_context",
                                           "trainable_means"))
    assert config["lipschitz_coeff"] == 0.9
