"""The optimizers every shared contract test runs on, and their test problem.

A new optimizer joins the shared suite (tests/test_optimizer_contract.py)
by adding one entry to OPTIMIZERS.
"""

import keras
import numpy as np

import keras_rmda as kr

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class Case:
    """How to make one optimizer for the shared suite.

    `trains`: a λ with which `fit` on the test problem clearly learns;
    `sparsifies`: a λ with which whole groups are zero within the test's
    few dozen steps.
    """

    def __init__(self, make, trains, sparsifies):
        self.make, self.trains, self.sparsifies = make, trains, sparsifies

    def __call__(self, strength=None, **overrides):
        return self.make(kr.GroupLasso(self.trains if strength is None else strength), **overrides)


OPTIMIZERS = {
    "rmda": Case(
        lambda reg, **kw: kr.RMDA(**{"learning_rate": 0.3, "momentum": 0.1, "regularizer": reg, **kw}),
        trains=4e-3,
        sparsifies=2e-2,
    ),
    "proxsgd": Case(
        lambda reg, **kw: kr.optimizers.ProxSGD(**{"learning_rate": 0.3, "momentum": 0.1, "regularizer": reg, **kw}),
        trains=1e-4,
        sparsifies=3e-2,
    ),
    "proxgen": Case(
        lambda reg, **kw: kr.optimizers.ProxGen(**{"learning_rate": 1e-2, "regularizer": reg, **kw}),
        trains=1e-4,
        sparsifies=1e-3,
    ),
    "proxssi": Case(
        # ε = 1e-4, not the default 1e-6: with 1e-6 coordinates whose gradient is ~0
        # amplify rounding by ~1/ε and jit / no-jit drift 4e-4 apart in 24 steps.
        lambda reg, **kw: kr.optimizers.ProxSSI(**{"learning_rate": 1e-2, "epsilon": 1e-4, "regularizer": reg, **kw}),
        trains=1e-4,
        sparsifies=1e-3,
    ),
    "ramda": Case(
        lambda reg, **kw: kr.optimizers.RAMDA(**{"learning_rate": 1e-2, "momentum": 0.1, "regularizer": reg, **kw}),
        trains=1e-4,
        sparsifies=1e-3,
    ),
}


def small_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 5)),
        keras.layers.Conv2D(6, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(12, activation="relu"),
        keras.layers.Dense(3),
    ])


def small_transformer(seed=0):
    """One attention block and MLP on the CNN data read as 16 tokens of 5,
    heads and MLP neurons declared as shared groups."""
    keras.utils.set_random_seed(seed)
    L = keras.layers
    inputs = keras.Input((8, 8, 5))
    x = L.Dense(8, name="embed")(L.Reshape((16, 20))(inputs))
    y = L.MultiHeadAttention(2, 4, name="attention")(x, x)
    x = L.Add()([x, y])
    y = L.Dense(3, name="up", activation="relu")(x)
    x = L.Add()([x, L.Dense(8, name="down")(y)])
    model = keras.Model(inputs, L.Dense(3, name="head")(L.GlobalAveragePooling1D()(x)))
    kr.groups.declare_transformer(model)
    return model


def data(n=256, seed=0):
    """Class k: channel k is brightest in the top-left patch; channels 3-4 are noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 5)).astype("float32")
    y = np.argmax(x[:, :4, :4, :3].mean(axis=(1, 2)), axis=1).astype("int32")
    return x, y


def compile_model(model, optimizer, jit_compile=False):
    model.compile(optimizer, LOSS, jit_compile=jit_compile)
    return model


def numpy_initialised_rmda(model):
    """`model` with weights drawn by numpy, compiled with RMDA + GroupLasso.

    Numpy, not Keras's initialisers, so that every process of a multi-worker
    or resumed run starts from the same weights. `finalize=False`: the runs
    compare optimizer state, which the prox point would not change.
    """
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(scale=0.3, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    optimizer = kr.RMDA(learning_rate=0.3, momentum=0.1, regularizer=kr.GroupLasso(2e-2),
                        finalize=False)
    model.compile(optimizer, LOSS)
    return model
