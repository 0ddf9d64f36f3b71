import keras
from keras import ops

from keras_rmda.optimizers import dual_averaging


@keras.saving.register_keras_serializable(package="keras_rmda")
class RMDA(dual_averaging.DualAveragingOptimizer):
    r"""Regularized Modernized Dual Averaging (Huang & Lee, ICLR 2022).

    Minimises `E[f(W)] + λψ(W)` for a regulariser ψ with a cheap proximal
    map, and identifies the structure ψ induces (whole zero groups) after
    finitely many steps. Per variable, with learning rate η and momentum c:

    ```
    t  ← t + 1;   β = √t;   s = η·β;   α ← α + s
    V  ← V + s·g
    W̃  = prox_{(α/β)·λψ}(W⁰ − V/β)
    W  ← (1 − c)·W + c·W̃
    ```

    W⁰ is the weights at the start of the current stage, V the weighted sum
    of gradients; a stage starts on the first step and at every `restart()`
    (W⁰ ← W, V ← 0, α ← 0, t ← 0). A learning-rate schedule enters as
    `s = η_t·β`.

    **Momentum convention.** `momentum` is c, the weight of the *new* point:
    0.1 is heavy momentum (the paper's default), 1.0 is none. This is the
    opposite of `keras.optimizers.SGD(momentum=0.9)`; a value in [0.9, 1)
    triggers a warning.

    **Where the structure is.** The prox point W̃ has exact zero groups from
    the step where the prox zeroes them; W is an average and only reaches
    them geometrically unless c = 1. `prox_point(variable)` recomputes W̃
    from the state at no memory cost, and with `finalize=True` (default) the
    model is set to W̃ when `fit` ends.

    Args:
        learning_rate: η, a float ≥ 0, a `LearningRateSchedule`, or a
            callable. Defaults to 0.1.
        momentum: c in (0, 1], the weight of the new point. Defaults to 0.1.
        regularizer: `GroupLasso`, `L1`, `NuclearNorm` or None.
        groups: `"auto"` or None; see `keras_rmda.groups`.
        finalize: set the model to its prox point when `fit` ends.
        **kwargs: the base optimizer arguments (`clipnorm`, `clipvalue`,
            `global_clipnorm`, `weight_decay` (coupled L2), `loss_scale_factor`,
            `gradient_accumulation_steps`, `name`); `use_ema` is rejected.

    State: two tensors per variable (W⁰, V); t and α, one scalar each for
    the optimizer; a fingerprint of the weights it last wrote (see
    `DualAveragingOptimizer`).

    Reference:
        Z.-S. Huang, C.-p. Lee. Training Structured Neural Networks Through
        Manifold Identification and Variance Reduction. ICLR 2022.
        [arXiv:2112.02612](https://arxiv.org/abs/2112.02612)
    """

    def __init__(
        self,
        learning_rate=0.1,
        momentum=0.1,
        regularizer=None,
        groups="auto",
        finalize=True,
        name="rmda",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            momentum=momentum,
            regularizer=regularizer,
            groups=groups,
            finalize=finalize,
            name=name,
            **kwargs,
        )

    def update_step(self, gradient, variable, learning_rate):
        target = self.target(gradient, variable)
        if target is None:
            return  # updated with the other variables of its shared groups
        stage = self.stage()
        initial_point, gradient_sum = self.stage_state(target, stage.starts)
        dtype = target.gradient.dtype
        # η is the stage's: the same `self.learning_rate` Keras passes, read
        # once per step.
        weights, gradient_sum = rmda_update(
            target.weights,
            initial_point,
            gradient_sum,
            target.gradient,
            learning_rate=ops.cast(stage.learning_rate, dtype),
            momentum=ops.cast(stage.momentum, dtype),
            step=stage.step,
            alpha=stage.alpha,
            prox=self.prox_map(target.index),
        )
        self.write(self._gradient_sums, target.index, gradient_sum)
        self.write_weights(target, weights)

    def dual_prox(self, index, step, alpha):
        """W̃ = prox_{(α/β)·λψ}(W⁰ − V/β), β = √t, from the stored state."""
        beta = ops.sqrt(step)
        sums = self.read(self._gradient_sums, index)
        z = self.read(self._initial_points, index) - sums * ops.cast(1.0 / beta, sums.dtype)
        return self.prox_map(index)(z, alpha / beta)


def rmda_update(weights, initial_point, gradient_sum, gradient, *, learning_rate,
                momentum, step, alpha, prox):
    r"""One RMDA step of one variable; returns the new `(W, V)`.

    `step` and `alpha` are the stage's t and α *after* this step's
    increments (t ← t + 1, α ← α + η·√t, shared by all variables);
    `prox(z, τ)` is the prox of τ·λψ. With β = √t and s = η·β:

    ```
    V  ← V + s·g
    W̃  = prox_{(α/β)·λψ}(W⁰ − V/β)
    W  ← (1 − c)·W + c·W̃
    ```
    """
    beta = ops.sqrt(step)
    gradient_sum = gradient_sum + (learning_rate * ops.cast(beta, gradient.dtype)) * gradient
    # Times 1/β rather than over β: XLA recomputes a product in each fused
    # loop that needs it instead of writing it to memory.
    inverse_beta = ops.cast(1.0 / beta, gradient.dtype)
    prox_point = prox(initial_point - gradient_sum * inverse_beta, alpha / beta)
    # (1 − c)·W + c·W̃, not W + c·(W̃ − W): at c = 1 it is W̃ to the bit.
    return (1.0 - momentum) * weights + momentum * prox_point, gradient_sum
