"""ProxPointValidation and StopOnNonFinite in real `fit`s of small models."""

import keras
import numpy as np

import keras_rmda
from keras_rmda import callbacks

L = keras.layers


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((256, 12)).astype("float32")
    y = (x[:, :3].sum(axis=1) > 0).astype("int32")
    return x[:192], y[:192], x[192:], y[192:]


def _model(optimizer):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((12,)), L.Dense(16, activation="relu"), L.Dense(2)])
    model.compile(optimizer=optimizer, metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _rmda():
    # c = 0.1 < 1: the iterate W and the prox point W̃ differ.
    return keras_rmda.RMDA(learning_rate=0.1, momentum=0.1,
                           regularizer=keras_rmda.GroupLasso(0.02))


def test_val_figures_are_those_of_the_model_fit_leaves():
    x, y, x_val, y_val = _problem()
    model = _model(_rmda())
    history = model.fit(x, y, epochs=3, batch_size=32, verbose=0, shuffle=False,
                        callbacks=[callbacks.ProxPointValidation((x_val, y_val))])
    # fit finalised the model to W̃: evaluating it now reproduces the last val_* exactly.
    loss, accuracy = model.evaluate(x_val, y_val, verbose=0)
    assert history.history["val_loss"][-1] == loss
    assert history.history["val_accuracy"][-1] == accuracy
    assert len(history.history["iterate_val_loss"]) == 3
    assert history.history["iterate_val_loss"][-1] != loss  # W ≠ W̃ while c < 1


def test_evaluating_the_prox_point_leaves_training_bit_for_bit_unchanged():
    x, y, x_val, y_val = _problem(1)
    weights = []
    for extra in ([], [callbacks.ProxPointValidation((x_val, y_val), batch_size=16)]):
        model = _model(keras_rmda.RMDA(learning_rate=0.1, momentum=0.1, finalize=False,
                                       regularizer=keras_rmda.GroupLasso(0.02)))
        model.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False, callbacks=extra)
        weights.append(model.get_weights() + [v.numpy() for v in model.optimizer.variables])
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_without_a_prox_point_both_figures_are_the_model_s():
    x, y, x_val, y_val = _problem(2)
    model = _model(keras.optimizers.SGD(0.1))
    history = model.fit(x, y, epochs=2, batch_size=32, verbose=0,
                        callbacks=[callbacks.ProxPointValidation((x_val, y_val))])
    assert history.history["val_accuracy"] == history.history["iterate_val_accuracy"]
    assert history.history["val_loss"][-1] == model.evaluate(x_val, y_val, verbose=0)[0]


def test_stop_on_non_finite_stops_and_says_why():
    x, y, _, _ = _problem(3)
    model = _model(keras.optimizers.SGD(1e30))
    guard = callbacks.StopOnNonFinite()
    history = model.fit(x, y, epochs=5, batch_size=32, verbose=0, callbacks=[guard])
    assert guard.failed_epoch == len(history.history["loss"]) < 5
    assert "non-finite" in guard.reason or "loss became" in guard.reason


def test_stop_on_non_finite_is_quiet_on_a_healthy_run():
    x, y, _, _ = _problem(4)
    model = _model(_rmda())
    guard = callbacks.StopOnNonFinite()
    history = model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[guard])
    assert guard.failed_epoch is None and len(history.history["loss"]) == 2
