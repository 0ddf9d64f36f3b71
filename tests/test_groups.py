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
