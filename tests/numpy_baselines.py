"""Independent NumPy implementations of the baselines of docs/algorithms.md.

Float64, explicit loops over groups, written from the reference text; the
subproblem solvers here (bisection for the group LASSO, the closed form for
L1, plain proximal gradient) share no code with keras_rmda. Groups are
given as in numpy_reference: `kind` ("group_lasso", "l1", "nuclear") and,
for the group LASSO, the axis that indexes the groups (`kept_axis`).

Every diagonal subproblem is  argmin_x ½ xᵀ diag(d) x − ⟨da, x⟩ + τ ψ(x).
"""

import numpy as np

from numpy_reference import prox_l1, prox_nuclear, make_prox


def _groups(x, kept_axis):
    """The groups of x as rows of a 2-D view (a copy)."""
    return np.moveaxis(x, kept_axis, 0).reshape(x.shape[kept_axis], -1)


def _ungroup(rows, shape, kept_axis):
    moved_shape = (shape[kept_axis],) + tuple(s for a, s in enumerate(shape) if a != kept_axis)
    return np.moveaxis(rows.reshape(moved_shape), 0, kept_axis)


def solve_exact(d, da, tau, kind, kept_axis):
    """The exact minimiser: bisection on each group's norm, closed form for L1."""
    if kind == "l1" or (kind == "group_lasso" and kept_axis is None):
        a = da / d
        return np.sign(a) * np.maximum(np.abs(a) - tau / d, 0.0)
    assert kind == "group_lasso"
    d_rows, da_rows = _groups(d, kept_axis), _groups(da, kept_axis)
    out = np.zeros_like(da_rows)
    kappa = tau * np.sqrt(da_rows.shape[1])
    for k in range(da_rows.shape[0]):
        dg, ag = d_rows[k], da_rows[k]
        if np.linalg.norm(ag) <= kappa:
            continue
        # ‖ag / (dg·r + κ)‖ − 1 is decreasing in r: positive at 0, ≤ 0 at hi.
        lo, hi = 0.0, np.linalg.norm(ag) / dg.min()
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if np.linalg.norm(ag / (dg * mid + kappa)) > 1.0:
                lo = mid
            else:
                hi = mid
        r = 0.5 * (lo + hi)
        out[k] = r * ag / (dg * r + kappa)
    return _ungroup(out, d.shape, kept_axis)


def solve_proximal_gradient(d, da, tau, kind, kept_axis, x0, max_steps, tol):
    """Proximal gradient, step 1/max(d) per group (per entry for L1, per variable
    for the nuclear norm), provably zero groups held at 0, relative-change stop."""
    singletons = kind == "l1" or (kind == "group_lasso" and kept_axis is None)
    if singletons:
        lipschitz = d.copy()
        zero = np.abs(da) <= tau
    elif kind == "group_lasso":
        rows = _groups(d, kept_axis)
        lipschitz = _ungroup(np.repeat(rows.max(axis=1, keepdims=True), rows.shape[1], 1),
                             d.shape, kept_axis)
        norms = np.linalg.norm(_groups(da, kept_axis), axis=1, keepdims=True)
        weight = np.sqrt(rows.shape[1])
        zero_rows = np.repeat(norms <= tau * weight, rows.shape[1], 1)
        zero = _ungroup(zero_rows.astype(float), d.shape, kept_axis) > 0.5
    else:
        lipschitz = np.full_like(d, d.max())
        zero = np.zeros(d.shape, dtype=bool)
    x = np.where(zero, 0.0, x0)
    for _ in range(max_steps):
        y = x - (d * x - da) / lipschitz
        step = 1.0 / lipschitz
        if singletons:
            x_new = prox_l1(y, tau * step)
        elif kind == "group_lasso":
            y_rows, s_rows = _groups(y, kept_axis), _groups(step, kept_axis)
            thresholds = tau * s_rows[:, :1] * np.sqrt(y_rows.shape[1])
            norms = np.linalg.norm(y_rows, axis=1, keepdims=True)
            keep = norms > thresholds
            factors = np.where(keep, 1.0 - thresholds / np.where(keep, norms, 1.0), 0.0)
            new_rows = factors * y_rows
            x_new = _ungroup(new_rows, d.shape, kept_axis)
        else:
            x_new = prox_nuclear(y, tau * step.flat[0])
        x_new = np.where(zero, 0.0, x_new)
        stop = np.linalg.norm(x_new - x) <= tol * np.linalg.norm(x_new)
        x = x_new
        if stop:
            break
    return x


