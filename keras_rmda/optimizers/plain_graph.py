"""The update of all variables as XLA-compiled functions in a plain TF graph.

Without `jit_compile` (Keras's default on CPU) a TensorFlow train step runs
each op of an update as its own kernel: one pass over memory per op, a dozen
per variable. `PlainGraphFusion` overrides Keras's private
`TFOptimizer._backend_update_step` (a private hook, named in pyproject.toml)
so that, in a plain graph with one replica, the rules of all variables run in
XLA-compiled functions instead: each variable's elementwise chain becomes
one pass. Under XLA, under a multi-replica strategy and on
other backends, Keras's own per-variable `update_step` runs.
"""

import math

import keras
from keras import ops

from keras_rmda.optimizers.fingerprint import fingerprint

# Weights from which two compiled passes (slots, then weights) beat one; see
# `PlainGraphFusion._fused_rules`.
SPLIT_MIN_SIZE = 2**20


def in_xla_context():
    """True while tracing inside an XLA-compiled TensorFlow function.

    Uses TensorFlow's private `control_flow_util`, in this one place; False
    on other backends.
    """
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


class PlainGraphFusion:
    """Mixin of `ProximalOptimizer`: the compiled update in a plain TF graph.

    Uses the optimizer's `_update_variable`, `_prepare`, `_commit_if`,
    `_constrain`, `slot_rule` / `weight_rule` and the stage hooks.
    """

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Overrides Keras's private `TFOptimizer._backend_update_step` (see the
        # module docstring).
        if not self._fuse_in_plain_graph():
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        indices = tuple(self._get_variable_index(v) for v in trainable_variables)
        self._start_stages_if_due(indices)
        self._fused_rules(indices)(list(grads), learning_rate)
        for index in indices:
            # Read from the stored weights out here: inside, fingerprinting the
            # new weights would keep XLA from fusing their update.
            variable = self._trainable_variables[index]
            self.assign(self._fingerprints[index], fingerprint(variable))

    def _fuse_in_plain_graph(self):
        if keras.backend.backend() != "tensorflow" or in_xla_context():
            return False
        import tensorflow as tf

        # XLA on CPU cannot compile MirroredStrategy steps: replicas run plain ops.
        return tf.distribute.get_strategy().num_replicas_in_sync == 1

    def _fused_rules(self, indices):
        """XLA-compiled functions applying the rules of `indices`.

        One function, or for a rule split into `slot_rule` and `weight_rule`
        and at least `SPLIT_MIN_SIZE` weights two: the slots first, then the
        weights from the STORED slots, so XLA neither recomputes the new
        slots nor copies the old ones to keep them alive (measured on CPU,
        26.8M weights: 1.43× → 1.05× SGD's update for L1, 2.16× → 1.90× for
        the group LASSO). A second call costs about 0.3 ms, which a small
        model's step notices (LeNet-5: 1.09× → 1.18× SGD's step).
        """
        if indices not in self._fused_updates:
            import tensorflow as tf

            variables = [self._trainable_variables[i] for i in indices]  # one replica

            def update(grads, learning_rate):
                for index, variable, gradient in zip(indices, variables, grads):
                    self._update_variable(
                        index, gradient, variable, learning_rate, record_fingerprint=False
                    )

            def update_slots(grads, learning_rate):
                finite = []
                for index, variable, gradient in zip(indices, variables, grads):
                    gradient, rate = self._prepare(index, gradient, variable, learning_rate)
                    finite.append(ops.all(ops.isfinite(gradient)))
                    self._commit_if(finite[-1], self.slot_rule(index, variable, gradient, rate))
                return finite

            def update_weights(finite):
                for index, variable, ok in zip(indices, variables, finite):
                    new_weights = self.weight_rule(index, variable, ops.convert_to_tensor)
                    self._commit_if(ok, [(variable, self._constrain(index, new_weights))])

            def compile(function):
                return tf.function(function, jit_compile=True, autograph=False)

            if self._split_rule() and sum(math.prod(v.shape) for v in variables) >= SPLIT_MIN_SIZE:
                slots, weights = compile(update_slots), compile(update_weights)
                compiled = lambda grads, rate: weights(slots(grads, rate))  # noqa: E731
            else:
                compiled = compile(update)
            # Keras variables and IndexedSlices are not tensors to tf.function.
            self._fused_updates[indices] = lambda grads, learning_rate: compiled(
                [tf.convert_to_tensor(g) for g in grads], tf.convert_to_tensor(learning_rate)
            )
        return self._fused_updates[indices]

    def _start_stages_if_due(self, indices):
        """`_start_stage_if_due` for many variables behind one rarely taken branch."""
        import tensorflow as tf

        dues = [self.stage_due(i, self._trainable_variables[i]) for i in indices]
        if not indices or dues[0] is None:
            return

        def reset_due():
            for index in indices:
                self._start_stage_if_due(index, self._trainable_variables[index], True)

        tf.cond(ops.any(ops.stack(dues)), reset_due, lambda: None)
