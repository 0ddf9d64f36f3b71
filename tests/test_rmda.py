"""RMDA's own guarantees: exact structure, finalisation, outside changes,
non-finite steps, weight decay, momentum convention, argument checks."""

import warnings

import keras
from keras import ops
import numpy as np
import pytest
import tensorflow as tf

import keras_rmda as kr
from keras_rmda import groups
from keras_rmda.optimizers.base import zero_non_finite

rng = np.random.default_rng(3)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _variable(shape=(8, 4), grouping=groups.InputUnits(), name="kernel"):
    v = keras.Variable(rng.normal(size=shape).astype("float32"), name=name)
    v.constraint = grouping
    return v


def _zero_rows(w):
    return np.all(w == 0.0, axis=1)


@pytest.mark.parametrize("momentum", [0.1, 1.0])
def test_prox_point_has_exact_zero_groups_from_the_step_they_appear(momentum):
    v = _variable()
    optimizer = kr.RMDA(0.1, momentum, regularizer=kr.GroupLasso(1.0))
    optimizer.build([v])
    first_zero_step = None
    for step in range(15):
        optimizer.apply([_np(v) * 0.5 + 0.3 * rng.normal(size=v.shape).astype("float32")], [v])
        w_tilde = _np(optimizer.prox_point(v))
        # Every group is either entirely 0.0 (not 1e-12) or has no zero at all.
        exact = _zero_rows(w_tilde)
        assert np.all(exact | np.all(w_tilde != 0.0, axis=1))
        if exact.any() and first_zero_step is None:
            first_zero_step = step
        if momentum == 1.0:  # W = W̃: the same exact zero groups, equal values
            np.testing.assert_array_equal(_zero_rows(_np(v)), exact)
            np.testing.assert_allclose(_np(v), w_tilde, rtol=0, atol=1e-6)
    assert first_zero_step is not None


def _small_model(finalize):
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(3),
    ])
    model.compile(
        kr.RMDA(0.05, 0.1, regularizer=kr.GroupLasso(1.0), finalize=finalize),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _data(n=128):
    x = np.random.default_rng(0).normal(size=(n, 6)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0)


def test_fit_ends_at_the_prox_point_by_default():
    model = _small_model(finalize=True)
    model.fit(*_data(), epochs=5, verbose=0)
    kernel = model.layers[0].kernel
    np.testing.assert_array_equal(_np(kernel), _np(model.optimizer.prox_point(kernel)))
    assert _zero_rows(_np(kernel)).any()


def test_finalize_false_keeps_the_averaged_iterate():
    model = _small_model(finalize=False)
    model.fit(*_data(), epochs=5, verbose=0)
    kernel = model.layers[0].kernel
    assert not np.array_equal(_np(kernel), _np(model.optimizer.prox_point(kernel)))
    assert _zero_rows(_np(model.optimizer.prox_point(kernel))).any()


def test_weights_changed_from_outside_start_a_new_stage():
    v = _variable()
    optimizer = kr.RMDA(0.1, 0.1, regularizer=kr.GroupLasso(0.05))
    optimizer.build([v])
    for _ in range(5):
        optimizer.apply([rng.normal(size=v.shape).astype("float32")], [v])
    new_weights = rng.normal(size=v.shape).astype("float32")
    v.assign(new_weights)  # what set_weights / load_weights do
    np.testing.assert_array_equal(_np(optimizer.prox_point(v)), new_weights)
    g = rng.normal(size=v.shape).astype("float32")
    optimizer.apply([g], [v])
    # The same as a fresh optimizer's first step from the new weights.
    fresh_v = _variable()
    fresh_v.assign(new_weights)
    fresh = kr.RMDA(0.1, 0.1, regularizer=kr.GroupLasso(0.05))
    fresh.build([fresh_v])
    fresh.apply([g], [fresh_v])
    np.testing.assert_allclose(_np(v), _np(fresh_v), atol=1e-7)


def _rmda_after_three_steps_on_three_variables():
    variables = [_variable(name=name) for name in "abc"]
    optimizer = kr.RMDA(0.1, 0.1, regularizer=kr.GroupLasso(0.05))
    optimizer.build(variables)
    for _ in range(3):
        optimizer.apply([rng.normal(size=variables[0].shape).astype("float32")] * 3, variables)
    return optimizer, variables


@pytest.mark.parametrize("jit", [False, True])
def test_an_outside_write_to_one_variable_starts_a_new_stage_for_all(jit):
    """One check per step for the whole model; a new stage for every variable
    (ALGORITHMS.md: a correct response), equal to a fresh optimizer's step."""
    optimizer, variables = _rmda_after_three_steps_on_three_variables()
    variables[1].assign(rng.normal(size=variables[1].shape).astype("float32"))
    weights = [_np(v).copy() for v in variables]
    grads = [rng.normal(size=weights[0].shape).astype("float32") for _ in variables]
    apply = lambda *g: optimizer.apply(list(g), variables)  # noqa: E731
    if jit:
        apply = tf.function(apply, jit_compile=True)
    apply(*grads)
    assert float(_np(optimizer.stage_step)) == 1.0
    np.testing.assert_allclose(float(_np(optimizer.stage_alpha)), 0.1, rtol=1e-6)
    fresh_variables = [_variable(name=name) for name in "abc"]
    for fresh_v, w in zip(fresh_variables, weights):
        fresh_v.assign(w)
    fresh = kr.RMDA(0.1, 0.1, regularizer=kr.GroupLasso(0.05))
    fresh.build(fresh_variables)
    fresh.apply(grads, fresh_variables)
    for v, fresh_v in zip(variables, fresh_variables):
        np.testing.assert_allclose(_np(v), _np(fresh_v), atol=1e-6)


def test_without_outside_writes_the_stage_runs_on():
    optimizer, variables = _rmda_after_three_steps_on_three_variables()
    optimizer.finalize_variable_values(variables)  # the optimizer's own write
    optimizer.apply([rng.normal(size=variables[0].shape).astype("float32")] * 3, variables)
    assert float(_np(optimizer.stage_step)) == 4.0
    np.testing.assert_allclose(float(_np(optimizer.stage_alpha)),
                               0.1 * sum(np.sqrt(k) for k in range(1, 5)), rtol=1e-6)


def test_restart_starts_a_stage_from_the_current_weights():
    optimizer, variables = _rmda_after_three_steps_on_three_variables()
    optimizer.restart()
    assert float(_np(optimizer.stage_step)) == 0.0 and float(_np(optimizer.stage_alpha)) == 0.0
    for v in variables:
        np.testing.assert_array_equal(_np(optimizer.prox_point(v)), _np(v))
    for initial_point, sums, v in zip(optimizer._initial_points, optimizer._gradient_sums,
                                      variables):
        np.testing.assert_array_equal(_np(initial_point), _np(v))
        assert not _np(sums).any()


@pytest.mark.parametrize("how", ["set_weights", "load_weights"])
def test_weights_loaded_after_build_are_not_pulled_back(tmp_path, how):
    model = _small_model(finalize=False)
    x, y = _data()
    model.fit(x, y, epochs=2, verbose=0)
    # Weights from elsewhere: a fresh, uncompiled model (no optimizer state).
    donor = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16), keras.layers.Dense(3)])
    if how == "set_weights":
        model.set_weights(donor.get_weights())
    else:
        donor.save_weights(tmp_path / "donor.weights.h5")
        model.load_weights(tmp_path / "donor.weights.h5")
    loaded = [_np(w) for w in model.trainable_variables]
    model.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0, shuffle=False)
    # One step of size c·η·g from the loaded weights; pulled back towards the
    # old W⁰ the weights would move by the whole difference (order 1).
    for before, after in zip(loaded, model.trainable_variables):
        assert np.abs(_np(after) - before).max() < 0.01


def _applier(optimizer, variables):
    return lambda *grads: optimizer.apply(list(grads), variables)


@pytest.mark.parametrize("jit", [False, True])
def test_non_finite_gradient_entries_count_as_zero(jit):
    """No NaN or Inf reaches weights or state: such entries count as 0."""
    pairs = []
    for _ in range(2):
        a, b = _variable(name="a"), _variable(name="b")
        optimizer = kr.RMDA(0.1, 0.1, regularizer=kr.GroupLasso(0.05))
        optimizer.build([a, b])
        apply = _applier(optimizer, [a, b])
        pairs.append((optimizer, (a, b), tf.function(apply, jit_compile=True) if jit else apply))
    start = [_np(v).copy() for v in pairs[0][1]]
    for _, variables, _ in pairs[1:]:
        for v, w in zip(variables, start):
            v.assign(w)
    for step in range(3):
        good = rng.normal(size=(8, 4)).astype("float32")
        other = rng.normal(size=(8, 4)).astype("float32")
        bad, zeroed = good.copy(), good.copy()
        bad[2, 1], bad[5, 0], bad[7, 3] = np.nan, np.inf, -np.inf
        zeroed[2, 1] = zeroed[5, 0] = zeroed[7, 3] = 0.0
        pairs[0][2](bad, other)
        pairs[1][2](zeroed, other)
    (with_bad, bad_vars, _), (with_zeros, zero_vars, _) = pairs
    for x, y in zip(list(bad_vars) + with_bad.variables, list(zero_vars) + with_zeros.variables):
        assert np.isfinite(_np(x)).all()
        np.testing.assert_array_equal(_np(x), _np(y))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_zero_non_finite(dtype):
    gradient = np.asarray([1.0, np.nan, -2.0, np.inf, -np.inf, 6e4], dtype=dtype)
    expected = np.asarray([1.0, 0.0, -2.0, 0.0, 0.0, 6e4], dtype=dtype)
    np.testing.assert_array_equal(_np(zero_non_finite(ops.convert_to_tensor(gradient))), expected)


def test_weight_decay_is_coupled_l2():
    wd = 0.01
    v1, v2 = _variable(), _variable()
    v2.assign(_np(v1))
    with_decay = kr.RMDA(0.1, 0.1, regularizer=kr.GroupLasso(0.05), weight_decay=wd)
    by_hand = kr.RMDA(0.1, 0.1, regularizer=kr.GroupLasso(0.05))
    with_decay.build([v1])
    by_hand.build([v2])
    for _ in range(5):
        g = rng.normal(size=v1.shape).astype("float32")
        expected_g = g + wd * _np(v2)
        with_decay.apply([g], [v1])
        by_hand.apply([expected_g], [v2])
    np.testing.assert_allclose(_np(v1), _np(v2), atol=1e-6)


def test_exclude_from_weight_decay_is_honoured():
    v1, v2 = _variable(name="bias_like"), _variable(name="bias_like")
    v2.assign(_np(v1))
    excluded = kr.RMDA(0.1, weight_decay=0.5)
    excluded.exclude_from_weight_decay(var_names=["bias_like"])
    plain = kr.RMDA(0.1)
    excluded.build([v1])
    plain.build([v2])
    g = rng.normal(size=v1.shape).astype("float32")
    excluded.apply([g], [v1])
    plain.apply([g], [v2])
    np.testing.assert_array_equal(_np(v1), _np(v2))


def test_momentum_is_a_variable_that_compiled_steps_read():
    v = _variable()
    optimizer = kr.RMDA(0.1, 0.1, regularizer=kr.GroupLasso(0.05))
    optimizer.build([v])
    step = tf.function(lambda g: optimizer.apply([g], [v]), jit_compile=True)
    step(rng.normal(size=v.shape).astype("float32"))
    optimizer.momentum = 1.0  # a callback's change, after tracing
    assert float(_np(optimizer.momentum)) == 1.0
    step(rng.normal(size=v.shape).astype("float32"))
    np.testing.assert_allclose(_np(v), _np(optimizer.prox_point(v)), rtol=0, atol=1e-6)
    assert step.experimental_get_tracing_count() == 1


def test_sgd_looking_momentum_warns_and_bad_values_raise():
    with pytest.warns(UserWarning, match="weight c of the NEW point"):
        kr.RMDA(momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kr.RMDA(momentum=1.0)
        kr.RMDA(momentum=0.1)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=f"Received: momentum={bad}"):
            kr.RMDA(momentum=bad)
    optimizer = kr.RMDA()
    with pytest.raises(ValueError, match="Received: momentum=2.0"):
        optimizer.momentum = 2.0
    assert float(_np(optimizer.momentum)) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"learning_rate": -0.1}, "Received: learning_rate=-0.1"),
        ({"weight_decay": -1.0}, "Received: weight_decay=-1.0"),
        ({"use_ema": True}, "use_ema=True"),
        ({"regularizer": "group_lasso"}, "Received: regularizer='group_lasso'"),
        ({"groups": "filters"}, "Received: groups='filters'"),
    ],
)
def test_bad_arguments_raise_with_the_received_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kr.RMDA(**kwargs)


@pytest.mark.parametrize("cls", [kr.GroupLasso, kr.L1, kr.NuclearNorm])
def test_negative_strength_raises(cls):
    with pytest.raises(ValueError, match="Received: strength=-1"):
        cls(-1)


def test_nuclear_norm_on_a_vector_fails_at_build():
    v = _variable(shape=(5,), grouping=groups.Elementwise(), name="bias")
    with pytest.raises(ValueError, match="NuclearNorm.*'bias'"):
        kr.RMDA(regularizer=kr.NuclearNorm(0.1)).build([v])


def test_penalty_is_lambda_psi():
    v = _variable(shape=(3, 2))
    v.assign(np.array([[3, 4], [0, 0], [1, 0]], "float32"))
    optimizer = kr.RMDA(regularizer=kr.GroupLasso(0.5))
    optimizer.build([v])
    assert float(optimizer.penalty()) == pytest.approx(0.5 * np.sqrt(2) * 6.0)


def test_clipping_arguments_clip_the_gradient():
    v1, v2 = _variable(), _variable()
    v2.assign(_np(v1))
    clipped = kr.RMDA(0.1, clipvalue=0.1, regularizer=kr.GroupLasso(0.05))
    by_hand = kr.RMDA(0.1, regularizer=kr.GroupLasso(0.05))
    clipped.build([v1])
    by_hand.build([v2])
    g = rng.normal(size=v1.shape).astype("float32")
    clipped.apply([g], [v1])
    by_hand.apply([np.clip(g, -0.1, 0.1)], [v2])
    np.testing.assert_array_equal(_np(v1), _np(v2))


@pytest.mark.parametrize(
    "kwargs",
    [{"clipnorm": 1.0}, {"global_clipnorm": 1.0}, {"gradient_accumulation_steps": 2},
     {"loss_scale_factor": 128.0}],
)
def test_base_arguments_work_in_fit(kwargs):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    model.compile(kr.RMDA(0.05, regularizer=kr.GroupLasso(1e-3), **kwargs),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(*_data(), batch_size=32, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    # t counts updates: one per `gradient_accumulation_steps` calls.
    updates = 4 * 2 // kwargs.get("gradient_accumulation_steps", 1)
    assert float(_np(model.optimizer.stage_step)) == updates


def test_nuclear_norm_trains_under_xla_on_a_large_kernel():
    """XLA's CPU SVD takes ~15 s for a 400×250 kernel; the Gram-eigh prox does not."""
    model = keras.Sequential([keras.Input((400,)), keras.layers.Dense(250, name="dense")])
    model.compile(kr.RMDA(0.1, 1.0, regularizer=kr.NuclearNorm(5.0)), "mse", jit_compile=True)
    x = np.random.default_rng(0).normal(size=(64, 400)).astype("float32")
    model.fit(x, np.zeros((64, 250), "float32"), batch_size=32, epochs=2, verbose=0)
    singular = np.linalg.svd(_np(model.layers[0].kernel).astype(np.float64), compute_uv=False)
    assert np.isfinite(singular).all()
    assert np.sum(singular > 1e-4 * singular.max()) < 250  # the prox cut the rank


def test_group_norms_in_runs_or_not_give_the_same_steps():
    # GroupLasso sums long last axes in runs where Keras lists no accelerator
    # (XLA's CPU layout) and in one sum elsewhere: the steps must agree to
    # rounding, and the same groups must be zero.
    initial = rng.normal(size=(512, 160)).astype("float32")  # ≥ RUNS_MIN_SIZE entries
    initial[::3] *= 0.01
    gradients = [0.01 * rng.normal(size=initial.shape).astype("float32") for _ in range(4)]
    results = []
    for in_runs in (True, False):
        v = keras.Variable(initial, name="kernel")
        v.constraint = groups.InputUnits()
        regularizer = kr.GroupLasso(0.05)
        regularizer.sums_in_runs = in_runs
        optimizer = kr.RMDA(0.1, 1.0, regularizer=regularizer)
        optimizer.build([v])
        step = tf.function(lambda g: optimizer.apply([g], [v]), jit_compile=True)
        for g in gradients:
            step(g)
        results.append(_np(v))
    np.testing.assert_allclose(results[0], results[1], atol=1e-6)
    zero_rows = _zero_rows(results[0])
    assert 0 < zero_rows.sum() < len(zero_rows)
    np.testing.assert_array_equal(zero_rows, _zero_rows(results[1]))
