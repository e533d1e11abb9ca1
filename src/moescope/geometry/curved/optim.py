r"""Riemannian SGD and Adam on the spaces of this package (small, readable, exact exp maps).

Each parameter group names its ``manifold`` (default :class:`Euclidean`, where both reduce
to :class:`torch.optim.SGD` / :class:`torch.optim.Adam` up to rounding). A step:

* Riemannian SGD (Bonnabel 2013): :math:`x \leftarrow \exp_x(-\eta\, m)`,
  :math:`m = \mu\, P(m) + \operatorname{grad} f(x)`. Here :math:`\operatorname{grad} f = ` ``egrad2rgrad``
  of the Euclidean gradient, and P parallel-transports the momentum to the new point;
* Riemannian Adam (Bécigneul & Ganea 2019, "Riemannian Adaptive Optimization Methods",
  Alg. 1 without AMSGrad): :math:`m \leftarrow \beta_1 P(m) + (1-\beta_1) g`,
  :math:`v \leftarrow \beta_2 v + (1-\beta_2)\lVert g\rVert_x^2` with one :math:`v` per factor of
  the product (per point for the ball, sphere and hyperboloid; per coordinate for
  Euclidean space), and :math:`x \leftarrow \exp_x\big(-\frac{\eta}{1-\beta_1^t}\,
  \frac{m}{\sqrt{v/(1-\beta_2^t)} + \epsilon}\big)`.

After each step the point is passed through ``projx``, which keeps ball points at least
``BALL_MARGIN`` inside the edge and hyperboloid and sphere points on their surfaces.
geoopt's optimizers (a retraction in place of exp) remain a test-only oracle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from moescope.geometry.curved.euclidean import Euclidean

__all__ = ["RiemannianAdam", "RiemannianSGD"]


def _check_lr(lr: float) -> float:
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number; got lr={lr!r}")
    return float(lr)


class RiemannianSGD(torch.optim.Optimizer):
    """Riemannian SGD with optional momentum; ``params`` as for any torch optimizer.

    Args:
        params: tensors or groups; a group may set its own ``manifold``.
        lr: step size η (Riemannian units).
        momentum: μ in [0, 1).
        manifold: the default for groups that name none.
    """

    def __init__(self, params: Iterable, lr: float, *, momentum: float = 0.0, manifold=None) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1); got momentum={momentum!r}")
        super().__init__(params, {"lr": _check_lr(lr), "momentum": float(momentum),
                                  "manifold": manifold if manifold is not None else Euclidean()})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            m, lr, mu = group["manifold"], group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                direction = m.egrad2rgrad(p, p.grad)
                state = self.state[p]
                if mu > 0.0:
                    if "momentum" in state:
                        direction = mu * state["momentum"] + direction
                    state["momentum"] = direction
                new, moved = m.expmap_transp(p, -lr * direction, direction)
                if mu > 0.0:
                    state["momentum"] = moved
                p.copy_(new)
        return loss


class RiemannianAdam(torch.optim.Optimizer):
    """Riemannian Adam (Bécigneul & Ganea 2019); ``params`` as for any torch optimizer.

    Args:
        params: tensors or groups; a group may set its own ``manifold``.
        lr: step size η.
        betas: (β₁, β₂) in [0, 1).
        eps: added to the root of the second moment.
        manifold: the default for groups that name none.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, *, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, manifold=None) -> None:
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1); got betas={betas!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive; got eps={eps!r}")
        super().__init__(params, {"lr": _check_lr(lr), "betas": tuple(betas), "eps": float(eps),
                                  "manifold": manifold if manifold is not None else Euclidean()})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            m, lr, eps = group["manifold"], group["lr"], group["eps"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = m.egrad2rgrad(p, p.grad)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(m.component_inner(p, grad))
                state["step"] += 1
                t = state["step"]
                exp_avg = state["exp_avg"].mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq = state["exp_avg_sq"].mul_(beta2).add_(m.component_inner(p, grad), alpha=1.0 - beta2)
                denom = exp_avg_sq.sqrt() / math.sqrt(1.0 - beta2**t) + eps
                step_size = lr / (1.0 - beta1**t)
                new, state["exp_avg"] = m.expmap_transp(p, -step_size * (exp_avg / denom), exp_avg)
                p.copy_(new)
        return loss
