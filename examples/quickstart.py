"""Train a small network with RMDA + group LASSO on generated data; print its structure.

Offline, a few seconds on 2 CPU cores:

    python examples/quickstart.py

Only 5 of the 20 input features carry the signal. RMDA's input-wise group
LASSO finds the 15 others and zeroes their weights exactly, so `slim` can
drop them from the model.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_rmda as kr  # noqa: E402

SIGNAL = [0, 3, 7, 12, 18]
LAMBDA, EPOCHS = 1e-2, 10


def make_data(n, seed):
    """Three classes from a fixed linear teacher that reads only the SIGNAL features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 20)).astype("float32")
    teacher = np.random.default_rng(1234).normal(size=(len(SIGNAL), 3))
    return x, np.argmax(x[:, SIGNAL] @ teacher, axis=1)


def main():
    keras.utils.set_random_seed(0)
    x, y = make_data(4096, seed=0)
    x_val, y_val = make_data(1024, seed=1)
    model = keras.Sequential([
        keras.Input((20,)),
        keras.layers.Dense(32, activation="relu", kernel_constraint=kr.groups.InputUnits()),
        keras.layers.Dense(3, kernel_constraint=kr.groups.InputUnits()),
    ], name="quickstart_mlp")
    model.compile(
        optimizer=kr.RMDA(learning_rate=0.1, momentum=0.1, regularizer=kr.GroupLasso(LAMBDA)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, batch_size=64, epochs=EPOCHS, validation_data=(x_val, y_val), verbose=2,
              callbacks=[kr.callbacks.StructureMonitor()])
    print()
    print(kr.structure_report(model))
    first = keras.ops.convert_to_numpy(model.layers[0].kernel)
    kept = np.flatnonzero(np.any(first != 0.0, axis=1)).tolist()
    print(f"\nInput features RMDA kept: {kept} (the signal is in {SIGNAL})")
    slim = kr.slim(model)
    print(f"slim model: {slim.count_params()} parameters (from {model.count_params()}), "
          "same outputs")


if __name__ == "__main__":
    main()
