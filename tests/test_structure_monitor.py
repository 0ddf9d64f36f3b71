"""StructureMonitor: flips and identification on a scripted weight sequence."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_rmda
from keras_rmda import callbacks
from keras_rmda import structure

L = keras.layers

# Zero rows (input units) of the first dense kernel (4, 3) at each epoch end;
# the second kernel (3, 2) keeps row 2 zero throughout.
_SCRIPT = [{0}, {0, 1}, {0, 1}, {1}, {1}, {1}]
_FLIPS = [0, 1, 0, 1, 0, 0]  # by hand: first epoch compares with nothing
_CANDIDATES = [1, 2, 2, 4, 4, 4]  # last epoch whose end showed a change


class _ScriptedWeights(keras.callbacks.Callback):
    """Sets the weights at each epoch end, before the monitor measures them."""

    def on_epoch_end(self, epoch, logs=None):
        first, second = self.model.layers
        kernel = np.ones((4, 3), "float32")
        kernel[sorted(_SCRIPT[epoch])] = 0.0
        first.kernel.assign(kernel)
        kernel = np.full((3, 2), 0.5, "float32")
        kernel[2] = 0.0
        kernel[0, 0] = 0.0  # a lone zero: unstructured only
        second.kernel.assign(kernel)


def _scripted_model():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3), L.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    return model


def test_flips_and_identified_epoch_follow_the_script(tmp_path):
    model = _scripted_model()
    monitor = callbacks.StructureMonitor(log_dir=tmp_path / "logs")
    x = np.ones((4, 4), "float32")
    history = model.fit(
        x, np.zeros((4, 2), "float32"), epochs=len(_SCRIPT), verbose=0,
        callbacks=[_ScriptedWeights(), monitor],
    )
    assert history.history["group_flips"] == _FLIPS
    assert history.history["identified_epoch"] == _CANDIDATES
    assert monitor.identified_epoch == 4
    assert [h["epoch"] for h in monitor.history] == list(range(1, 7))
    # groups: 4 + 3 = 7; zero: script rows + row 2 of the second kernel
    expected_group = [(len(rows) + 1) / 7 for rows in _SCRIPT]
    np.testing.assert_allclose(history.history["group_sparsity"], expected_group)
    expected_weighted = [(3 * len(rows) + 2) / (12 + 6) for rows in _SCRIPT]
    np.testing.assert_allclose(history.history["weighted_group_sparsity"], expected_weighted)
    expected_unstructured = [(3 * len(rows) + 3) / 18 for rows in _SCRIPT]
    np.testing.assert_allclose(history.history["unstructured_sparsity"], expected_unstructured)
    (events,) = os.listdir(tmp_path / "logs")
    tags = set()
    for event in tf.compat.v1.train.summary_iterator(str(tmp_path / "logs" / events)):
        tags.update(value.tag for value in event.summary.value)
    assert f"group_norms/{model.layers[0].kernel.path}" in tags
    assert "structure/group_flips" in tags


def test_driven_by_hand_without_fit():
    model = _scripted_model()
    monitor = callbacks.StructureMonitor()
    monitor.set_model(model)
    monitor.on_train_begin()
    scripted = _ScriptedWeights()
    scripted.set_model(model)
    for epoch in range(len(_SCRIPT)):
        scripted.on_epoch_end(epoch)
        logs = {}
        monitor.on_epoch_end(epoch, logs)
        assert logs["group_flips"] == _FLIPS[epoch]
        assert logs["identified_epoch"] == _CANDIDATES[epoch]


def test_state_carries_flips_and_identification_across_a_resume():
    # Epochs 1-3, then a new monitor restored from the JSON'd state does 4-6:
    # the figures must be those of one uninterrupted fit.
    model = _scripted_model()
    x, y = np.ones((4, 4), "float32"), np.zeros((4, 2), "float32")
    first = callbacks.StructureMonitor()
    model.fit(x, y, epochs=3, verbose=0, callbacks=[_ScriptedWeights(), first])
    state = json.loads(json.dumps(first.get_state()))
    second = callbacks.StructureMonitor()
    second.set_state(state)
    history = model.fit(x, y, initial_epoch=3, epochs=len(_SCRIPT), verbose=0,
                        callbacks=[_ScriptedWeights(), second])
    assert history.history["group_flips"] == _FLIPS[3:]
    assert history.history["identified_epoch"] == _CANDIDATES[3:]
    assert [h["epoch"] for h in second.history] == list(range(1, 7))
    # Only the first fit after set_state continues; a later fit starts afresh.
    model.fit(x, y, epochs=1, verbose=0, callbacks=[_ScriptedWeights(), second])
    assert [h["epoch"] for h in second.history] == [1]


def test_measures_the_prox_point_that_fit_leaves():
    # RMDA with c < 1: W differs from W̃; the monitor's last figures are those
    # of the finalised model, measured with use_prox_point=False after fit.
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((8,)), L.Dense(16, activation="relu"), L.Dense(1)])
    model.compile(loss="mse", optimizer=keras_rmda.RMDA(
        learning_rate=0.05, momentum=0.1, regularizer=keras_rmda.GroupLasso(0.2)))
    x = np.random.default_rng(1).standard_normal((64, 8)).astype("float32")
    monitor = callbacks.StructureMonitor()
    history = model.fit(x, x[:, :1], epochs=3, batch_size=16, verbose=0, callbacks=[monitor])
    final = structure.sparsities(model, use_prox_point=False)
    assert history.history["group_sparsity"][-1] == final["group_sparsity"] > 0


def test_count_flips():
    a = {"k": np.array([True, False, False])}
    b = {"k": np.array([False, False, True]), "new": np.array([True, True])}
    assert callbacks.count_flips(None, a) == 0
    assert callbacks.count_flips(a, a) == 0
    assert callbacks.count_flips(a, b) == 2 + 2


def test_logs_reach_history_in_a_real_rmda_fit():
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((8,)), L.Dense(16, activation="relu"), L.Dense(1)])
    model.compile(
        optimizer=keras_rmda.RMDA(learning_rate=0.05, regularizer=keras_rmda.GroupLasso(0.05)),
        loss="mse",
    )
    x = np.random.default_rng(0).standard_normal((64, 8)).astype("float32")
    monitor = callbacks.StructureMonitor()
    history = model.fit(x, x[:, :1], epochs=3, batch_size=16, verbose=0, callbacks=[monitor])
    for key in ("group_sparsity", "weighted_group_sparsity", "unstructured_sparsity",
                "group_flips", "identified_epoch"):
        assert len(history.history[key]) == 3, key
    assert all(0.0 <= s <= 1.0 for s in history.history["group_sparsity"])
    assert history.history["group_flips"][0] == 0
    assert monitor.identified_epoch in (1, 2, 3)
    assert monitor.identified_epoch == history.history["identified_epoch"][-1]


@pytest.mark.parametrize("use_prox_point", [True, False])
def test_use_prox_point_flag_is_kept(use_prox_point):
    assert callbacks.StructureMonitor(use_prox_point=use_prox_point).use_prox_point is use_prox_point
