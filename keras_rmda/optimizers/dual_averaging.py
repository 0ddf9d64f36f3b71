"""Stage plumbing shared by the dual-averaging optimizers (RMDA, RAMDA).

Per variable: W⁰ (the stage's starting point), V (the weighted gradient
sum), t (steps in the stage) and α (the sum of step weights). A new stage
starts for all variables at `restart()`, and for one variable on its first
step (t = 0) or when its weights were changed from outside since the
optimizer last wrote them (`set_weights`, loading weights after build): the
dual average would otherwise pull them back towards the old W⁰.
"""

from keras import ops

from keras_rmda.optimizers import base
from keras_rmda.optimizers import tables
from keras_rmda.optimizers.momentum import NewPointMomentum
from keras_rmda.optimizers.momentum import check_momentum


class DualAveragingOptimizer(NewPointMomentum, base.ProximalOptimizer):
    """Base class holding momentum c, W⁰, V, t, α, `restart()` and `prox_point`.

    Subclasses implement `dual_prox(index, variable, step, alpha, sums)`: the
    prox point W̃ from the (possibly just updated) state, and `update_rule`
    (or `slot_rule` and `weight_rule`, as RMDA does).
    """

    def __init__(self, learning_rate, momentum, **kwargs):
        check_momentum(momentum)  # before the base creates any state
        super().__init__(learning_rate=learning_rate, **kwargs)
        self._add_momentum(momentum)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._initial_points, self._gradient_sums = self.add_optimizer_variables(
            variables, ["initial_point", "gradient_sum"]
        )
        # t and α of every variable: one entry each of two shared vectors.
        self._steps = self.add_table([()] * len(variables), "stage_steps")
        self._alphas = self.add_table([()] * len(variables), "alphas")

    # --- stages ----------------------------------------------------------------

    def stage_reset(self, index, variable):
        """`[(slot, value), ...]` that starts a new stage from the current weights."""
        sums = self._gradient_sums[index]
        return [
            (self._initial_points[index], ops.convert_to_tensor(variable)),
            (sums, ops.zeros(sums.shape, sums.dtype)),
            (self._steps[index], ops.zeros(())),
            (self._alphas[index], ops.zeros(())),
        ]

    def restart(self):
        """Start a new stage for every variable: W⁰ ← W, V ← 0, α ← 0, t ← 0.

        Call it eagerly between epochs (the `StageSchedule` callback does);
        works under a distribution strategy.
        """
        if not self.built:
            return
        tables.assign_all(self.assign, [
            pair
            for index, variable in enumerate(self._trainable_variables)
            for pair in self.stage_reset(index, variable)
        ])
        self.record_fingerprints()

    def stage_due(self, index, variable):
        """On the first step of a stage, or after the weights changed from outside."""
        return ops.logical_or(
            ops.equal(self._steps[index].read(), 0.0),
            self.changed_from_outside(index, variable),
        )

    def stage_state(self, index):
        return self._steps[index].read(), self._alphas[index].read(), self._gradient_sums[index]

    # --- the prox point ----------------------------------------------------------

    def dual_prox(self, index, variable, step, alpha, sums):
        raise NotImplementedError

    def prox_point(self, variable):
        """W̃ of a model variable, recomputed from the optimizer state.

        Equals W at t = 0 (no step yet in the stage) and when the weights
        were changed from outside since the last step. Costs no memory.
        The variable's other constraint (`NonNeg`, ...) applies to W̃ as to
        every step's weights: the model `fit` leaves must satisfy it.
        """
        index = self._get_variable_index(variable)
        step, alpha, sums = self.stage_state(index)
        live = ops.logical_and(
            ops.greater(step, 0.0),
            ops.logical_not(self.changed_from_outside(index, variable)),
        )
        # Guard t = 0 against 0/0: that branch is discarded anyway.
        safe_step = ops.maximum(step, 1.0)
        point = self._constrain(index, self.dual_prox(index, variable, safe_step, alpha, sums))
        return ops.where(live, point, ops.convert_to_tensor(variable))

    def get_config(self):
        config = super().get_config()
        config.update(self._momentum_config())
        return config

