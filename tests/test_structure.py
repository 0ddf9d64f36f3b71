"""structure_report: sparsities, removable channels, params and FLOPs by hand."""

import json

import keras
import numpy as np
import pytest

import keras_rmda
from keras_rmda import groups
from keras_rmda import structure

L = keras.layers


def _planted_model():
    """conv (3,3,2,4) on 6x6x2 -> 4x4x4 -> Flatten (64) -> dense (64, 3)."""
    rng = np.random.default_rng(0)
    model = keras.Sequential(
        [keras.Input((6, 6, 2)), L.Conv2D(4, 3), L.ReLU(), L.Flatten(), L.Dense(3)]
    )
    conv, dense = model.layers[0], model.layers[3]
    kernel = rng.uniform(0.5, 1.0, (3, 3, 2, 4)) * rng.choice([-1, 1], (3, 3, 2, 4))
    kernel[:, :, 1, :] = 0.0  # input channel 1 of the conv: one zero group
    kernel[0, 0, 0, 0] = 0.0  # a lone zero, in no zero group
    conv.kernel.assign(kernel.astype("float32"))
    dense_kernel = rng.uniform(0.5, 1.0, (64, 3)).astype("float32")
    dense_kernel[2::4] = 0.0  # every position of conv channel 2: 16 rows
    dense_kernel[0] = 0.0  # one position of channel 0
    dense.kernel.assign(dense_kernel)
    return model


def test_report_matches_hand_counts():
    report = structure.structure_report(_planted_model())
    total = report.as_dict()["total"]
    # groups: conv 2 input channels (1 zero), dense 64 input units (17 zero)
    assert total["groups"] == 2 + 64
    assert total["zero_groups"] == 1 + 17
    assert total["group_sparsity"] == pytest.approx(18 / 66)
    # group sizes: conv 3*3*4 = 36, dense 3
    assert total["weighted_group_sparsity"] == pytest.approx((36 + 17 * 3) / (72 + 192))
    # kernels only: the lone zero counts, biases (all zero) do not
    assert total["unstructured_sparsity"] == pytest.approx((36 + 1 + 17 * 3) / (72 + 192))

    rows = {row["name"]: row for row in report.layers}
    conv, dense = rows["conv2d"], rows["dense"]
    assert conv["group_sparsity"] == pytest.approx(0.5)
    assert dense["group_sparsity"] == pytest.approx(17 / 64)
    # Only conv channel 2 is unread (channel 0 is read at 15 positions); the
    # input channel 1 of the conv is a model input and stays.
    assert conv["removable_channels"] == 1 and total["removable_channels"] == 1
    assert (conv["channels"], conv["channels_after"]) == (4, 3)
    assert rows["flatten"]["channels_after"] == 48
    assert conv["params"] == 3 * 3 * 2 * 4 + 4
    assert conv["params_after"] == 3 * 3 * 2 * 3 + 3
    assert dense["params"] == 64 * 3 + 3
    assert dense["params_after"] == 48 * 3 + 3
    assert conv["flops"] == 16 * 3 * 3 * 2 * 4
    assert conv["flops_after"] == 16 * 3 * 3 * 2 * 3
    assert dense["flops"] == 64 * 3 and dense["flops_after"] == 48 * 3
    assert total["params"] == 76 + 195 and total["params_after"] == 57 + 147
    assert total["flops"] == 1152 + 192 and total["flops_after"] == 864 + 144
    json.dumps(report.as_dict())  # plain data


def test_table_prints_every_layer_and_total():
    model = _planted_model()
    report = structure.structure_report(model)
    text = str(report)
    for name in [layer.name for layer in model.layers] + ["total", "1152->864"]:
        assert name in text
    assert text == report.table()


def test_zero_group_mask_helpers_by_hand():
    w = np.ones((2, 2, 3, 4), "float32")
    w[:, :, 1, :] = 0.0
    w[0, 0, 2, 0] = 0.0
    resolved = groups.InputChannels().resolve(w.shape)
    np.testing.assert_array_equal(structure.zero_group_mask(w, resolved), [False, True, False])
    np.testing.assert_allclose(
        structure.group_norms(w, resolved), [4.0, 0.0, np.sqrt(15.0)], rtol=1e-6
    )
    elementwise = groups.Elementwise().resolve(w.shape)
    assert structure.zero_group_mask(w, elementwise).sum() == 2 * 2 * 4 + 1


def test_declared_groupings_always_count_auto_only_default_names():
    model = keras.Sequential(
        [
            keras.Input((5,)),
            L.Dense(4, name="body"),  # renamed: "auto" cannot classify it
            L.Dense(3, name="head", kernel_constraint=groups.InputUnits()),
            L.Dense(2),  # default name: auto gives InputUnits
        ]
    )
    for layer in model.layers:
        kernel = np.ones(layer.kernel.shape, "float32")
        kernel[0] = 0.0
        layer.kernel.assign(kernel)
    masks = structure.zero_group_masks(model)
    assert sorted(masks) == sorted([model.layers[1].kernel.path, model.layers[2].kernel.path])
    np.testing.assert_array_equal(masks[model.layers[1].kernel.path], [True, False, False, False])
    total = structure.structure_report(model).total
    assert (total["groups"], total["zero_groups"]) == (4 + 3, 2)


def test_reads_the_prox_point_of_a_built_rmda_optimizer():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6,)), L.Dense(8), L.Dense(1)])
    model.compile(
        optimizer=keras_rmda.RMDA(
            learning_rate=0.1, momentum=0.1, regularizer=keras_rmda.GroupLasso(3.0)
        ),
        loss="mse",
    )
    x = np.random.default_rng(0).standard_normal((16, 6)).astype("float32")
    model.train_on_batch(x, x[:, :1])
    optimizer = keras_rmda.proximal_optimizer_of(model)
    kernel = model.layers[0].kernel
    prox = keras.ops.convert_to_numpy(optimizer.prox_point(kernel))
    expected = ~np.any(prox != 0, axis=1)
    assert expected.any(), "the test needs a zero group at the prox point"
    masks = structure.zero_group_masks(model)
    np.testing.assert_array_equal(masks[kernel.path], expected)
    # The variables themselves (momentum 0.1) are not yet exactly zero.
    at_variables = structure.zero_group_masks(model, use_prox_point=False)
    assert not at_variables[kernel.path].any()
    report = structure.structure_report(model)
    assert report.layers[0]["zero_groups"] == expected.sum()


def test_unbuilt_model_is_a_clear_error():
    with pytest.raises(ValueError, match="built"):
        structure.structure_report(keras.Sequential([L.Dense(2)], name="lazy"))
