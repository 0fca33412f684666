"""Linear baseline: the bar a trained net has to clear.

No gradient descent, no randomness, float64 throughout:

- expected return: closed-form ridge regression of the unit-scaled label
  return on the flattened standardised window,
  ``b = (Xc'Xc + alpha I)^-1 Xc'yc`` on centred data, intercept from the means
  (the intercept is not penalised);
- direction: L2-regularised multinomial logistic regression (penalty
  ``alpha/2 ||Theta||^2``) on ``[1, newest feature vector, ridge forecast]``,
  fitted by Newton's method with a backtracking line search. The logistic
  design uses the newest vector plus the ridge forecast instead of the whole
  window because Newton's Hessian is ``(3D)^2``: the ridge forecast already
  summarises the window, and this keeps the fit exact and cheap for any window.

The fitted coefficients live in float64 buffers of :class:`LinearBaselineCore`,
so the baseline is saved, verified, loaded and served exactly like the nets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

__all__ = ["BaselineFit", "LinearBaselineCore", "fit_linear_baseline"]

_N_CLASSES = 3
_MAX_NEWTON_STEPS = 50


class LinearBaselineCore(nn.Module):
    """Standardised window ``[B, W, F]`` (float64) -> ``(logits [B, 3], unit_return [B])``."""

    ridge_coef: Tensor
    ridge_intercept: Tensor
    logit_coef: Tensor

    def __init__(self, window: int, n_features: int) -> None:
        super().__init__()
        self.register_buffer("ridge_coef", torch.zeros(window * n_features, dtype=torch.float64))
        self.register_buffer("ridge_intercept", torch.zeros((), dtype=torch.float64))
        self.register_buffer("logit_coef", torch.zeros(n_features + 2, _N_CLASSES, dtype=torch.float64))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        # Row-wise products and sums, not ``@``: a BLAS gemv/gemm may compute
        # the rows of a batch with different kernels by position (a CPU's
        # unrolled main loop vs its tail rows), so a row's last bit would
        # depend on where it sits in the chunk. Seen on an AMD EPYC (MKL): 4 of
        # 64 rows. torch's reduction runs every row through the same loop.
        unit_return = (z.flatten(start_dim=1) * self.ridge_coef).sum(dim=1) + self.ridge_intercept
        design = torch.cat([torch.ones_like(unit_return)[:, None], z[:, -1, :], unit_return[:, None]], dim=1)
        logits = (design[:, None, :] * self.logit_coef.T[None, :, :]).sum(dim=2)
        return logits, unit_return

    def forward_rows(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Row-invariant already (above)."""
        return self.forward(z)


@dataclass(frozen=True, slots=True)
class BaselineFit:
    """Diagnostics of a baseline fit: Newton iterations used and whether the
    gradient norm reached tolerance (a non-converged fit is still the best
    point found, but worth a look)."""

    newton_steps: int
    converged: bool
    final_objective: float


def fit_linear_baseline(
    core: LinearBaselineCore,
    z: npt.NDArray[np.float64],
    y_class: npt.NDArray[np.int64],
    y_unit_return: npt.NDArray[np.float64],
    alpha: float,
) -> BaselineFit:
    """Fit ``core`` in place on standardised training windows ``z [N, W, F]``."""
    n, window, n_features = z.shape
    if n == 0:
        raise ValueError("cannot fit the baseline on zero rows")
    flat = z.reshape(n, window * n_features)

    # -- ridge ---------------------------------------------------------------
    x_mean = flat.mean(axis=0)
    y_mean = float(y_unit_return.mean())
    xc = flat - x_mean
    gram = xc.T @ xc + alpha * np.eye(flat.shape[1])
    coef = np.linalg.solve(gram, xc.T @ (y_unit_return - y_mean))
    intercept = y_mean - float(x_mean @ coef)
    forecast = flat @ coef + intercept

    # -- multinomial logistic by Newton ---------------------------------------
    design = np.concatenate([np.ones((n, 1)), z[:, -1, :], forecast[:, None]], axis=1)
    onehot = np.zeros((n, _N_CLASSES))
    onehot[np.arange(n), y_class] = 1.0
    theta, steps, converged, objective = _newton_multinomial(design, onehot, alpha)

    with torch.no_grad():
        core.ridge_coef.copy_(torch.from_numpy(coef))
        core.ridge_intercept.fill_(intercept)
        core.logit_coef.copy_(torch.from_numpy(theta))
    return BaselineFit(newton_steps=steps, converged=converged, final_objective=objective)


def _objective(
    design: npt.NDArray[np.float64], onehot: npt.NDArray[np.float64], theta: npt.NDArray[np.float64], alpha: float
) -> tuple[float, npt.NDArray[np.float64]]:
    """Penalised negative log-likelihood and the softmax probabilities."""
    logits = design @ theta
    logits -= logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits).sum(axis=1, keepdims=True))
    log_p = logits - log_norm
    nll = -float((onehot * log_p).sum())
    return nll + 0.5 * alpha * float((theta * theta).sum()), np.exp(log_p)


def _newton_multinomial(
    design: npt.NDArray[np.float64], onehot: npt.NDArray[np.float64], alpha: float
) -> tuple[npt.NDArray[np.float64], int, bool, float]:
    n, d = design.shape
    k = onehot.shape[1]
    theta = np.zeros((d, k))
    objective, probs = _objective(design, onehot, theta, alpha)
    tolerance = 1e-9 * n
    for step in range(1, _MAX_NEWTON_STEPS + 1):
        grad = design.T @ (probs - onehot) + alpha * theta  # [d, k]
        if float(np.abs(grad).max()) < tolerance:
            return theta, step - 1, True, objective
        # Hessian blocks H[a, b] = X' diag(p_a (delta_ab - p_b)) X + alpha delta_ab I,
        # vectorised class-major (index a * d + j).
        hess = np.empty((k * d, k * d))
        for a in range(k):
            for b in range(k):
                weight = probs[:, a] * ((1.0 if a == b else 0.0) - probs[:, b])
                block = (design * weight[:, None]).T @ design
                if a == b:
                    block += alpha * np.eye(d)
                hess[a * d : (a + 1) * d, b * d : (b + 1) * d] = block
        g_vec = grad.T.reshape(-1)
        direction = np.linalg.solve(hess, g_vec).reshape(k, d).T
        decrease = float(g_vec @ direction.T.reshape(-1))
        t = 1.0
        while True:
            candidate = theta - t * direction
            cand_objective, cand_probs = _objective(design, onehot, candidate, alpha)
            if cand_objective <= objective - 1e-4 * t * decrease or t < 1e-10:
                break
            t *= 0.5
        if cand_objective > objective:
            return theta, step - 1, False, objective
        theta, objective, probs = candidate, cand_objective, cand_probs
    return theta, _MAX_NEWTON_STEPS, False, objective
