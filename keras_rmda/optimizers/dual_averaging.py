"""The stage shared by the dual-averaging optimizers (RMDA, RAMDA).

As in the paper, t (steps in the stage) and α (the sum of step weights) are
one scalar each for the whole optimizer; W⁰ (the stage's starting point) and
V (the weighted gradient sum) are per variable. A stage starts

- at `build` and at every `restart()`, eagerly: W⁰ ← W, V ← 0, t ← 0, α ← 0;
- inside a step, when the weights were changed from outside since the
  optimizer last wrote them (`set_weights`, `load_weights`, a callback's
  `assign`): the dual average would otherwise pull them back towards the
  old W⁰. One check per step for the whole model (`fingerprint`); a change
  starts a new stage for every variable.

`begin_step` advances t and α once per step, before Keras calls
`update_step` for each variable; `update_step` sees the new t, and t = 1
tells it that the stage starts with this step: `stage_state` then stores
W⁰ ← W and reads V as 0.
"""

import collections
import itertools

import keras
from keras import ops

from keras_rmda.optimizers import base
from keras_rmda.optimizers import fingerprint as fingerprint_lib
from keras_rmda.optimizers.momentum import NewPointMomentum
from keras_rmda.optimizers.momentum import check_momentum


# One step's t and α (after its increments), whether the stage starts with
# it, c and η.
Stage = collections.namedtuple("Stage", ["step", "alpha", "starts", "momentum", "learning_rate"])


