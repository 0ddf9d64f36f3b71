"""Each variable's update as XLA-compiled calls in a plain TF graph.

Without `jit_compile` (Keras's default on CPU) a TensorFlow train step runs
each op of an update as its own kernel: one pass over memory per op, a dozen
per variable. `PlainGraphFusion` overrides Keras's private
`TFOptimizer._backend_update_step` (a private hook, named in pyproject.toml)
so that, in a plain graph with one replica, each variable's rule runs in
XLA-compiled calls instead: its elementwise chain becomes one pass. Under
XLA, under a multi-replica strategy and on other backends, Keras's own
per-variable `update_step` runs.
"""

import math

import keras

from keras_rmda.optimizers import tables
from keras_rmda.optimizers.finite import all_finite
from keras_rmda.optimizers.fingerprint import fingerprint

# Weights from which a variable's update is decided by its memory traffic,
# not by its kernel launches: from here the stage start and the fingerprint
# leave the compiled call, and a split rule runs as two passes. See
# `PlainGraphFusion._compiled_update`.
SPLIT_MIN_SIZE = 2**20

# At most this many compiled calls share a model's small variables; see
# `PlainGraphFusion._update_chunks`. LeNet-5's 10 variables, `fit` step
# without `jit_compile`, RMDA/SGD in one process: calls of (8, 9) (6, 7)
# (4, 5) (2, 3) (0, 1): 1.121 and 1.141; (6-9) (4, 5) (2, 3) (0, 1): 1.101;
# (6-9) (2-5) (0, 1): 1.071 and 1.106; (2-9) (0, 1): 1.147; one call: 1.163.
MAX_SMALL_CHUNKS = 3


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
    `_constrain`, `slot_rule` / `weight_rule`, `_start_stage_if_due` and
    its fingerprints.
    """

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Overrides Keras's private `TFOptimizer._backend_update_step` (see the
        # module docstring).
        if not self._fuse_in_plain_graph():
            if not self._one_replica():
                return super()._backend_update_step(grads, trainable_variables, learning_rate)
            # One program runs every variable's rule (XLA, or another backend).
            with self.held_table_writes():
                return super()._backend_update_step(grads, trainable_variables, learning_rate)
        import tensorflow as tf

        learning_rate = tf.convert_to_tensor(learning_rate)
        # Keras variables and IndexedSlices are not tensors to tf.function.
        gradients = {
            self._get_variable_index(v): tf.convert_to_tensor(g)
            for g, v in zip(grads, trainable_variables)
        }
        for chunk in self._update_chunks(tuple(gradients)):
            self._compiled_update(chunk)([gradients[i] for i in chunk], learning_rate)

    def _fuse_in_plain_graph(self):
        # XLA on CPU cannot compile MirroredStrategy steps: replicas run plain ops.
        return (
            keras.backend.backend() == "tensorflow"
            and not in_xla_context()
            and self._one_replica()
        )

    def _one_replica(self):
        if keras.backend.backend() != "tensorflow":
            return True
        import tensorflow as tf

        return tf.distribute.get_strategy().num_replicas_in_sync == 1

    def _is_small(self, index):
        return math.prod(self._trainable_variables[index].shape) < SPLIT_MIN_SIZE

    def _update_chunks(self, indices):
        """`indices` cut into the variable sets that share a compiled call,
        in the order the calls run.

        Several calls, not one: each starts as soon as its gradients are
        ready, beside the rest of backprop, while the call holding the first
        layers can only start when backprop is done. Few calls, as each
        costs ~20 µs before any work, and a model of hundreds of variables
        compiles a handful of functions, not hundreds. So at most
        `MAX_SMALL_CHUNKS` calls of equal counts of small variables, cut
        from the last variable back, leaving the remainder, the smallest
        call, to the first variables. A large variable has calls of its own.

        Last variables first: every call writes the shared `tables`, so the
        calls run one after another in this order, which should be the
        order backprop delivers the gradients in (first-layers-first
        measured 1.23× SGD's).
        """
        small = [i for i in indices if self._is_small(i)]
        per_chunk = max(1, -(-len(small) // MAX_SMALL_CHUNKS))
        ends = range(len(small), 0, -per_chunk)
        chunks = [tuple(small[max(0, end - per_chunk) : end]) for end in ends]
        chunks += [(i,) for i in indices if not self._is_small(i)]
        # A call's gradients are all ready when its first variable's is.
        return sorted(chunks, key=min, reverse=True)

    def _compiled_update(self, chunk):
        """The step of the variables `chunk`, built once and kept.

        For small variables ONE XLA-compiled call runs the whole step, stage
        start (as selects) and fingerprints included, as under a fully
        compiled train step: their update costs launches and variable
        accesses, not memory traffic. For a large variable the stage start
        and the fingerprint run in the plain graph around the rule (so the
        rule's pass writes nothing more), and a rule split into `slot_rule`
        and `weight_rule` runs as two calls, see `_two_pass_rule`.
        """
        if chunk not in self._fused_updates:
            variables = [self._trainable_variables[i] for i in chunk]  # one replica
            if self._is_small(chunk[0]):
                update = _compile(self._whole_step(variables))
            else:
                index, variable = chunk[0], variables[0]
                rule = self._two_pass_rule if self._split_rule() else self._one_pass_rule
                update = self._between_bookkeeping(index, variable, rule(index, variable))
            self._fused_updates[chunk] = update
        return self._fused_updates[chunk]

    def _whole_step(self, variables):
        # `update_step` as under a fully compiled train step: inside the
        # compiled call it takes the branch-free stage start.
        def step(grads, learning_rate):
            with self.held_table_writes():
                for variable, gradient in zip(variables, grads):
                    self.update_step(gradient, variable, learning_rate)

        return step

    def _between_bookkeeping(self, index, variable, compiled_rule):
        """A large variable's step: its compiled rule between the stage start
        and the fingerprint, which run in the plain graph."""

        def step(grads, learning_rate):
            self._start_stage_if_due(index, variable, branch_free=False)
            compiled_rule(grads[0], learning_rate)
            self._record_fingerprint_of(index, variable)

        return step

    def _one_pass_rule(self, index, variable):
        def rule(gradient, learning_rate):
            self._update_variable(
                index, gradient, variable, learning_rate, record_fingerprint=False
            )

        return _compile(rule)

    def _two_pass_rule(self, index, variable):
        """The slots first, then the weights from the STORED slots.

        So XLA neither recomputes the new slots nor copies the old ones to
        keep them alive (measured on CPU, 26.8M weights: 1.43× → 1.05× SGD's
        update for L1, 2.16× → 1.90× for the group LASSO).
        """

        def update_slots(gradient, learning_rate):
            gradient, rate = self._prepare(index, gradient, variable, learning_rate)
            finite = all_finite(gradient)
            self._commit_if(finite, self.slot_rule(index, variable, gradient, rate))
            return finite

        def update_weights(finite):
            new_weights = self.weight_rule(index, variable, tables.read)
            self._commit_if(finite, [(variable, self._constrain(index, new_weights))])

        slots, weights = _compile(update_slots), _compile(update_weights)
        return lambda gradient, learning_rate: weights(slots(gradient, learning_rate))

    def _record_fingerprint_of(self, index, variable):
        # Read from the stored weights out here: inside, fingerprinting the
        # new weights would keep XLA from fusing their update.
        self.assign(self._fingerprints[index], fingerprint(variable))


def _compile(function):
    import tensorflow as tf

    return tf.function(function, jit_compile=True, autograph=False)
