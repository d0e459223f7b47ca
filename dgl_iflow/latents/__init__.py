r"""Latent laws: the law of a flow's latent ``H`` given the node labels ``Y``, behind one contract.

:class:`LatentLaw` (``base.py``) is the contract: ``log_prob(h, y)``, ``sample(y, n, generator)``,
``posterior(h)`` for prediction, and the trainers' two hooks ``fit_before_training(y_train)``
and ``fit_after_training(h_train, y_train)``. Every law is one file and one line of
:data:`LAWS`, the names models build them by:

``"node_gaussian"`` (:class:`NodeGaussianLatent`, ``node_gaussian.py``)
    :math:`H_v \mid Y_v = k \sim N(\mu_k, \sigma^2 I)`, independent over nodes; prediction is
    Bayes' rule node by node.
``"label_context"`` (:class:`LabelContextLatent`, ``label_context.py``)
    the same with every node's mean moved by a linear map of the whole label vector;
    prediction is Bayes' rule over the training set's label vectors.

The joint Gaussians per training label vector (``label_vector_gaussians.py``) are not a law
but what both Gaussian laws fit in ``fit_after_training``: the law of every label vector seen
in training becomes one Gaussian over all ``V d`` coordinates, shrunk towards the trained law,
which stays the law of every other label vector. They need the trained flow's latents, so they
cannot be a law chosen before training; they are saved in the law's extra state. The shared
Gaussian tools (mean placement, densities, chi quantiles) are in ``gaussian.py``.

Laws of class labels are :attr:`~LatentLaw.discrete`; two laws take real-valued targets:

``"linear_gaussian"`` (:class:`LinearGaussianLatent`, ``linear_gaussian.py``)
    :math:`H_v \mid Y_v = y \sim N(A y + b, \sigma^2 I)` for targets ``(*, V)`` or ``(*, V, q)``,
    with a closed-form Gaussian posterior of every node's target (prediction and intervals).
``"target_context"`` (:class:`TargetContextLatent`, ``target_context.py``)
    the same with every node's mean moved by a linear map of all nodes' targets; the posterior
    is joint over the nodes, still in closed form.
"""
from .base import LatentLaw
from .gaussian import default_separation, gaussian_log_prob, spread_means
from .label_context import LabelContextLatent
from .linear_gaussian import LinearGaussianLatent
from .node_gaussian import NodeGaussianLatent
from .target_context import TargetContextLatent

#: The laws by the name models build them by (``IGNN(..., latent=name)``).
LAWS: dict[str, type[LatentLaw]] = {
    "node_gaussian": NodeGaussianLatent,
    "label_context": LabelContextLatent,
    "linear_gaussian": LinearGaussianLatent,
    "target_context": TargetContextLatent,
}

__all__ = ["LAWS", "LabelContextLatent", "LatentLaw", "LinearGaussianLatent", "NodeGaussianLatent",
           "TargetContextLatent", "default_separation", "gaussian_log_prob", "spread_means"]
