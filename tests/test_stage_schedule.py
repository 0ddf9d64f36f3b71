import math

import keras
import numpy as np
import pytest

import keras_rmda as kr
from keras_rmda.callbacks import StageSchedule


def _data(n=32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    return x, y


def _model(optimizer):
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(5, activation="relu"),
        keras.layers.Dense(2),
    ])
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class _Spy(keras.callbacks.Callback):
    """Records the learning rate and momentum each batch sees."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_begin(self, batch, logs=None):
        opt = self.model.optimizer
        momentum = getattr(opt, "momentum", None)
        momentum = float(keras.ops.convert_to_numpy(momentum)) if momentum is not None else None
        self.seen.append((float(keras.ops.convert_to_numpy(opt.learning_rate)), momentum))


class _CountingRMDA(kr.RMDA):
    restarts = ()

    def restart(self):
        self.restarts = list(self.restarts) + [int(self.iterations.numpy())]
        super().restart()


def _fit(model, epochs, callbacks, initial_epoch=0):
    x, y = _data()
    return model.fit(x, y, batch_size=8, epochs=epochs, initial_epoch=initial_epoch,
                     shuffle=False, verbose=0, callbacks=callbacks)


def test_iclr_rule_learning_rate_momentum_and_restarts():
    optimizer = _CountingRMDA(learning_rate=0.1, momentum=0.01, regularizer=kr.GroupLasso(1e-3))
    model = _model(optimizer)
    spy = _Spy()
    history = _fit(model, 4, [StageSchedule([2, 3], momentum_rule="iclr"), spy])
    np.testing.assert_allclose(history.history["learning_rate"], [0.1, 0.1, 0.01, 0.001], rtol=1e-6)
    np.testing.assert_allclose(history.history["momentum"], [0.01, 0.01, 0.1, 1.0], rtol=1e-6)
    assert optimizer.restarts == [8, 12]  # at the beginning of 0-based epochs 2 and 3 (4 steps each)
    assert [lr for lr, _ in spy.seen[:4]] == pytest.approx([0.1] * 4)


def test_ramda_rule_grows_momentum_per_step_from_the_epoch_before_the_last_milestone():
    # As the reference code: from the epoch before the last restart, c_k =
    # min(c0·sqrt(k), 1) with k = 2, 3, ... (its counter is raised before use).
    optimizer = kr.RMDA(learning_rate=0.1, momentum=0.125)
    model = _model(optimizer)
    spy = _Spy()
    _fit(model, 4, [StageSchedule([1, 3]), spy])
    momenta = [c for _, c in spy.seen]
    assert momenta[:8] == pytest.approx([0.125] * 8)  # 0-based epochs 0 and 1
    expected = [min(0.125 * math.sqrt(k), 1.0) for k in range(2, 10)]
    assert momenta[8:] == pytest.approx(expected, rel=1e-6)
    assert expected[-1] < 1.0 and momenta[-1] > momenta[-2]  # still rising in the last stage
    assert [lr for lr, _ in spy.seen[8:]] == pytest.approx([0.01] * 4 + [1e-3] * 4)


def test_ramda_rule_needs_the_epoch_length_only_after_its_first_epoch():
    # The first epoch of the ramp counts steps itself (a dataset of unknown
    # length, whose epoch length is learnt during it).
    schedule = StageSchedule([1], learning_rate=0.1, momentum=0.25)
    assert schedule.momentum_at(0, 2) == pytest.approx(0.25 * math.sqrt(4))
    assert schedule.momentum_at(1, 2, steps_per_epoch=5) == pytest.approx(min(0.25 * 3, 1.0))
    with pytest.raises(ValueError, match="steps_per_epoch"):
        schedule.momentum_at(1, 2)


def test_no_milestones_keep_the_initial_learning_rate_and_momentum():
    for rule in ("ramda", "iclr"):
        schedule = StageSchedule([], momentum_rule=rule, learning_rate=0.1, momentum=0.2)
        assert schedule.learning_rate_at(7) == pytest.approx(0.1)
        assert schedule.momentum_at(7, 3, steps_per_epoch=10) == pytest.approx(0.2)
    model = _model(kr.RMDA(learning_rate=0.1, momentum=0.2))
    spy = _Spy()
    _fit(model, 2, [StageSchedule([]), spy])
    assert spy.seen == [pytest.approx((0.1, 0.2))] * 8


def test_optimizers_without_restart_only_get_the_learning_rate():
    model = _model(keras.optimizers.SGD(learning_rate=0.2, momentum=0.9))
    history = _fit(model, 3, [StageSchedule([1], lr_factor=0.5, momentum_rule="iclr")])
    np.testing.assert_allclose(history.history["learning_rate"], [0.2, 0.1, 0.1], rtol=1e-6)
    assert model.optimizer.momentum == 0.9
    assert "momentum" not in history.history


@pytest.mark.parametrize("resume_at", [3, 5])
def test_resumed_run_equals_uninterrupted_run(tmp_path, resume_at):
    def optimizer():
        return kr.RMDA(learning_rate=0.1, momentum=0.2, regularizer=kr.GroupLasso(2e-2),
                       finalize=False)

    keras.utils.set_random_seed(7)
    straight = _model(optimizer())
    initial = straight.get_weights()
    spy_straight = _Spy()
    _fit(straight, 6, [StageSchedule([3, 4]), spy_straight])

    interrupted = _model(optimizer())
    interrupted.set_weights(initial)
    _fit(interrupted, resume_at, [StageSchedule([3, 4])])
    path = str(tmp_path / "checkpoint.keras")
    interrupted.save(path)
    resumed = keras.saving.load_model(path)
    spy_resumed = _Spy()
    # The checkpoint's optimizer holds the rescaled values: pass stage 0's.
    schedule = StageSchedule([3, 4], learning_rate=0.1, momentum=0.2)
    _fit(resumed, 6, [schedule, spy_resumed], initial_epoch=resume_at)

    assert spy_resumed.seen == spy_straight.seen[resume_at * 4:]
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="milestones"):
        StageSchedule([3, 2])
    with pytest.raises(ValueError, match="milestones"):
        StageSchedule([0, 2])
    with pytest.raises(ValueError, match="lr_factor"):
        StageSchedule([1], lr_factor=0)
    with pytest.raises(ValueError, match="momentum_rule"):
        StageSchedule([1], momentum_rule="cosine")
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    model = _model(kr.RMDA(learning_rate=schedule))
    with pytest.raises(ValueError, match="learning-rate schedule"):
        _fit(model, 1, [StageSchedule([1])])
