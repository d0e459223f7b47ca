"""Flow-free baselines: what conditional generation and node prediction score without a flow.

Generators are fitted on training rows ``x (N, V, d)``, ``y (N, V)`` and offer
``generate(labels, n) -> (n, V, d)`` for a label vector ``labels (V,)``, the interface
:func:`dgl_iflow.metrics.paper_protocol` takes, and (the Gaussians) ``log_prob(x, y) -> (N,)``:

- :class:`ResampledRows` draws training rows that carry exactly the requested label vector: the
  score of memorizing the training set, a floor no generator needs to beat;
- :class:`LabelGaussian` is one multivariate normal on the flattened ``V * d`` features per
  training label vector;
- :class:`NodeGaussian` is independent ``d``-dimensional normals per node, given only that
  node's own label.

:class:`NodeLogistic` predicts each node's label by multinomial logistic regression, from the
node's own ``d`` features or from all ``V * d`` features of the graph; its probabilities are
sample-first ``(N, V, K)``, like those of :meth:`dgl_iflow.IGNN.predict_proba` and as
:func:`dgl_iflow.metrics.node_accuracy` takes them.

For real-valued targets ``y (N, V)`` or ``(N, V, q)`` (the law ``"linear_gaussian"``):

- :class:`TargetGaussian` is one multivariate normal on the ``V * d`` features whose mean is
  linear in the whole target vector (least squares) and whose covariance is the residuals';
- :class:`NearestRows` draws among the training rows whose target vectors are nearest;
- :class:`NodeRidge` predicts every node's target by linear (``l2=0``) or ridge regression on
  all ``V * d`` features.

Everything is computed in float64 on the CPU; generated features come back in the dtype of the
training features.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from dgl_iflow.latents.gaussian import gaussian_log_prob

__all__ = ["LabelGaussian", "NearestRows", "NodeGaussian", "NodeLogistic", "NodeRidge", "ResampledRows",
           "TargetGaussian"]

LabelKey = tuple[int, ...]


def _check_rows(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Validate ``(N, V, d)`` features and ``(N, V)`` labels; return float64 / int64 copies."""
    if x.dim() != 3 or y.shape != x.shape[:2] or x.shape[0] < 1:
        raise ValueError(f"expected x (N, V, d) and y (N, V) with N >= 1, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if int(y.min()) < 0:
        raise ValueError("labels must be >= 0")
    return x.detach().cpu().to(torch.float64), y.detach().cpu().to(torch.int64)


def _check_request(labels: Tensor, n: int, num_nodes: int) -> LabelKey:
    """Validate a ``generate(labels, n)`` call and return the label vector as a tuple."""
    if labels.shape != (num_nodes,):
        raise ValueError(f"labels must be one label vector of shape ({num_nodes},), "
                         f"got {tuple(labels.shape)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    key = tuple(int(v) for v in labels.tolist())
    if min(key, default=0) < 0:
        raise ValueError(f"labels must be >= 0, got {_describe(key)}")
    return key


def _group_rows(y: Tensor) -> dict[LabelKey, Tensor]:
    """Row indices ``(count,)`` of every distinct label vector among the rows of ``y``."""
    uniq, inverse = torch.unique(y, dim=0, return_inverse=True)
    return {tuple(u.tolist()): torch.nonzero(inverse == i).flatten()
            for i, u in enumerate(uniq)}


def _describe(key: LabelKey) -> str:
    return "[" + ",".join(map(str, key)) + "]"


def _regularized_cov(rows: Tensor, shrinkage: float, ridge: float) -> Tensor:
    """Sample covariance ``(p, p)`` of ``rows (m, p)``, shrunk toward its diagonal, plus ridge.

    ``(1 - shrinkage) S + shrinkage diag(S) + ridge I`` with ``S`` the unbiased (ddof 1)
    covariance; a single row has ``S = 0``.
    """
    centred = rows - rows.mean(dim=0)
    cov = centred.T @ centred / max(len(rows) - 1, 1)
    shrunk = (1.0 - shrinkage) * cov + shrinkage * torch.diag(cov.diagonal())
    return shrunk + ridge * torch.eye(rows.shape[1], dtype=rows.dtype)


def _check_regularization(shrinkage: float, ridge: float) -> None:
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must lie in [0, 1], got {shrinkage}")
    if ridge <= 0.0:
        # Without a ridge a covariance from fewer than p + 1 rows is singular: no density.
        raise ValueError(f"ridge must be > 0, got {ridge}")


class ResampledRows:
    """Training rows resampled uniformly, with replacement, among those with the same labels.

    Parameters
    ----------
    x : Tensor
        ``(N, V, d)`` training features.
    y : Tensor
        ``(N, V)`` integer training labels.
    seed : int
        Seed of the ``torch.Generator`` that draws the rows.

    Notes
    -----
    A label vector absent from the training rows raises ``KeyError``: there is nothing to
    memorize, and any fallback would be another baseline.
    """

    def __init__(self, x: Tensor, y: Tensor, seed: int = 0) -> None:
        self.x, y64 = _check_rows(x, y)
        self.dtype = x.dtype
        self.rows = _group_rows(y64)
        self.generator = torch.Generator().manual_seed(seed)

    def generate(self, labels: Tensor, n: int) -> Tensor:
        """``n`` training rows ``(n, V, d)`` whose label vector equals ``labels (V,)``."""
        key = _check_request(labels, n, self.x.shape[1])
        if key not in self.rows:
            raise KeyError(f"label vector {_describe(key)} does not occur in the "
                           f"{len(self.x)} training rows; nothing to resample")
        pool = self.rows[key]
        pick = torch.randint(len(pool), (n,), generator=self.generator)
        return self.x[pool[pick]].to(self.dtype)


class LabelGaussian:
    r"""One multivariate normal on the flattened ``V * d`` features per training label vector.

    For each label vector ``Y`` with at least ``min_rows`` training rows, the mean and the
    regularized covariance

    .. math::

        \hat\Sigma_Y = (1 - s)\, S_Y + s\, \mathrm{diag}(S_Y) + \epsilon I

    of its rows (``S_Y`` the unbiased sample covariance, ``s`` = ``shrinkage``, ``epsilon`` =
    ``ridge``). The ridge makes every covariance positive definite, so a label vector with fewer
    rows than ``V * d + 1`` still has a density; with the loaders' standardized features,
    ``ridge = 1e-3`` is a thousandth of a feature's variance. On traffic the paper protocol's
    three label vectors have 100+ training rows each, so the defaults (no shrinkage,
    ``ridge = 1e-3``) give practically the plain sample covariance: any ridge from ``1e-6`` to
    ``1e-2`` scores the same (``docs/reproduce.md``). A label vector with a handful of rows (the
    third one on solar has 4-7) gets a nearly degenerate Gaussian: in the directions its rows
    do not span, its variance is the ridge.

    Parameters
    ----------
    x : Tensor
        ``(N, V, d)`` training features.
    y : Tensor
        ``(N, V)`` integer training labels.
    shrinkage : float
        Weight ``s`` in ``[0, 1]`` of the diagonal target.
    ridge : float
        ``epsilon > 0`` added to the diagonal.
    min_rows : int
        Label vectors with fewer training rows get no Gaussian.
    seed : int
        Seed of the ``torch.Generator`` of :meth:`generate`.
    """

    def __init__(self, x: Tensor, y: Tensor, shrinkage: float = 0.0, ridge: float = 1e-3,
                 min_rows: int = 2, seed: int = 0) -> None:
        _check_regularization(shrinkage, ridge)
        if min_rows < 1:
            raise ValueError(f"min_rows must be >= 1, got {min_rows}")
        x64, y64 = _check_rows(x, y)
        self.shape = tuple(x.shape[1:])
        self.dtype = x.dtype
        self.min_rows = min_rows
        flat = x64.reshape(len(x64), -1)
        groups = _group_rows(y64)
        self.counts = {key: len(rows) for key, rows in groups.items()}
        self.means: dict[LabelKey, Tensor] = {}
        self.chols: dict[LabelKey, Tensor] = {}
        for key, rows in groups.items():
            if len(rows) >= min_rows:
                self.means[key] = flat[rows].mean(dim=0)
                self.chols[key] = torch.linalg.cholesky(
                    _regularized_cov(flat[rows], shrinkage, ridge))
        self.generator = torch.Generator().manual_seed(seed)

    def covariance(self, labels: Tensor) -> Tensor:
        """The regularized covariance ``(V d, V d)`` of label vector ``labels (V,)``."""
        chol = self.chols[self._key(labels, 0)]
        return chol @ chol.T

    def _key(self, labels: Tensor, n: int) -> LabelKey:
        key = _check_request(labels, n, self.shape[0])
        if key not in self.means:
            seen = self.counts.get(key, 0)
            raise KeyError(f"label vector {_describe(key)} has {seen} training rows, fewer than "
                           f"min_rows = {self.min_rows}; no Gaussian was fitted for it")
        return key

    def generate(self, labels: Tensor, n: int) -> Tensor:
        """``n`` draws ``(n, V, d)`` from the Gaussian of label vector ``labels (V,)``."""
        key = self._key(labels, n)
        noise = torch.randn(n, len(self.means[key]), generator=self.generator,
                            dtype=torch.float64)
        flat = self.means[key] + noise @ self.chols[key].T
        return flat.reshape(n, *self.shape).to(self.dtype)

    def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """``log p(x_i | y_i)`` per row, shape ``(N,)``; NaN where ``y_i`` has no Gaussian."""
        x64, y64 = _check_rows(x, y)
        if tuple(x64.shape[1:]) != self.shape:
            raise ValueError(f"x rows must have shape {self.shape}, got {tuple(x64.shape[1:])}")
        flat = x64.reshape(len(x64), -1)
        out = torch.full((len(x64),), float("nan"), dtype=torch.float64)
        for key, rows in _group_rows(y64).items():
            if key in self.means:
                out[rows] = gaussian_log_prob(flat[rows].T, self.means[key], self.chols[key])
        return out


class NodeGaussian:
    r"""Independent ``d``-dimensional normals per node, given only the node's own label.

    Node ``v`` with label ``k`` has the mean and the regularized covariance (as in
    :class:`LabelGaussian`) of ``X_v`` over the training rows with ``Y_v = k``; a graph's
    density is the product over its nodes, so its nodes are independent given their labels.

    Parameters
    ----------
    x : Tensor
        ``(N, V, d)`` training features.
    y : Tensor
        ``(N, V)`` integer training labels.
    shrinkage : float
        Weight in ``[0, 1]`` of the diagonal target.
    ridge : float
        Added to the diagonal of every ``(d, d)`` covariance, ``> 0``.
    seed : int
        Seed of the ``torch.Generator`` of :meth:`generate`.

    Notes
    -----
    A (node, label) pair without training rows gets no Gaussian; asking for it raises
    ``KeyError``.
    """

    def __init__(self, x: Tensor, y: Tensor, shrinkage: float = 0.0, ridge: float = 1e-3,
                 seed: int = 0) -> None:
        _check_regularization(shrinkage, ridge)
        x64, y64 = _check_rows(x, y)
        self.shape = tuple(x.shape[1:])
        self.dtype = x.dtype
        num_nodes, feats = self.shape
        num_labels = int(y64.max()) + 1
        # NaN marks a (node, label) pair without training rows.
        self.means = torch.full((num_nodes, num_labels, feats), float("nan"), dtype=torch.float64)
        self.chols = torch.full((num_nodes, num_labels, feats, feats), float("nan"),
                                dtype=torch.float64)
        for v in range(num_nodes):
            for k in range(num_labels):
                rows = x64[y64[:, v] == k, v]
                if len(rows):
                    self.means[v, k] = rows.mean(dim=0)
                    self.chols[v, k] = torch.linalg.cholesky(
                        _regularized_cov(rows, shrinkage, ridge))
        self.generator = torch.Generator().manual_seed(seed)

    def _check_labels(self, y: Tensor) -> None:
        """Raise ``KeyError`` unless every (node, label) pair in ``y (..., V)`` was fitted."""
        nodes = torch.arange(self.shape[0]).expand_as(y)
        fitted = y < self.means.shape[1]
        fitted[fitted.clone()] = ~self.means[nodes[fitted], y[fitted], 0].isnan()
        if not fitted.all():
            node, label = int(nodes[~fitted][0]), int(y[~fitted][0])
            raise KeyError(f"node {node} never has label {label} in the training rows; no "
                           f"Gaussian was fitted for it")

    def generate(self, labels: Tensor, n: int) -> Tensor:
        """``n`` draws ``(n, V, d)``, node ``v`` from its Gaussian for label ``labels[v]``."""
        _check_request(labels, n, self.shape[0])
        labels = labels.cpu().long()
        self._check_labels(labels)
        nodes = torch.arange(self.shape[0])
        mean, chol = self.means[nodes, labels], self.chols[nodes, labels]
        noise = torch.randn(n, *self.shape, generator=self.generator, dtype=torch.float64)
        return (mean + torch.einsum("vij,nvj->nvi", chol, noise)).to(self.dtype)

    def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """``log p(x_i | y_i) = sum_v log N(x_iv; mu_{v,y_iv}, Sigma_{v,y_iv})``, shape ``(N,)``."""
        x64, y64 = _check_rows(x, y)
        if tuple(x64.shape[1:]) != self.shape:
            raise ValueError(f"x rows must have shape {self.shape}, got {tuple(x64.shape[1:])}")
        self._check_labels(y64)
        nodes = torch.arange(self.shape[0]).expand_as(y64)
        mean, chol = self.means[nodes, y64], self.chols[nodes, y64]
        return gaussian_log_prob(x64.unsqueeze(-1), mean, chol).squeeze(-1).sum(dim=1)


class NodeLogistic:
    r"""Multinomial logistic regression of every node's label, one model per node.

    Node ``v``'s class probabilities are :math:`\mathrm{softmax}(W_v^\top z_v + b_v)` with
    ``z_v`` the node's own ``d`` features (``features="own"``) or all ``V * d`` features of the
    graph (``features="all"``). The ``V`` models are fitted jointly, full batch, by L-BFGS on

    .. math::

        \sum_v \frac{1}{N} \sum_i -\log p(y_{iv} \mid z_{iv})
            + \frac{\lambda}{2} \sum_v \lVert W_v \rVert_F^2,

    which separates into one penalized problem per node (biases are not penalized). The
    default ``lambda = 1 / N`` is a unit penalty on the summed (not averaged) losses, so it
    fades as the training set grows; it keeps separable data bounded. The penalty is not
    scale-free: standardize the features first (the loaders do).

    Parameters
    ----------
    x : Tensor
        ``(N, V, d)`` training features.
    y : Tensor
        ``(N, V)`` integer training labels.
    features : {"own", "all"}
        Which features each node's model sees.
    num_classes : int, optional
        ``K``; default ``max(y) + 1``, at least 2.
    l2 : float, optional
        Penalty weight ``lambda >= 0``; default ``1 / N``.
    max_iter : int
        L-BFGS iterations.
    """

    def __init__(self, x: Tensor, y: Tensor, features: str = "own", num_classes: int | None = None,
                 l2: float | None = None, max_iter: int = 500) -> None:
        if features not in ("own", "all"):
            raise ValueError(f"features must be 'own' or 'all', got {features!r}")
        x64, y64 = _check_rows(x, y)
        l2 = 1.0 / len(x64) if l2 is None else l2
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        num_classes = max(int(y64.max()) + 1, 2) if num_classes is None else num_classes
        if int(y64.max()) >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got max {int(y64.max())}")
        self.features, self.num_classes, self.l2 = features, num_classes, l2
        self.shape = tuple(x.shape[1:])
        num_nodes, feats = self.shape
        width = feats if features == "own" else num_nodes * feats
        self.weight = torch.zeros(num_nodes, width, num_classes, dtype=torch.float64,
                                  requires_grad=True)
        self.bias = torch.zeros(num_nodes, num_classes, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([self.weight, self.bias], lr=1.0, max_iter=max_iter,
                                      tolerance_grad=1e-10, tolerance_change=1e-14,
                                      history_size=20, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = self.objective(x64, y64)
            loss.backward()
            return loss

        optimizer.step(closure)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)

    def _logits(self, x64: Tensor) -> Tensor:
        """Logits ``(N, V, K)`` of float64 features ``(N, V, d)``."""
        if self.features == "own":
            return torch.einsum("nvj,vjk->nvk", x64, self.weight) + self.bias
        return torch.einsum("nj,vjk->nvk", x64.reshape(len(x64), -1), self.weight) + self.bias

    def objective(self, x: Tensor, y: Tensor) -> Tensor:
        """The penalized training loss above, a scalar, for rows ``x (N, V, d)``, ``y (N, V)``."""
        x64, y64 = _check_rows(x, y)
        log_p = torch.log_softmax(self._logits(x64), dim=-1)
        nll = -log_p.gather(-1, y64.unsqueeze(-1)).squeeze(-1).mean(dim=0).sum()
        return nll + 0.5 * self.l2 * self.weight.square().sum()

    def predict_proba(self, x: Tensor) -> Tensor:
        """:math:`P(Y_v = k \\mid X)`, sample-first: ``(N, V, K)`` for ``x (N, V, d)``."""
        if x.dim() != 3 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"x must have shape (N, {self.shape[0]}, {self.shape[1]}), "
                             f"got {tuple(x.shape)}")
        with torch.no_grad():
            logits = self._logits(x.detach().cpu().to(torch.float64))
        return torch.softmax(logits, dim=-1)


# -- real-valued targets --------------------------------------------------------------------

def _check_target_rows(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Validate ``(N, V, d)`` features and ``(N, V)`` or ``(N, V, q)`` finite targets; return
    float64 copies, the targets flattened to ``(N, V q)``."""
    if x.dim() != 3 or y.dim() not in (2, 3) or y.shape[:2] != x.shape[:2] or x.shape[0] < 1:
        raise ValueError(f"expected x (N, V, d) and targets y (N, V) or (N, V, q) with N >= 1, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    y64 = y.detach().cpu().to(torch.float64).flatten(1)
    if not bool(torch.isfinite(y64).all()):
        raise ValueError("targets must be finite, got NaN or infinite values")
    return x.detach().cpu().to(torch.float64), y64


def _with_intercept(rows: Tensor) -> Tensor:
    """``rows (N, p)`` with a column of ones in front, ``(N, p + 1)``."""
    return torch.cat([torch.ones(len(rows), 1, dtype=rows.dtype), rows], dim=1)


class TargetGaussian:
    r"""One multivariate normal on the flattened ``V * d`` features, its mean linear in the targets.

    .. math::

        \operatorname{vec} X \mid Y \sim N(c + W \operatorname{vec} Y,\ \hat\Sigma),

    the continuous analogue of :class:`LabelGaussian`: :math:`c, W` by least squares on the
    training rows, :math:`\hat\Sigma` the residuals' covariance (divided by :math:`N - p - 1`,
    :math:`p` the number of targets per row) regularized as :class:`LabelGaussian`'s.

    Parameters
    ----------
    x : Tensor
        ``(N, V, d)`` training features.
    y : Tensor
        ``(N, V)`` or ``(N, V, q)`` training targets.
    shrinkage, ridge : float
        As in :class:`LabelGaussian`.
    seed : int
        Seed of the ``torch.Generator`` of :meth:`generate`.

    Attributes
    ----------
    coef : Tensor
        ``(1 + V q, V d)``: the intercept :math:`c` then :math:`W^\top`.
    chol : Tensor
        ``(V d, V d)`` Cholesky factor of :math:`\hat\Sigma`.
    """

    def __init__(self, x: Tensor, y: Tensor, shrinkage: float = 0.0, ridge: float = 1e-3, seed: int = 0) -> None:
        _check_regularization(shrinkage, ridge)
        x64, y64 = _check_target_rows(x, y)
        self.shape, self.target_shape, self.dtype = tuple(x.shape[1:]), tuple(y.shape[1:]), x.dtype
        design, flat = _with_intercept(y64), x64.flatten(1)
        self.coef = torch.linalg.lstsq(design, flat).solution
        residual = flat - design @ self.coef
        # Unbiased for the residuals of a fit with 1 + p coefficients.
        cov = residual.T @ residual / max(len(flat) - design.shape[1], 1)
        cov = (1.0 - shrinkage) * cov + shrinkage * torch.diag(cov.diagonal())
        self.chol = torch.linalg.cholesky(cov + ridge * torch.eye(len(cov), dtype=torch.float64))
        self.generator = torch.Generator().manual_seed(seed)

    def _flat_targets(self, y: Tensor) -> Tensor:
        if tuple(y.shape[-len(self.target_shape):]) != self.target_shape:
            raise ValueError(f"targets must end in shape {self.target_shape}, got {tuple(y.shape)}")
        return y.detach().cpu().to(torch.float64).reshape(-1, self.coef.shape[0] - 1)

    def mean(self, y: Tensor) -> Tensor:
        """:math:`E[X \\mid Y]` ``(M, V, d)`` for targets ``(M, V[, q])``, float64."""
        return (_with_intercept(self._flat_targets(y)) @ self.coef).unflatten(1, self.shape)

    def generate(self, y: Tensor, n: int) -> Tensor:
        """``n`` draws ``(n, V, d)`` given one target vector ``y`` ``(V[, q])``."""
        if tuple(y.shape) != self.target_shape:
            raise ValueError(f"y must be one target vector of shape {self.target_shape}, got {tuple(y.shape)}")
        noise = torch.randn(n, self.chol.shape[0], generator=self.generator, dtype=torch.float64)
        return (self.mean(y) + (noise @ self.chol.T).unflatten(1, self.shape)).to(self.dtype)

    def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """``log p(x_i | y_i)`` ``(N,)`` for rows ``x (N, V, d)`` and their targets."""
        x64, _ = _check_target_rows(x, y)
        centred = (x64 - self.mean(y)).flatten(1)
        zeros = torch.zeros(centred.shape[1], dtype=torch.float64)
        return gaussian_log_prob(centred.T, zeros, self.chol)


class NearestRows:
    """Training rows drawn uniformly, with replacement, among the ``k`` whose target vectors are
    nearest (Euclidean, over all nodes) to the requested one: resampling by target.

    Parameters
    ----------
    x : Tensor
        ``(N, V, d)`` training features.
    y : Tensor
        ``(N, V)`` or ``(N, V, q)`` training targets.
    k : int
        Rows drawn among; ``k = 1`` copies the nearest row.
    seed : int
        Seed of the ``torch.Generator`` that draws the rows.
    """

    def __init__(self, x: Tensor, y: Tensor, k: int = 10, seed: int = 0) -> None:
        self.x, self.y = _check_target_rows(x, y)
        if not 1 <= k <= len(self.x):
            raise ValueError(f"k must lie in [1, N] = [1, {len(self.x)}], got {k}")
        self.k, self.dtype, self.target_shape = k, x.dtype, tuple(y.shape[1:])
        self.generator = torch.Generator().manual_seed(seed)

    def nearest(self, y: Tensor) -> Tensor:
        """Indices ``(k,)`` of the training rows nearest to the target vector ``y`` ``(V[, q])``, nearest first."""
        if tuple(y.shape) != self.target_shape:
            raise ValueError(f"y must be one target vector of shape {self.target_shape}, got {tuple(y.shape)}")
        distance = (self.y - y.detach().cpu().to(torch.float64).flatten()).square().sum(1)
        return torch.topk(distance, self.k, largest=False).indices

    def generate(self, y: Tensor, n: int) -> Tensor:
        """``n`` training rows ``(n, V, d)`` drawn among the ``k`` nearest to ``y``."""
        pool = self.nearest(y)
        return self.x[pool[torch.randint(self.k, (n,), generator=self.generator)]].to(self.dtype)


#: Ridge penalties :meth:`NodeRidge.cross_validated` chooses among.
RIDGE_PENALTIES = tuple(10.0**k for k in range(-3, 5))


class NodeRidge:
    r"""Every node's targets regressed on all ``V * d`` features of the graph: linear (``l2 = 0``) or ridge.

    .. math::

        \hat Y_v = b_v + W_v^\top \operatorname{vec} X, \qquad
        (b, W) = \arg\min \sum_i \lVert Y_i - b - W^\top \operatorname{vec} X_i \rVert^2
            + \lambda \lVert W \rVert^2,

    one least-squares problem for all nodes, since they share the design; the intercept is not
    penalized. Features are used as given (the loaders standardize them). The fit is a linear
    smoother :math:`\hat Y = H Y`, so its leave-one-out residuals are exact in closed form,
    :math:`(Y_i - \hat Y_i) / (1 - H_{ii})`, without refitting: :meth:`cross_validated` chooses
    :math:`\lambda` by them.

    Parameters
    ----------
    x : Tensor
        ``(N, V, d)`` training features.
    y : Tensor
        ``(N, V)`` or ``(N, V, q)`` training targets.
    l2 : float
        :math:`\lambda \ge 0`.

    Attributes
    ----------
    weight : Tensor
        ``(V d, V q)`` :math:`W`.
    bias : Tensor
        ``(V q,)`` :math:`b`.
    loo_residuals : Tensor
        ``(N, V[, q])`` float64: every training row's residual under the fit to the other rows.
    """

    def __init__(self, x: Tensor, y: Tensor, l2: float = 0.0) -> None:
        if not l2 >= 0.0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        x64, y64 = _check_target_rows(x, y)
        self.l2, self.target_shape, self.dtype = float(l2), tuple(y.shape[1:]), x.dtype
        flat = x64.flatten(1)
        # Centring takes the unpenalized intercept out of the problem.
        x_mean, y_mean = flat.mean(0), y64.mean(0)
        centred = flat - x_mean
        gram = centred.T @ centred + l2 * torch.eye(flat.shape[1], dtype=torch.float64)
        solved = torch.linalg.lstsq(gram, torch.cat([centred.T, centred.T @ (y64 - y_mean)], dim=1)).solution
        inverse_design, self.weight = solved[:, :len(flat)], solved[:, len(flat):]
        self.bias = y_mean - x_mean @ self.weight
        # The smoother's diagonal: 1/N from the intercept, c_i^T G^-1 c_i from the slopes.
        leverage = 1.0 / len(flat) + (centred * inverse_design.T).sum(1)
        residual = y64 - (flat @ self.weight + self.bias)
        # A row of leverage 1 (an interpolating fit: l2 = 0 and N <= V d + 1) has no finite
        # leave-one-out residual: inf, so cross_validated never prefers that fit.
        free = (1.0 - leverage).unsqueeze(1)
        loo = torch.where(free > 1e-9, residual / free, torch.full_like(residual, math.inf))
        self.loo_residuals = loo.reshape(y.shape)

    @classmethod
    def cross_validated(cls, x: Tensor, y: Tensor, penalties: tuple[float, ...] = RIDGE_PENALTIES) -> NodeRidge:
        """The fit whose penalty of ``penalties`` has the least leave-one-out squared error over all nodes."""
        if not penalties:
            raise ValueError("penalties must hold at least one value")
        fits = [cls(x, y, l2=l2) for l2 in penalties]
        return min(fits, key=lambda fit: float(fit.loo_residuals.pow(2).mean()))

    def predict(self, x: Tensor) -> Tensor:
        """Predicted targets ``(N, V[, q])`` for rows ``x (N, V, d)``."""
        flat = x.detach().cpu().to(torch.float64).flatten(1)
        if flat.shape[1] != self.weight.shape[0]:
            raise ValueError(f"x rows must hold {self.weight.shape[0]} features, got {tuple(x.shape)}")
        return (flat @ self.weight + self.bias).reshape(len(flat), *self.target_shape).to(self.dtype)
