import keras
from keras import ops

from keras_rmda.optimizers import base
from keras_rmda.optimizers.momentum import NewPointMomentum
from keras_rmda.optimizers.momentum import check_momentum


@keras.saving.register_keras_serializable(package="keras_rmda")
class ProxSGD(NewPointMomentum, base.ProximalOptimizer):
    r"""Proximal SGD with momentum, the baseline RMDA is compared with.

    Per variable, with learning rate η and momentum c:

    ```
    m ← (1 − c)·m + c·g
    W ← prox_{η·λψ}(W − η·m)
    ```

    Every iterate carries exact zeros, but the gradient noise does not
    vanish, so groups near the threshold keep flipping between zero and
    non-zero: proximal SGD does not identify the structure (see
    docs/algorithms.md).

    **Momentum convention.** As in `RMDA`, `momentum` is c, the weight of
    the *new* gradient: 0.1 (the reference setting) is an exponential
    average with decay 0.9, 1.0 is plain proximal SGD.

    Args:
        learning_rate: η, a float ≥ 0, a `LearningRateSchedule`, or a
            callable. Defaults to 0.1.
        momentum: c in (0, 1]. Defaults to 0.1.
        regularizer: `GroupLasso`, `L1`, `NuclearNorm` or None.
        groups: `"auto"` or None; see `keras_rmda.groups`.
        **kwargs: the base optimizer arguments (see `ProximalOptimizer`).

    State: one tensor per variable (m).

    Reference:
        Z.-S. Huang, C.-p. Lee. Training Structured Neural Networks Through
        Manifold Identification and Variance Reduction. ICLR 2022 (the
        ProxSGD baseline). [arXiv:2112.02612](https://arxiv.org/abs/2112.02612)
    """

    def __init__(
        self,
        learning_rate=0.1,
        momentum=0.1,
        regularizer=None,
        groups="auto",
        name="prox_sgd",
        **kwargs,
    ):
        check_momentum(momentum)  # before the base creates any state
        super().__init__(
            learning_rate=learning_rate,
            regularizer=regularizer,
            groups=groups,
            name=name,
            **kwargs,
        )
        self._add_momentum(momentum)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._momenta = self.add_slots(variables, "momentum_buffer")

    def update_step(self, gradient, variable, learning_rate):
        target = self.target(gradient, variable)
        if target is None:
            return  # updated with the other variables of its shared groups
        dtype = target.gradient.dtype
        weights, momentum = prox_sgd_update(
            target.weights,
            self.read(self._momenta, target.index),
            target.gradient,
            learning_rate=ops.cast(learning_rate, dtype),
            momentum=ops.cast(self.momentum, dtype),
            prox=self.prox_map(target.index),
        )
        self.write(self._momenta, target.index, momentum)
        self.write_weights(target, weights)

    def get_config(self):
        config = super().get_config()
        config.update(self._momentum_config())
        return config


def prox_sgd_update(weights, momentum_buffer, gradient, *, learning_rate, momentum, prox):
    r"""One proximal SGD step of one variable; returns the new `(W, m)`.

    ```
    m ← (1 − c)·m + c·g
    W ← prox_{η·λψ}(W − η·m)
    ```
    """
    momentum_buffer = (1.0 - momentum) * momentum_buffer + momentum * gradient
    return prox(weights - learning_rate * momentum_buffer, learning_rate), momentum_buffer
