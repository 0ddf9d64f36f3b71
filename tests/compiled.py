"""A compiled `optimizer.apply` on the active Keras backend, for the tests.

TensorFlow: `tf.function(jit_compile=True)`, so an op XLA cannot compile
fails the test. JAX: `jax.jit` of `stateless_apply` with the results
written back, which is how Keras's JAX trainer runs an optimizer.
"""

import keras


def graph_apply(optimizer, variables):
    """`apply(gradients)` for `variables` as a traced graph (no XLA on
    TensorFlow): as `fit` runs it, and far faster than eager for the inner
    solvers' loops. JAX: `jit_apply`."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda *g: optimizer.apply(list(g), variables), autograph=False)
    return jit_apply(optimizer, variables)


def jit_apply(optimizer, variables):
    """`apply(gradients)` for `variables`, compiled with XLA."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda *g: optimizer.apply(list(g), variables), jit_compile=True)
    if keras.backend.backend() != "jax":
        raise NotImplementedError(keras.backend.backend())
    import jax

    optimizer.build(variables)
    step = jax.jit(optimizer.stateless_apply)

    def apply(*gradients):
        new_variables, new_state = step(
            [v.value for v in optimizer.variables],
            list(gradients),
            [v.value for v in variables],
        )
        for variable, value in zip(variables, new_variables):
            variable.assign(value)
        for variable, value in zip(optimizer.variables, new_state):
            variable.assign(value)

    return apply
