import keras
from keras import ops

from keras_rmda import _checks
from keras_rmda.optimizers import adaptive
from keras_rmda.optimizers import inner_solvers


@keras.saving.register_keras_serializable(package="keras_rmda")
class ProxGen(adaptive.AdaptiveProximalOptimizer):
    r"""ProxGen run as "ProxAdamW" (Yun, Lozano & Yang, NeurIPS 2021).

    Adam moments with bias correction, then an inexact preconditioned
    proximal step. Per variable, with learning rate η:

    ```
    m ← β₁·m + (1 − β₁)·g;   v ← β₂·v + (1 − β₂)·g²;   k ← k + 1
    m̂ = m/(1 − β₁ᵏ);   v̂ = v/(1 − β₂ᵏ);   D = diag(√v̂ + ε)
    W ← argmin_x ⟨m̂, x − W⟩ + (1/2η)(x − W)ᵀ D (x − W) + λψ(x)
    ```

    **The inner solver.** Multiplied by η the subproblem is
    `½xᵀDx − ⟨D·W − η·m̂, x⟩ + η·λψ(x)`; it is solved by proximal-gradient
    steps started at W,

    ```
    x ← prox_{(η/L)·λψ}(x − (D·(x − W) + η·m̂)/L),    L = max(D over a block)
    ```

    where a block is one group for the group LASSO (the authors' code: step
    1/max(D_g) per group), one entry for L1 (so L1 is solved exactly in one
    step), and the whole variable for the nuclear norm. At most
    `max_inner_steps` iterations; it stops early once the relative change
    ‖x_{k+1} − x_k‖₂ ≤ `inner_tol`·‖x_{k+1}‖₂. Groups that are provably zero
    at the solution are set to zero and skipped: completing the square, the
    gradient of the smooth part at x_g = 0 is η·m̂_g − D_g·W_g, so

    ```
    x_g = 0 is optimal  ⇔  ‖D_g·W_g/η − m̂_g‖₂ ≤ λ·w_g       (w_g = √|g|)
    ```

    (per entry for L1: |D·W/η − m̂| ≤ λ). Unregularised variables take the
    plain Adam step.

    Args:
        learning_rate: η, a float ≥ 0, a `LearningRateSchedule`, or a
            callable. Defaults to 1e-3.
        beta_1, beta_2: Adam's decay rates in [0, 1). Defaults 0.9, 0.999.
        epsilon: ε > 0 added to √v̂. Defaults to 1e-8.
        regularizer: `GroupLasso`, `L1`, `NuclearNorm` or None.
        groups: `"auto"` or None; see `keras_rmda.groups`.
        max_inner_steps: iteration cap of the inner solver (≥ 1). Defaults
            to 100.
        inner_tol: relative-change tolerance (≥ 0). Defaults to 1e-8.
        **kwargs: the base optimizer arguments (see `ProximalOptimizer`).

    State: two tensors per variable (m, v) and the update count k (one scalar).

    Reference:
        J. Yun, A. C. Lozano, E. Yang. Adaptive Proximal Gradient Methods
        for Structured Neural Networks. NeurIPS 2021.
    """

    def __init__(
        self,
        learning_rate=1e-3,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        regularizer=None,
        groups="auto",
        max_inner_steps=100,
        inner_tol=1e-8,
        name="prox_gen",
        **kwargs,
    ):
        max_inner_steps = _checks.integer("max_inner_steps", max_inner_steps, minimum=1)
        inner_tol = _checks.number("inner_tol", inner_tol, minimum=0.0)
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            regularizer=regularizer,
            groups=groups,
            name=name,
            **kwargs,
        )
        self.max_inner_steps = max_inner_steps
        self.inner_tol = inner_tol

    def solve(self, index, d, da, weights, learning_rate):
        # Proximal gradient started at W.
        return inner_solvers.proximal_gradient_with_zero_test(
            d,
            da,
            learning_rate,
            self.regularizer,
            self._variable_groups[index],
            self.prox_map(index),
            ops.convert_to_tensor(weights),
            self.max_inner_steps,
            self.inner_tol,
        )

    def get_config(self):
        config = super().get_config()
        config.update(max_inner_steps=self.max_inner_steps, inner_tol=self.inner_tol)
        return config
