"""Grouping declarations: resolution, validation, auto rules, serialisation."""

import keras
import numpy as np
import pytest

import keras_rmda as kr
from keras_rmda import groups


def test_resolution_matches_the_paper_table():
    conv = groups.InputChannels().resolve((3, 3, 16, 32))
    assert conv.reduce_axes == (0, 1, 3) and conv.num_groups == 16
    assert conv.group_size == 3 * 3 * 32 and conv.group_weight == pytest.approx(np.sqrt(288))
    dense = groups.InputUnits().resolve((100, 10))
    assert dense.reduce_axes == (1,) and dense.num_groups == 100 and dense.group_size == 10
    assert groups.OutputChannels().resolve((5, 8, 4)).num_groups == 4
    assert groups.OutputUnits().resolve((100, 10)).reduce_axes == (0,)
    assert groups.Elementwise().resolve((4, 5)).group_size == 1
    assert groups.AlongAxis(-1).resolve((3, 3, 4, 2)).num_groups == 2
    assert groups.Unregularized().resolve((4, 5)) is None


@pytest.mark.parametrize(
    "grouping,shape",
    [(groups.InputChannels(), (10,)), (groups.InputUnits(), (3, 3, 4, 8)),
     (groups.OutputUnits(), (7,)), (groups.AlongAxis(3), (4, 5))],
)
def test_unfit_grouping_is_rejected_with_names(grouping, shape):
    with pytest.raises(ValueError, match=type(grouping).__name__) as info:
        grouping.resolve(shape, "model/layer/bias")
    assert "model/layer/bias" in str(info.value)


def test_unfit_grouping_fails_at_build_before_any_state():
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(3, bias_constraint=groups.InputChannels()),
    ])
    optimizer = kr.RMDA(regularizer=kr.GroupLasso(1e-3))
    with pytest.raises(ValueError, match=r"InputChannels.*dense/bias"):
        optimizer.build(model.trainable_variables)
    assert not optimizer.built and len(optimizer.variables) == 3  # iterations, lr, momentum


@pytest.mark.parametrize("bad", [-1.0, "x", None])
def test_bad_strength_is_rejected(bad):
    with pytest.raises(ValueError, match="Received: strength"):
        groups.InputUnits(strength=bad)


def test_groupings_leave_weights_unchanged():
    w = np.random.default_rng(0).normal(size=(3, 3, 2, 4)).astype("float32")
    for grouping in (groups.InputChannels(), groups.Elementwise(), groups.Unregularized()):
        np.testing.assert_array_equal(grouping(w), w)


def _model():
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3),
        keras.layers.Conv2D(4, 3, name="renamed"),
        keras.layers.Conv2DTranspose(4, 3),
        keras.layers.DepthwiseConv2D(3),
        keras.layers.BatchNormalization(),
        keras.layers.Flatten(),
        keras.layers.Dense(6),
        keras.layers.Dense(2, kernel_constraint=groups.OutputUnits(strength=2.0)),
    ])


def test_auto_claims_only_kernels_it_can_classify():
    model = _model()
    choice = {v.path: groups.grouping_of(v, "auto") for v in model.trainable_variables}
    assert choice["sequential/conv2d/kernel"] == groups.InputChannels()
    assert choice["sequential/dense/kernel"] == groups.InputUnits()
    assert choice["sequential/dense_1/kernel"] == groups.OutputUnits(strength=2.0)  # declared wins
    for path in ("sequential/renamed/kernel", "sequential/conv2d_transpose/kernel",
                 "sequential/depthwise_conv2d/kernel", "sequential/conv2d/bias",
                 "sequential/batch_normalization/gamma"):
        assert choice[path] == groups.Unregularized(), path
    none_mode = {v.path: groups.grouping_of(v, None) for v in model.trainable_variables}
    assert none_mode["sequential/conv2d/kernel"] == groups.Unregularized()
    assert none_mode["sequential/dense_1/kernel"] == groups.OutputUnits(strength=2.0)


def test_auto_warns_about_kernels_it_left_out():
    model = _model()
    with pytest.warns(UserWarning, match="renamed/kernel"):
        kr.RMDA(regularizer=kr.GroupLasso(1e-3)).build(model.trainable_variables)


def test_declare_auto_uses_layer_types():
    model = _model()
    attached = groups.declare_auto(model)
    assert attached["sequential/renamed/kernel"] == groups.InputChannels()
    assert attached["sequential/conv2d_transpose/kernel"] == groups.AlongAxis(-1)
    assert attached["sequential/depthwise_conv2d/kernel"] == groups.InputChannels()
    assert "sequential/dense_1/kernel" not in attached  # existing constraint kept
    assert model.get_layer("renamed").get_config()["kernel_constraint"] is not None


def test_groupings_survive_keras_save_and_load(tmp_path):
    model = _model()
    groups.declare_auto(model)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for original, restored in zip(model.trainable_variables, loaded.trainable_variables):
        assert restored.constraint == original.constraint, original.path


def test_unknown_groups_value_is_rejected():
    with pytest.raises(ValueError, match="Received: groups='channels'"):
        kr.RMDA(groups="channels")


# --- a grouping with an inner Keras constraint --------------------------------


def test_inner_constraint_is_applied_by_the_grouping():
    w = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    grouping = groups.InputUnits(constraint=keras.constraints.NonNeg())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(grouping(w)), np.maximum(w, 0))
    assert grouping == groups.InputUnits(constraint="non_neg")  # by name, as Keras takes it
    assert grouping != groups.InputUnits()
    assert len({grouping, groups.InputUnits(constraint="non_neg")}) == 1
    assert repr(grouping) == "InputUnits(strength=1.0, constraint=NonNeg())"


@pytest.mark.parametrize("bad", [groups.InputUnits(), "no_such_constraint", 3])
def test_unfit_inner_constraint_is_rejected(bad):
    with pytest.raises(ValueError, match="Received: constraint="):
        groups.InputChannels(constraint=bad)


def _dense_model(constraint, name):
    keras.utils.set_random_seed(1)
    return keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, activation="relu", name=name, kernel_constraint=constraint),
        keras.layers.Dense(3, name="head", kernel_constraint=groups.Unregularized()),
    ])


def _fit(model, finalize=True):
    # finalize=True: the prox point fit leaves in the model satisfies the
    # constraint too, bare or wrapped alike.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0).astype("int32")
    optimizer = kr.RMDA(0.3, momentum=0.5, regularizer=kr.GroupLasso(3e-2), finalize=finalize)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0)
    return keras.ops.convert_to_numpy(model.layers[0].kernel)


def test_wrapped_constraint_acts_exactly_as_the_bare_one():
    # Bare NonNeg on a default-named layer ("auto" groups it) against the same
    # constraint inside the grouping, on a renamed layer: the same weights.
    bare = _fit(_dense_model(keras.constraints.NonNeg(), "dense_7"))
    wrapped_model = _dense_model(groups.InputUnits(constraint=keras.constraints.NonNeg()),
                                 "renamed")
    wrapped = _fit(wrapped_model)
    np.testing.assert_array_equal(wrapped, bare)
    assert wrapped.min() >= 0.0 and wrapped.max() > 0.0
    assert wrapped_model.optimizer.groups_of(wrapped_model.layers[0].kernel) is not None


def test_auto_warns_about_every_kernel_it_left_out_constrained_ones_too():
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, name="plain"),
        keras.layers.Dense(8, name="nonneg", kernel_constraint=keras.constraints.NonNeg()),
        keras.layers.Dense(8, name="wrapped",
                           kernel_constraint=groups.InputUnits(constraint="non_neg")),
        keras.layers.Dense(3, name="off",
                           kernel_constraint=groups.Unregularized(constraint="non_neg")),
    ])
    with pytest.warns(UserWarning) as record:
        kr.RMDA(regularizer=kr.GroupLasso(1e-3)).build(model.trainable_variables)
    (message,) = [str(w.message) for w in record if "unregularised" in str(w.message)]
    assert "plain/kernel" in message and "nonneg/kernel (constraint NonNeg)" in message
    assert "wrapped/kernel" not in message and "off/kernel" not in message


def test_declare_auto_wraps_an_existing_constraint():
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, name="nonneg", kernel_constraint=keras.constraints.NonNeg()),
        keras.layers.Dense(3, name="declared",
                           kernel_constraint=groups.OutputUnits(constraint="non_neg")),
    ])
    attached = groups.declare_auto(model)
    nonneg = groups.InputUnits(constraint=keras.constraints.NonNeg())
    assert attached == {"sequential/nonneg/kernel": nonneg}
    assert model.get_layer("nonneg").kernel.constraint == nonneg
    assert model.get_layer("declared").kernel.constraint == groups.OutputUnits(
        constraint="non_neg")  # a declared grouping is kept
    attached = groups.declare_auto(model, overwrite=True)
    # overwrite replaces the grouping but keeps the user's constraint inside it
    assert attached["sequential/declared/kernel"] == groups.InputUnits(constraint="non_neg")


def test_inner_constraint_survives_keras_save_and_load(tmp_path):
    max_norm = keras.constraints.MaxNorm(0.5, axis=1)
    model = _dense_model(groups.InputUnits(strength=2.0, constraint=max_norm), "renamed")
    _fit(model)
    model.save(tmp_path / "m.keras")
    keras.backend.clear_session()
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    restored = loaded.layers[0].kernel.constraint
    assert restored == groups.InputUnits(strength=2.0, constraint=max_norm)
    assert isinstance(restored.constraint, keras.constraints.MaxNorm)
    assert loaded.layers[0].get_config()["kernel_constraint"]["config"]["constraint"] is not None
    w = np.random.default_rng(0).normal(size=(6, 8)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored(w)),
                               keras.ops.convert_to_numpy(max_norm(w)), rtol=1e-6)
    # The loaded optimizer still applies it: every row norm stays <= 0.5.
    rng = np.random.default_rng(1)
    loaded.fit(rng.normal(size=(32, 6)).astype("float32"), rng.integers(0, 3, 32),
               epochs=1, verbose=0)
    rows = np.linalg.norm(keras.ops.convert_to_numpy(loaded.layers[0].kernel), axis=1)
    assert rows.max() <= 0.5 + 1e-5
