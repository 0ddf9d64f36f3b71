"""Adam moments shared by ProxGen and ProxSSI.

Both take the Adam moments m̂, v̂ (bias-corrected) and D = diag(√v̂ + ε), and
then solve the same diagonally weighted subproblem

    W ← argmin_x ⟨m̂, x − W⟩ + (1/2η)(x − W)ᵀ D (x − W) + λψ(x)
      = argmin_x ½‖x − Ŵ‖²_D + ηλψ(x),    Ŵ = W − η·m̂/D

(completing the square), differing only in the solver. A subclass
implements `solve(index, variable, d, da, learning_rate)` with
`da = D·Ŵ = D·W − η·m̂` (see `inner_solvers`).
"""

from keras import ops

from keras_rmda import _checks

from keras_rmda.optimizers import base


class AdaptiveProximalOptimizer(base.ProximalOptimizer):
    """Base class: Adam moments with bias correction, one step count per variable.

    The step count is per variable so that a step skipped for a non-finite
    gradient leaves the bias correction untouched too.
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
        self._first_moments, self._second_moments = self.add_optimizer_variables(
            variables, ["first_moment", "second_moment"]
        )
        self._moment_steps = self.add_table([()] * len(variables), "moment_steps")

    def update_rule(self, index, variable, gradient, learning_rate):
        dtype = variable.dtype
        step = self._moment_steps[index].read() + 1.0
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        first = beta_1 * self._first_moments[index] + (1.0 - beta_1) * gradient
        second = beta_2 * self._second_moments[index] + (1.0 - beta_2) * ops.square(gradient)
        step_in_dtype = ops.cast(step, dtype)
        first_hat = first / (1.0 - ops.power(beta_1, step_in_dtype))
        second_hat = second / (1.0 - ops.power(beta_2, step_in_dtype))
        d = ops.sqrt(second_hat) + ops.cast(self.epsilon, dtype)
        da = d * variable - learning_rate * first_hat
        if self.regularized(index):
            new_weights = self.solve(index, variable, d, da, learning_rate)
        else:
            new_weights = da / d  # plain Adam: W − η·m̂/(√v̂ + ε)
        return new_weights, [
            (self._first_moments[index], first),
            (self._second_moments[index], second),
            (self._moment_steps[index], step),
        ]

    def solve(self, index, variable, d, da, learning_rate):
        """argmin_x ½xᵀDx − ⟨da, x⟩ + η·λψ(x) for a regularised variable."""
        raise NotImplementedError

    def get_config(self):
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)
        return config