def subproblem_residual(x, d, da, tau, kind, kept_axis):
    """Largest relative violation of the optimality conditions over groups.

    For a group (an entry for L1) with weight w: x_g = 0 needs
    ‖da_g‖ ≤ τw; x_g ≠ 0 needs d_g x_g − da_g + τ w x_g/‖x_g‖ = 0. Each
    violation is divided by ‖da_g‖ + τw.
    """
    if kind == "l1" or (kind == "group_lasso" and kept_axis is None):
        rows_x, rows_d, rows_da = (np.reshape(v, (-1, 1)) for v in (x, d, da))
    else:
        rows_x, rows_d, rows_da = (_groups(v, kept_axis) for v in (x, d, da))
    worst = 0.0
    weight = np.sqrt(rows_x.shape[1])
    for xg, dg, ag in zip(rows_x, rows_d, rows_da):
        norm_x, scale = np.linalg.norm(xg), np.linalg.norm(ag) + tau * weight
        if norm_x == 0.0:
            violation = max(0.0, np.linalg.norm(ag) - tau * weight)
        else:
            violation = np.linalg.norm(dg * xg - ag + tau * weight * xg / norm_x)
        worst = max(worst, violation / scale)
    return worst


class ProxSGD:
    def __init__(self, w, momentum, strength, prox):
        self.c, self.lam, self.prox = momentum, strength, prox
        self.w = np.array(w, dtype=np.float64)
        self.m = np.zeros_like(self.w)

    def step(self, g, lr):
        self.m = (1.0 - self.c) * self.m + self.c * g
        self.w = self.prox(self.w - lr * self.m, lr * self.lam)
        return self.w


class _Adam:
    """Adam moments, then argmin ½‖x − Ŵ‖²_D + ηλψ(x), D = √v̂ + ε."""

    def __init__(self, w, strength, kind, kept_axis, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
        self.lam, self.kind, self.kept_axis = strength, kind, kept_axis
        self.b1, self.b2, self.eps = beta_1, beta_2, epsilon
        self.w = np.array(w, dtype=np.float64)
        self.m, self.v, self.t = np.zeros_like(self.w), np.zeros_like(self.w), 0

    def step(self, g, lr):
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        m_hat, v_hat = self.m / (1 - self.b1**self.t), self.v / (1 - self.b2**self.t)
        d = np.sqrt(v_hat) + self.eps
        w_hat = self.w - lr * m_hat / d  # the Adam step
        self.subproblem = (d, d * w_hat, lr * self.lam)
        self.w = self.solve(*self.subproblem)
        return self.w


class ProxGen(_Adam):
    def __init__(self, w, strength, kind, kept_axis, max_steps=100, tol=1e-8, **adam):
        super().__init__(w, strength, kind, kept_axis, **adam)
        self.max_steps, self.tol = max_steps, tol

    def solve(self, d, da, tau):
        return solve_proximal_gradient(d, da, tau, self.kind, self.kept_axis, self.w,
                                       self.max_steps, self.tol)


class ProxSSI(_Adam):
    def __init__(self, w, strength, kind, kept_axis, **adam):
        super().__init__(w, strength, kind, kept_axis, **{"epsilon": 1e-6, **adam})

    def solve(self, d, da, tau):
        return solve_exact(d, da, tau, self.kind, self.kept_axis)


class RAMDA:
    """RAMDA for one variable as docs/algorithms.md states it (W̃ by proximal gradient)."""

    def __init__(self, w, momentum, strength, kind, kept_axis, epsilon=1e-6,
                 max_steps=100, tol=1e-8, epsilon_factor=0.1):
        self.c, self.lam, self.kind, self.kept_axis = momentum, strength, kind, kept_axis
        self.eps, self.max_steps, self.tol, self.factor = epsilon, max_steps, tol, epsilon_factor
        self.w = np.array(w, dtype=np.float64)
        self.reset()

    def reset(self):
        self.w0, self.v, self.u = self.w.copy(), np.zeros_like(self.w), np.zeros_like(self.w)
        self.alpha, self.t = 0.0, 0

    def restart(self):
        self.reset()
        self.eps *= self.factor

    def step(self, g, lr):
        self.t += 1
        s = lr * np.sqrt(self.t)
        self.alpha += s
        self.v += s * g
        self.u += s * g * g
        p = np.cbrt(self.u) + self.eps
        self.subproblem = (p, p * self.w0 - self.v, self.alpha * self.lam)
        d, da, tau = self.subproblem
        self.w_tilde = solve_proximal_gradient(d, da, tau, self.kind, self.kept_axis, da / d,
                                               self.max_steps, self.tol)
        self.w = (1.0 - self.c) * self.w + self.c * self.w_tilde
        return self.w


__all__ = ["ProxSGD", "ProxGen", "ProxSSI", "RAMDA", "make_prox", "solve_exact",
           "solve_proximal_gradient", "subproblem_residual"]
