import keras
from keras import ops

from keras_rmda import _checks
from keras_rmda.optimizers import adaptive
from keras_rmda.optimizers import inner_solvers


@keras.saving.register_keras_serializable(package="keras_rmda")
class ProxSSI(adaptive.AdaptiveProximalOptimizer):
    r"""ProxSSI: Adam step, then a D-weighted proximal map (Deleu & Bengio, 2021).

    Per variable, with learning rate η:

    ```
    m, v, m̂, v̂ as in Adam;   D = diag(√v̂ + ε)
    Ŵ = W − η·m̂/(√v̂ + ε)
    W ← argmin_x ½‖x − Ŵ‖²_D + η·λψ(x)
    ```

    Completing the square shows this is ProxGen's subproblem; only the
    solver (and the default ε) differ. It is solved per group, to
    precision, by a 1-D Newton iteration on the group's norm: with
    κ_g = η·λ·w_g (w_g = √|g|),

    ```
    x_g = 0                          if ‖D_g·Ŵ_g‖₂ ≤ κ_g,
    x_g = r·D_g Ŵ_g / (D_g·r + κ_g)  else, r > 0 the root of
          G(r) = (Σ_{i∈g} (D_i Ŵ_i)² / (D_i r + κ_g)²)^{-1/2} − 1
    ```

    (the stationarity condition D_g(x_g − Ŵ_g) + κ_g·x_g/‖x_g‖ = 0 with
    r = ‖x_g‖). G is increasing and concave in r, so Newton started at
    r₀ = (‖D_g Ŵ_g‖ − κ_g)/max(D_g) ≤ r converges monotonically; it runs at
    most `max_newton_steps` iterations and stops once every group's
    |G(r)| ≤ `newton_tol`. L1 (and singleton groups) is closed form per
    entry: x = sign(Ŵ)·max(|Ŵ| − ηλ/D, 0). The nuclear norm has no such
    form: it falls back to ProxGen's proximal-gradient solver with step
    1/max(D) (`max_newton_steps` iterations, then the same stopping rule
    with `newton_tol`).

    Args:
        learning_rate: η, a float ≥ 0, a `LearningRateSchedule`, or a
            callable. Defaults to 1e-3.
        beta_1, beta_2: Adam's decay rates in [0, 1). Defaults 0.9, 0.999.
        epsilon: ε > 0 added to √v̂. Defaults to 1e-6.
        regularizer: `GroupLasso`, `L1`, `NuclearNorm` or None.
        groups: `"auto"` or None; see `keras_rmda.groups`.
        max_newton_steps: iteration cap of the Newton solve (≥ 1). Defaults
            to 20.
        newton_tol: tolerance on |G(r)| (≥ 0). Defaults to 1e-6.
        **kwargs: the base optimizer arguments (see `ProximalOptimizer`).

    State: two tensors per variable (m, v) and the update count k (one scalar).

    Reference:
        T. Deleu, Y. Bengio. Structured Sparsity Inducing Adaptive
        Optimizers for Deep Learning. [arXiv:2102.03869](https://arxiv.org/abs/2102.03869)
    """

    def __init__(
        self,
        learning_rate=1e-3,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-6,
        regularizer=None,
        groups="auto",
        max_newton_steps=20,
        newton_tol=1e-6,
        name="prox_ssi",
        **kwargs,
    ):
        max_newton_steps = _checks.integer("max_newton_steps", max_newton_steps, minimum=1)
        newton_tol = _checks.number("newton_tol", newton_tol, minimum=0.0)
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
        self.max_newton_steps = max_newton_steps
        self.newton_tol = newton_tol

    def solve(self, index, d, da, weights, learning_rate):
        groups = self._variable_groups[index]
        axes = inner_solvers.separable_axes(self.regularizer, groups, len(da.shape))
        zero_threshold = inner_solvers.zero_thresholds(self.regularizer, groups)
        if zero_threshold is None:  # the nuclear norm: no closed-form block test
            return inner_solvers.proximal_gradient_with_zero_test(
                d,
                da,
                learning_rate,
                self.regularizer,
                groups,
                self.prox_map(index),
                da / d,
                self.max_newton_steps,
                self.newton_tol,
            )
        threshold = learning_rate * ops.cast(zero_threshold, d.dtype)
        if not axes:
            return inner_solvers.l1_diagonal(d, da, threshold)
        return inner_solvers.group_lasso_newton(
            d, da, threshold, axes, self.max_newton_steps, self.newton_tol
        )

    def get_config(self):
        config = super().get_config()
        config.update(max_newton_steps=self.max_newton_steps, newton_tol=self.newton_tol)
        return config
