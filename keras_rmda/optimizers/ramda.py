import functools

import keras
from keras import ops

from keras_rmda import _checks
from keras_rmda.optimizers import dual_averaging
from keras_rmda.optimizers import inner_solvers


@keras.saving.register_keras_serializable(package="keras_rmda")
class RAMDA(dual_averaging.DualAveragingOptimizer):
    r"""Regularized Adaptive Modernized Dual Averaging (Huang & Lee, NeurIPS 2024).

    RMDA with a diagonal preconditioner built from the weighted squared
    gradients. Per variable, with learning rate η and momentum c:

    ```
    t ← t + 1;   β = √t;   s = η·β;   α ← α + s
    V ← V + s·g;   U ← U + s·g²;   P = U^{1/3} + ε
    W̃ = argmin_x ⟨V, x⟩ + ½(x − W⁰)ᵀ diag(P) (x − W⁰) + α·λψ(x)
    W ← (1 − c)·W + c·W̃
    ```

    A stage starts on the first step and at every `restart()`: W⁰ ← W,
    V ← 0, U ← 0, α ← 0, t ← 0, and `restart()` also shrinks
    ε ← `restart_epsilon_factor`·ε.

    **The subproblem.** Completing the square it is
    `argmin_x ½‖x − (W⁰ − V/P)‖²_P + αλψ(x)`. For the group LASSO a group
    is exactly zero at the solution iff `‖P_g ⊙ W⁰_g − V_g‖₂ ≤ α·λ·w_g`
    (w_g = √|g|; per entry for L1); those groups are set to zero and
    skipped. The rest is solved inexactly by proximal gradient, started at
    W⁰ − V/P, with step 1/L, L = max(P) per group (per entry for L1, per
    variable for the nuclear norm): at most `max_inner_steps` iterations,
    stopping once ‖x_{k+1} − x_k‖₂ ≤ `inner_tol`·‖x_{k+1}‖₂. The solve is
    a deterministic function of the state, so `prox_point(variable)`
    recomputes exactly the W̃ of the last step at no memory cost.

    **Momentum convention.** As in `RMDA`: c is the weight of the new point
    (0.1 heavy momentum, 1.0 none).

    Args:
        learning_rate: η, a float ≥ 0, a `LearningRateSchedule`, or a
            callable. Defaults to 1e-2.
        momentum: c in (0, 1]. Defaults to 0.1.
        epsilon: ε > 0 added to U^{1/3}. Defaults to 1e-6.
        regularizer: `GroupLasso`, `L1`, `NuclearNorm` or None.
        groups: `"auto"` or None; see `keras_rmda.groups`.
        max_inner_steps: iteration cap of the inner solver (≥ 1). Defaults
            to 100.
        inner_tol: relative-change tolerance (≥ 0). Defaults to 1e-8.
        restart_epsilon_factor: factor in (0, 1] applied to ε at every
            `restart()`. Defaults to 0.1.
        finalize: set the model to its prox point when `fit` ends.
        **kwargs: the base optimizer arguments (see `ProximalOptimizer`).

    State: three tensors per variable (W⁰, V, U); t, α and ε, one scalar
    each for the optimizer; a fingerprint of the weights it last wrote.

    Reference:
        Z.-S. Huang, C.-p. Lee. Regularized Adaptive Momentum Dual Averaging
        with an Efficient Inexact Subproblem Solver for Training Structured
        Neural Networks. NeurIPS 2024.
        [arXiv:2403.14398](https://arxiv.org/abs/2403.14398)
    """

    def __init__(
        self,
        learning_rate=1e-2,
        momentum=0.1,
        epsilon=1e-6,
        regularizer=None,
        groups="auto",
        max_inner_steps=100,
        inner_tol=1e-8,
        restart_epsilon_factor=0.1,
        finalize=True,
        name="ramda",
        **kwargs,
    ):
        epsilon = _checks.number("epsilon", epsilon, minimum=0.0, open_minimum=True)
        max_inner_steps = _checks.integer("max_inner_steps", max_inner_steps, minimum=1)
        inner_tol = _checks.number("inner_tol", inner_tol, minimum=0.0)
        factor = _checks.number(
            "restart_epsilon_factor", restart_epsilon_factor,
            minimum=0.0, maximum=1.0, open_minimum=True,
        )
        super().__init__(
            learning_rate=learning_rate,
            momentum=momentum,
            regularizer=regularizer,
            groups=groups,
            finalize=finalize,
            name=name,
            **kwargs,
        )
        self.max_inner_steps = max_inner_steps
        self.inner_tol = inner_tol
        self.restart_epsilon_factor = factor
        self._epsilon = self.add_scalar("epsilon", epsilon, dtype=keras.backend.floatx())

    @property
    def epsilon(self):
        """ε of the current stage (a variable)."""
        return self._epsilon

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._squared_sums = self.add_slots(variables, "squared_gradient_sum")
        self._compiled_prox_points = {}

    def restart(self):
        """New stage for every variable (W⁰ ← W, V, U, α, t ← 0) and ε ← factor·ε."""
        if not self.built:
            return
        super().restart()
        for squared_sums in self._squared_sums:
            squared_sums.assign(ops.zeros(squared_sums.shape, squared_sums.dtype))
        self._epsilon.assign(self._epsilon * self.restart_epsilon_factor)

    def update_step(self, gradient, variable, learning_rate):
        target = self.target(gradient, variable)
        if target is None:
            return  # updated with the other variables of its shared groups
        index, dtype = target.index, target.gradient.dtype
        stage = self.stage()
        initial_point, gradient_sum = self.stage_state(target, stage.starts)
        squared_sum = ops.where(stage.starts, 0.0, self.read(self._squared_sums, index))
        weights, gradient_sum, squared_sum = ramda_update(
            target.weights,
            initial_point,
            gradient_sum,
            squared_sum,
            target.gradient,
            # η read once per step (the `self.learning_rate` Keras passes).
            learning_rate=ops.cast(stage.learning_rate, dtype),
            momentum=ops.cast(stage.momentum, dtype),
            step=stage.step,
            alpha=stage.alpha,
            subproblem=functools.partial(self._dual_point, index),
        )
        self.write(self._gradient_sums, index, gradient_sum)
        self.write(self._squared_sums, index, squared_sum)
        self.write_weights(target, weights)

    def prox_point(self, variable):
        """W̃ recomputed from the state (see `DualAveragingOptimizer.prox_point`).

        Called eagerly on TensorFlow it runs as one compiled function per
        variable, so the inner solver's loop does not run op by op.
        """
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            if tf.executing_eagerly():
                index = self.variable_index(variable)
                compiled = self._compiled_prox_points.get(index)
                if compiled is None:
                    compiled = tf.function(
                        functools.partial(super().prox_point, variable),
                        jit_compile=False,
                        autograph=False,
                    )
                    self._compiled_prox_points[index] = compiled
                return compiled()
        return super().prox_point(variable)

    def dual_prox(self, index, step, alpha):
        return self._dual_point(
            index, self.read(self._initial_points, index), self.read(self._gradient_sums, index),
            self.read(self._squared_sums, index), alpha,
        )

    def _dual_point(self, index, initial_point, sums, squared_sums, alpha):
        """W̃ = argmin_x ⟨V, x⟩ + ½(x − W⁰)ᵀ diag(P) (x − W⁰) + α·λψ(x)."""
        dtype = sums.dtype
        preconditioner = ops.power(squared_sums, 1.0 / 3.0) + ops.cast(self._epsilon, dtype)
        da = preconditioner * initial_point - sums
        unregularized_minimum = da / preconditioner
        if not self.regularized(index):
            return unregularized_minimum
        return inner_solvers.proximal_gradient_with_zero_test(
            preconditioner,
            da,
            ops.cast(alpha, dtype),
            self.regularizer,
            self._variable_groups[index],
            self.prox_map(index),
            unregularized_minimum,
            self.max_inner_steps,
            self.inner_tol,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            epsilon=float(ops.convert_to_numpy(self._epsilon)),
            max_inner_steps=self.max_inner_steps,
            inner_tol=self.inner_tol,
            restart_epsilon_factor=self.restart_epsilon_factor,
        )
        return config


def ramda_update(weights, initial_point, gradient_sum, squared_sum, gradient, *,
                 learning_rate, momentum, step, alpha, subproblem):
    r"""One RAMDA step of one variable; returns the new `(W, V, U)`.

    `step` and `alpha` are the stage's t and α after this step's
    increments; `subproblem(W⁰, V, U, α)` returns W̃ (see `RAMDA`).

    ```
    s = η·√t;   V ← V + s·g;   U ← U + s·g²
    W̃ = argmin_x ⟨V, x⟩ + ½(x − W⁰)ᵀ diag(U^{1/3} + ε) (x − W⁰) + α·λψ(x)
    W ← (1 − c)·W + c·W̃
    ```
    """
    scale = learning_rate * ops.cast(ops.sqrt(step), gradient.dtype)
    gradient_sum = gradient_sum + scale * gradient
    squared_sum = squared_sum + scale * ops.square(gradient)
    prox_point = subproblem(initial_point, gradient_sum, squared_sum, alpha)
    return (1.0 - momentum) * weights + momentum * prox_point, gradient_sum, squared_sum
