"""The optimizer's own map from model variables to their positions.

Public Keras and TensorFlow APIs only: Keras's own index is private.
"""

import keras


class VariableIndex:
    """Model variable → its position in the list the optimizer was built on.

    Keras passes `update_step` the `keras.Variable` (JAX), the `tf.Variable`
    behind it (TensorFlow) or, under a `tf.distribute` strategy, one
    replica's component of it; all three are registered, the components
    through the public `Strategy.experimental_local_results`.
    """

    def __init__(self, variables):
        # Held here, not as a list attribute of the optimizer, which Keras
        # would track as optimizer variables.
        self.variables = tuple(variables)
        # The handles stay referenced, so that no id is reused.
        self._handles = [_handles(v) for v in variables]
        self._positions = {
            id(handle): position
            for position, handles in enumerate(self._handles)
            for handle in handles
        }

    def get(self, variable):
        return self._positions.get(id(variable))

    def __call__(self, variable):
        position = self.get(variable)
        if position is None:
            raise KeyError(
                f"Variable {getattr(variable, 'path', variable.name)!r} is not "
                "one the optimizer was built on."
            )
        return position


def _handles(variable):
    handles = [variable]
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        value = variable.value if isinstance(variable, keras.Variable) else variable
        handles.append(value)
        if isinstance(value, tf.distribute.DistributedValues):
            strategy = tf.distribute.get_strategy()
            handles.extend(strategy.experimental_local_results(value))
    return handles


class DecayExclusions:
    """`exclude_from_weight_decay`'s arguments (an object: Keras would track
    a list of variables held by the optimizer as its own variables)."""

    def __init__(self, variables, pattern):
        self.variables, self.pattern = variables, pattern
