"""The invertible graph blocks, spectral and spatial, ready to drop into a DGL or PyG model."""
from __future__ import annotations

from collections.abc import Sequence

from ..graphs import GraphLike
from ..transforms.resblock import InvertibleResBlock
from ..transforms.residual import GraphResidual
from .chebconv import ChebConv
from .l3conv import L3Conv


def _conv_width(hidden_feats: Sequence[int]) -> int:
    if not hidden_feats:
        raise ValueError("hidden_feats needs at least one width: the convolution's output")
    return hidden_feats[0]


def _residual(conv, hidden_feats: Sequence[int], activation: str, lipschitz_coeff: float) -> GraphResidual:
    return GraphResidual(conv, hidden_feats=tuple(hidden_feats[1:]), activation=activation,
                         lipschitz_coeff=lipschitz_coeff)


class InvertibleChebBlock(InvertibleResBlock):
    r"""Spectral invertible graph block: a residual block around a Chebyshev convolution.

    .. math::
        Y = X + g(X), \qquad g(X) = \sigma\Big(\sum_{k=0}^{K-1} T_k(\tilde L) X W_k + b\Big) \cdots W_L + b_L,

    a :class:`ChebConv` from :math:`D` to ``hidden_feats[0]`` channels, then node-wise layers
    through the remaining widths back to :math:`D`, every layer spectrally normalized so that
    :math:`\mathrm{Lip}(g) \le c < 1` and the block is invertible by construction. It commutes
    with every automorphism of the graph.

    ``forward(graph, feat)`` returns ``(Y, logdet)`` with :math:`\log|\det \partial Y / \partial X|`
    per sample; ``inverse(graph, Y)`` returns ``(X, None)`` (:class:`InvertibleResBlock`).
    ``feat`` is node-first ``(V, *, D)``: a DGL ``ndata`` or PyG ``x`` tensor ``(V, D)`` as it
    is (its log-det is then a scalar), or with sample dimensions. ``graph`` is any form of
    :mod:`dgl_iflow.graphs`.

    Parameters
    ----------
    feats : int
        Node feature size :math:`D`, in and out.
    hidden_feats : sequence of int
        The convolution's output width, then the widths of the node-wise hidden layers.
    k : int
        Chebyshev terms of the convolution.
    lipschitz_coeff : float
        :math:`c \in (0, 1)`.
    graph_mean : bool
        Add the graph-wide mean as one more operator of the convolution.
    activation : str
        A 1-Lipschitz activation (:data:`~dgl_iflow.layers.ACTIVATIONS`).
    logdet : str
        ``"exact"`` (``V D`` up to a few hundred) or ``"estimator"`` (any size).

    Examples
    --------
    >>> import torch
    >>> from dgl_iflow.layers import InvertibleChebBlock
    >>> edge_index = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    >>> block = InvertibleChebBlock(2)
    >>> y, logdet = block((edge_index, 3), torch.randn(3, 2))
    >>> y.shape, logdet.shape
    (torch.Size([3, 2]), torch.Size([]))
    """

    def __init__(self, feats: int, hidden_feats: Sequence[int] = (32,), k: int = 3, lipschitz_coeff: float = 0.97,
                 graph_mean: bool = False, activation: str = "lipswish", logdet: str = "exact") -> None:
        conv = ChebConv(feats, _conv_width(hidden_feats), k=k, graph_mean=graph_mean)
        super().__init__(_residual(conv, hidden_feats, activation, lipschitz_coeff), logdet=logdet)


class InvertibleL3Block(InvertibleResBlock):
    r"""Spatial invertible graph block: a residual block around an L3Net convolution with
    learnable local filters (Cheng, Miao, Qiu, ICLR 2021).

    .. math::
        Y = X + g(X), \qquad g(X)_v = \sigma\Big(\sum_{m} \sum_{u \in N_{o_m}(v)} a_m(v, u) X_u W_m + b\Big) \cdots,

    as :class:`InvertibleChebBlock` with an :class:`L3Conv` in place of the Chebyshev
    convolution: every node has its own filter, so the block is tied to the graph it was built
    for and is not permutation-equivariant.

    Parameters
    ----------
    feats : int
        Node feature size :math:`D`, in and out.
    graph : GraphLike
        The graph the filters live on.
    hidden_feats, lipschitz_coeff, graph_mean, activation, logdet
        As for :class:`InvertibleChebBlock`.
    orders : sequence of int
        Hop counts of the local filters.
    """

    def __init__(self, feats: int, graph: GraphLike, hidden_feats: Sequence[int] = (32,),
                 orders: Sequence[int] = (0, 1, 2), lipschitz_coeff: float = 0.97, graph_mean: bool = False,
                 activation: str = "lipswish", logdet: str = "exact") -> None:
        conv = L3Conv(feats, _conv_width(hidden_feats), graph, orders=orders, graph_mean=graph_mean)
        super().__init__(_residual(conv, hidden_feats, activation, lipschitz_coeff), logdet=logdet)
