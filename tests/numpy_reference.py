"""An independent NumPy implementation of docs/algorithms.md, for golden tests.

Written from the reference text, in float64, with explicit loops over
groups; it shares no code with keras_rmda.
"""

import numpy as np


def prox_group_lasso(z, tau, kept_axis):
    """Block soft-thresholding, one group per index along `kept_axis`."""
    moved = np.moveaxis(z, kept_axis, 0)
    out = np.empty_like(moved)
    group_size = moved[0].size
    for k in range(moved.shape[0]):
        norm = np.sqrt(np.sum(moved[k] ** 2))
        threshold = tau * np.sqrt(group_size)
        out[k] = 0.0 if norm <= threshold else (1.0 - threshold / norm) * moved[k]
    return np.moveaxis(out, 0, kept_axis)


def prox_l1(z, tau):
    return np.sign(z) * np.maximum(np.abs(z) - tau, 0.0)


def prox_nuclear(z, tau):
    matrix = z.reshape(-1, z.shape[-1])
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    return (u @ np.diag(np.maximum(s - tau, 0.0)) @ vt).reshape(z.shape)


def make_prox(kind, kept_axis=None):
    if kind == "group_lasso":
        if kept_axis is None:  # elementwise groups: |g| = 1
            return prox_l1
        return lambda z, tau: prox_group_lasso(z, tau, kept_axis)
    if kind == "l1":
        return prox_l1
    if kind == "nuclear":
        return prox_nuclear
    raise ValueError(kind)


class RMDA:
    """RMDA for one variable, exactly as docs/algorithms.md states it."""

    def __init__(self, w, momentum, strength, prox):
        self.c, self.lam, self.prox = momentum, strength, prox
        self.w = np.array(w, dtype=np.float64)
        self.restart()

    def restart(self):
        self.w0 = self.w.copy()
        self.v = np.zeros_like(self.w)
        self.alpha = 0.0
        self.t = 0

    def step(self, g, lr):
        self.t += 1
        beta = np.sqrt(self.t)
        s = lr * beta
        self.alpha += s
        self.v += s * g
        self.w_tilde = self.prox(self.w0 - self.v / beta, self.alpha / beta * self.lam)
        self.w = (1.0 - self.c) * self.w + self.c * self.w_tilde
        return self.w