class DualAveragingOptimizer(NewPointMomentum, base.ProximalOptimizer):
    """Base class holding c, W⁰, V, t, α, `restart()` and `prox_point`.

    Subclasses implement `dual_prox(index, step, alpha)`: the prox point W̃
    of variable `index` from its stored state.
    """

    def __init__(self, learning_rate, momentum, **kwargs):
        check_momentum(momentum)  # before the base creates any state
        super().__init__(learning_rate=learning_rate, **kwargs)
        self._add_momentum(momentum)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._initial_points = self.add_slots(variables, "initial_point", _value_of)
        self._gradient_sums = self.add_slots(variables, "gradient_sum")
        self.stage_step = self.add_scalar("stage_step")
        self.stage_alpha = self.add_scalar("stage_alpha")
        sizes = [fingerprint_lib.sample_size(v.shape) for v in variables]
        self._fingerprint = self.add_variable((sum(sizes),), dtype="float32",
                                              aggregation="only_first_replica",
                                              name="fingerprint")
        self._fingerprint_offsets = list(itertools.accumulate(sizes, initial=0))
        # Set by each traced `begin_step`; None under several replicas.
        self._current_stage = None
        with base.init_scope():
            self._record_fingerprint(None)

    # --- the stage -------------------------------------------------------------

    def begin_step(self, updating):
        changed = fingerprint_lib.differs(
            fingerprint_lib.fingerprint(self._model_variables), self._fingerprint
        )
        step = ops.where(changed, 0.0, ops.convert_to_tensor(self.stage_step)) + 1.0
        learning_rate = ops.cast(self.learning_rate, "float32")
        scale = learning_rate * ops.sqrt(step)  # s = η·√t
        alpha = ops.where(changed, 0.0, ops.convert_to_tensor(self.stage_alpha)) + scale
        self.stage_step.assign(self.advanced(updating, step, self.stage_step))
        self.stage_alpha.assign(self.advanced(updating, alpha, self.stage_alpha))
        self._current_stage = None
        if _replicas_in_sync() > 1:
            return  # see `stage`
        # For every update_step of this step (a traced program: these are its
        # tensors), rather than a dozen scalar ops per variable. c and η are
        # read here once: on TensorFlow each op a variable enters reads it.
        self._current_stage = Stage(step, alpha, ops.equal(step, 1.0),
                                    _read(self.momentum), learning_rate)

    def _store_initial_points(self):
        """W⁰ ← W for every variable."""
        for initial_point, variable in zip(self._initial_points, self._model_variables):
            initial_point.assign(variable)

    def end_step(self, updating):
        self._record_fingerprint(updating)

    def _record_fingerprint(self, updating):
        current = fingerprint_lib.fingerprint(self._model_variables)
        self._fingerprint.assign(self.advanced(updating, current, self._fingerprint))

    def stage(self):
        """This step's `Stage`, for `update_step`: from `begin_step`, or read
        per variable under several replicas, where each replica's update
        reads its own copies."""
        if self._current_stage is not None:
            return self._current_stage
        step = ops.convert_to_tensor(self.stage_step)
        return Stage(step, ops.convert_to_tensor(self.stage_alpha), ops.equal(step, 1.0),
                     _read(self.momentum), ops.cast(self.learning_rate, "float32"))

    def stage_state(self, target, fresh):
        """`(W⁰, V)` of a `joint.Target` for this step: W and 0 if the stage
        starts with it, and then W⁰ ← W (V is stored by the update).

        W⁰ is written every step, as a select inside the update rather than
        a branch around the model's writes: compiled by XLA (for a CPU or a
        GPU), a branch copies every W⁰ it leaves unchanged, where the select
        is one more write in the update's own kernel.
        """
        initial_point = ops.where(fresh, ops.convert_to_tensor(target.weights),
                                  self.read(self._initial_points, target.index))
        self.write(self._initial_points, target.index, initial_point)
        sums = self.read(self._gradient_sums, target.index)
        return initial_point, ops.where(fresh, 0.0, sums)

    def restart(self):
        """Start a new stage for every variable: W⁰ ← W, V ← 0, α ← 0, t ← 0.

        Call it eagerly between epochs (the `StageSchedule` callback does);
        works under a distribution strategy.
        """
        if not self.built:
            return
        self._store_initial_points()
        for sums in self._gradient_sums:
            sums.assign(ops.zeros(sums.shape, sums.dtype))
        self.stage_step.assign(0.0)
        self.stage_alpha.assign(0.0)
        self._record_fingerprint(None)

    def changed_from_outside(self, variable):
        """True when `variable` no longer holds the weights this optimizer wrote."""
        index = self.variable_index(variable)
        start, end = self._fingerprint_offsets[index : index + 2]
        recorded = self._fingerprint[start:end]
        return fingerprint_lib.differs(fingerprint_lib.fingerprint([variable]), recorded)

    # --- the prox point ----------------------------------------------------------

    def dual_prox(self, index, step, alpha):
        raise NotImplementedError

    def prox_point(self, variable):
        """W̃ of a model variable, recomputed from the optimizer state.

        Equals W at t = 0 (no step yet in the stage) and when the weights
        were changed from outside since the last step. Costs no memory.
        The variable's other constraint (`NonNeg`, ...) applies to W̃ as to
        every step's weights: the model `fit` leaves must satisfy it. A
        member of shared groups gets its part of the joint variable's W̃.
        """
        index = self.variable_index(variable)
        step = ops.convert_to_tensor(self.stage_step)
        live = ops.logical_and(
            ops.greater(step, 0.0), ops.logical_not(self.changed_from_outside(variable))
        )
        joint = self.joint_set_of(index)
        # Guard t = 0 against 0/0: that branch is discarded anyway.
        point = self.dual_prox(index if joint is None else joint.index,
                               ops.maximum(step, 1.0), self.stage_alpha)
        if joint is not None:
            point = self._joint.split(joint, point)[joint.members.index(index)]
        return ops.where(live, self.constrained(index, point), ops.convert_to_tensor(variable))

    def finalize_variable_values(self, var_list):
        super().finalize_variable_values(var_list)
        if self.finalize and self.built:
            # The prox point is the optimizer's own write, not an outside one.
            self._record_fingerprint(None)

    def get_config(self):
        config = super().get_config()
        config.update(self._momentum_config())
        return config


def _value_of(variable):
    """An initializer giving a copy of `variable`'s current value (a copy:
    on JAX the slot would otherwise share the weights' buffer, which a
    compiled step cannot donate twice)."""
    value = ops.convert_to_tensor(variable)
    return lambda shape, dtype=None: ops.copy(ops.cast(value, dtype or value.dtype))


def _read(variable):
    """The value of a Keras variable as a tensor (on TensorFlow, one read;
    `convert_to_tensor` returns the variable itself)."""
    return ops.cast(variable, variable.dtype)


def _replicas_in_sync():
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync
