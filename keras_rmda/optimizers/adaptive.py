"""Adam moments shared by ProxGen and ProxSSI.

Both take the Adam moments m̂, v̂ (bias-corrected) and D = diag(√v̂ + ε), and
then solve the same diagonally weighted subproblem

    W ← argmin_x ⟨m̂, x − W⟩ + (1/2η)(x − W)ᵀ D (x − W) + λψ(x)
      = argmin_x ½‖x − Ŵ‖²_D + ηλψ(x),    Ŵ = W − η·m̂/D

(completing the square), differing only in the solver. Each optimizer
gives `adaptive_proximal_update` its solver `solve(d, da, weights)`, with
`da = D·Ŵ = D·W − η·m̂` (see `inner_solvers`).
"""

from keras import ops

from keras_rmda import _checks
from keras_rmda.optimizers import base


def adaptive_proximal_update(weights, first, second, gradient, *, learning_rate, step,
                             beta_1, beta_2, epsilon, solve):
    r"""One step of ProxGen or ProxSSI on one variable; returns `(W, m, v)`.

    ```
    m ← β₁·m + (1 − β₁)·g;   v ← β₂·v + (1 − β₂)·g²
    m̂ = m/(1 − β₁ᵏ);   v̂ = v/(1 − β₂ᵏ);   D = √v̂ + ε
    W ← solve(D, D·W − η·m̂, W)       (k = `step`, this step's number)
    ```
    """
    first = beta_1 * first + (1.0 - beta_1) * gradient
    second = beta_2 * second + (1.0 - beta_2) * ops.square(gradient)
    first_hat = first / (1.0 - ops.power(beta_1, step))
    second_hat = second / (1.0 - ops.power(beta_2, step))
    d = ops.sqrt(second_hat) + epsilon
    return solve(d, d * weights - learning_rate * first_hat, weights), first, second


class AdaptiveProximalOptimizer(base.ProximalOptimizer):
    """Base class: Adam moments with bias correction.

    A subclass implements `solve(index, d, da, weights, learning_rate)`, the
    argmin of ½xᵀDx − ⟨da, x⟩ + η·λψ(x) for a regularised variable.
    """

    def __init__(self, learning_rate, beta_1, beta_2, epsilon, **kwargs):
        # Checked before the base creates any state.
        beta_1, beta_2 = (
            _checks.number(name, value, minimum=0.0, maximum=1.0, open_maximum=True)
            for name, value in (("beta_1", beta_1), ("beta_2", beta_2))
        )
        epsilon = _checks.number("epsilon", epsilon, minimum=0.0, open_minimum=True)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._first_moments = self.add_slots(variables, "first_moment")
        self._second_moments = self.add_slots(variables, "second_moment")
        self.update_count = self.add_scalar("update_count")

    def begin_step(self, updating):
        # k, this update's number (1 on the first), for the bias correction.
        self.update_count.assign(
            self.advanced(updating, self.update_count + 1.0, self.update_count))

    def update_step(self, gradient, variable, learning_rate):
        target = self.target(gradient, variable)
        if target is None:
            return  # updated with the other variables of its shared groups
        index, dtype = target.index, target.gradient.dtype
        learning_rate = ops.cast(learning_rate, dtype)

        def solve(d, da, weights):
            if not self.regularized(index):
                return da / d  # plain Adam: W − η·m̂/(√v̂ + ε)
            return self.solve(index, d, da, weights, learning_rate)

        weights, first, second = adaptive_proximal_update(
            target.weights,
            self.read(self._first_moments, index),
            self.read(self._second_moments, index),
            target.gradient,
            learning_rate=learning_rate,
            step=ops.cast(self.update_count, dtype),
            beta_1=ops.cast(self.beta_1, dtype),
            beta_2=ops.cast(self.beta_2, dtype),
            epsilon=ops.cast(self.epsilon, dtype),
            solve=solve,
        )
        self.write(self._first_moments, index, first)
        self.write(self._second_moments, index, second)
        self.write_weights(target, weights)

    def solve(self, index, d, da, weights, learning_rate):
        """argmin_x ½xᵀDx − ⟨da, x⟩ + η·λψ(x) for a regularised variable."""
        raise NotImplementedError

    def get_config(self):
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)
        return config
