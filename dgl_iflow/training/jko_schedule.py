"""Time grids of JKO flows: the default step sizes, re-spacing by movement, and refinement."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models import JKOFlow


def step_size(k: int, h0: float, rho: float, h_max: float) -> float:
    r"""Default step of block :math:`k` (from 0): :math:`h_k = \min(\rho^k h_0, h_{max})`.

    Early blocks move the data far from the target, so they take short steps; near the target
    the JKO steps move little and may grow geometrically.
    """
    if h0 <= 0 or rho <= 0 or h_max <= 0:
        raise ValueError(f"h0, rho and h_max must be positive, got {h0}, {rho}, {h_max}")
    return min(rho**k * h0, h_max)


def reparametrized_steps(steps: Sequence[float], movements: Sequence[float], eta: float = 0.5) -> list[float]:
    r"""Step sizes re-spaced so that every block moves about the same :math:`W_2` distance.

    .. math::
        h_k \leftarrow h_k + \eta\left(\frac{\bar a\, h_k}{a_k} - h_k\right), \qquad
        \bar a = \frac{1}{K}\sum_k a_k,

    with :math:`a_k` the movement of block :math:`k`. If block :math:`k` moves at a steady
    speed, :math:`a_k \propto h_k` and :math:`\eta = 1` gives it exactly the movement
    :math:`\bar a`; :math:`\eta < 1` damps the update because speeds change with the grid.

    Parameters
    ----------
    steps : sequence of float
        Current :math:`h_k`.
    movements : sequence of float
        :math:`a_k = (\mathbb{E}\|x(t_{k+1}) - x(t_k)\|^2)^{1/2}`, positive.
    eta : float
        Damping in :math:`(0, 1]`.

    Returns
    -------
    list of float
        The new :math:`h_k`.
    """
    if len(steps) != len(movements) or not steps:
        raise ValueError(f"need one movement per step, got {len(steps)} steps and {len(movements)} movements")
    if not 0.0 < eta <= 1.0:
        raise ValueError(f"eta must lie in (0, 1], got {eta}")
    if min(movements) <= 0.0:
        raise ValueError(f"movements must be positive, got {list(movements)}")
    mean = sum(movements) / len(movements)
    return [h + eta * (mean * h / a - h) for h, a in zip(steps, movements)]


def reparametrize(model: JKOFlow, movements: Sequence[float], eta: float = 0.5) -> list[float]:
    """Move every block of ``model`` to the :func:`reparametrized_steps` grid, keeping its flow map.

    The grid keeps its start time. Each block is retimed (``JKOBlock.retime``), so the model
    is unchanged until it is retrained under the new step sizes.

    Returns
    -------
    list of float
        The new step sizes.
    """
    steps = reparametrized_steps(model.step_sizes, movements, eta)
    t = model.blocks[0].t0
    for block, h in zip(model.blocks, steps):
        block.retime(t, t + h)
        t += h
    return steps


@torch.no_grad()
def refine(model: JKOFlow) -> None:
    """Split every block's interval in two (doubling the blocks), each half warm-started.

    Both halves keep the parent's velocity field, so the refined model is the parent's flow
    map up to RK4 error before it is retrained.
    """
    halves = [half for block in model.blocks for half in block.split()]
    del model.blocks[:len(model.blocks)]
    model.blocks.extend(halves)
