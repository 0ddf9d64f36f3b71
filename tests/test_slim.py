"""slim: same outputs, the expected smaller shapes, conservative elsewhere."""

import importlib
import json

import keras
import numpy as np
import pytest

import keras_rmda
from keras_rmda import groups

# The module, even where the package exports the function under its name.
slim_lib = importlib.import_module("keras_rmda.slim")

L = keras.layers


def _randomize(model, seed=0):
    """Non-zero random weights everywhere (positive BN variances)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = rng.uniform(0.2, 1.0, variable.shape) * rng.choice([-1, 1], variable.shape)
        if "variance" in variable.path:
            value = np.abs(value)
        variable.assign(value.astype(variable.dtype))


def _zero_input_groups(layer, channels):
    kernel = keras.ops.convert_to_numpy(layer.kernel).copy()
    kernel[..., channels, :] = 0.0
    layer.kernel.assign(kernel)


def _slim_and_compare(model, batch=3):
    slim_model = slim_lib.slim(model)
    x = [
        np.random.default_rng(7).standard_normal((batch,) + tuple(t.shape[1:])).astype("float32")
        for t in model.inputs
    ]
    x = x[0] if len(x) == 1 else x
    expected = keras.ops.convert_to_numpy(model(x))
    got = keras.ops.convert_to_numpy(slim_model(x))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    return {layer.name: layer for layer in slim_model.layers}


def test_conv_bn_relu_conv_gap_head():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="c1", kernel_constraint=groups.InputChannels())(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU()(x)
    x = L.Dropout(0.5)(x)
    x = L.Conv2D(5, 3, name="c2", activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    outputs = L.Dense(2, name="head", kernel_constraint=groups.InputUnits())(x)
    model = keras.Model(inputs, outputs)
    _randomize(model)
    _zero_input_groups(model.get_layer("c2"), [1, 3, 4])
    _zero_input_groups(model.get_layer("head"), [0])
    model.compile(optimizer=keras_rmda.RMDA(), loss="mse")
    layers = _slim_and_compare(model)
    assert layers["c1"].kernel.shape == (3, 3, 3, 3)
    assert layers["bn"].gamma.shape == (3,) and layers["bn"].moving_variance.shape == (3,)
    assert layers["c2"].kernel.shape == (3, 3, 3, 4)
    assert layers["head"].kernel.shape == (4, 2)
    slim_model = keras.Model(layers["c1"].input, layers["head"].output)
    # Plain Keras: no keras_rmda constraint anywhere, no optimizer.
    assert "keras_rmda" not in json.dumps(slim_model.get_config(), default=str)
    assert all(getattr(w, "constraint", None) is None for w in slim_model.weights)
    assert layers["c1"].kernel_constraint is None


def test_conv1d_chain_with_flatten_head():
    model = keras.Sequential(
        [keras.Input((10, 2)), L.Conv1D(5, 3, name="a"), L.ELU(), L.MaxPooling1D(),
         L.Conv1D(4, 2, name="b"), L.Flatten(), L.Dense(3, name="head")]
    )
    _randomize(model)
    _zero_input_groups(model.get_layer("b"), [0, 2])
    head = model.get_layer("head")  # flatten of (3, 4): channel k at k, k+4, k+8
    _zero_input_groups(head, [1, 5, 9, 3])  # channel 1 fully, channel 3 once
    layers = _slim_and_compare(model)
    assert layers["a"].kernel.shape == (3, 2, 3)
    assert layers["b"].kernel.shape == (2, 3, 3)
    assert layers["head"].kernel.shape == (9, 3)


def test_conv3d_pooling_gap():
    model = keras.Sequential(
        [keras.Input((6, 6, 6, 2)), L.Conv3D(4, 3, padding="same", name="a"),
         L.Activation("relu"), L.AveragePooling3D(2), L.Conv3D(3, 2, name="b"),
         L.GlobalMaxPooling3D(), L.Dense(2, name="head")]
    )
    _randomize(model)
    _zero_input_groups(model.get_layer("b"), [2])
    layers = _slim_and_compare(model)
    assert layers["a"].kernel.shape == (3, 3, 3, 2, 3)
    assert layers["b"].kernel.shape == (2, 2, 2, 3, 3)


def test_dense_chain():
    model = keras.Sequential(
        [keras.Input((7,)), L.Dense(8, activation="tanh", name="a"), L.Dropout(0.3),
         L.Dense(6, activation="relu", name="b"), L.Dense(2, name="c")]
    )
    _randomize(model)
    _zero_input_groups(model.get_layer("b"), [0, 1, 7])
    _zero_input_groups(model.get_layer("c"), [5])
    _zero_input_groups(model.get_layer("a"), [0])  # a model input: stays
    layers = _slim_and_compare(model)
    assert layers["a"].kernel.shape == (7, 5)
    assert layers["b"].kernel.shape == (5, 5)
    assert layers["c"].kernel.shape == (5, 2)


def _residual_model():
    inputs = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1, name="stem")(inputs)
    y = L.ReLU()(x)
    y = L.Conv2D(4, 3, padding="same", name="branch")(y)
    y = L.BatchNormalization(name="bn")(y)
    z = L.Add()([x, y])
    z = L.Conv2D(3, 1, name="after")(z)
    outputs = L.Dense(2, name="head")(L.GlobalAveragePooling2D()(z))
    return keras.Model(inputs, outputs)


def test_residual_add_removes_only_channels_dead_in_every_branch():
    model = _residual_model()
    _randomize(model)
    # Channel 0: unread after the Add, but the branch conv reads it from the
    # stem: kept. Channel 1: unread by both consumers: removed everywhere.
    _zero_input_groups(model.get_layer("after"), [0, 1])
    _zero_input_groups(model.get_layer("branch"), [1, 2])
    layers = _slim_and_compare(model)
    assert layers["stem"].kernel.shape == (1, 1, 3, 3)
    assert layers["branch"].kernel.shape == (3, 3, 3, 3)
    assert layers["bn"].beta.shape == (3,)
    assert layers["after"].kernel.shape == (1, 1, 3, 3)


def test_concatenate_offsets():
    inputs = keras.Input((5, 5, 2))
    a = L.Conv2D(3, 3, padding="same", name="a")(inputs)
    b = L.Conv2D(2, 3, padding="same", name="b")(inputs)
    c = L.Concatenate()([a, b])
    outputs = L.Dense(1, name="head")(L.Flatten()(L.Conv2D(2, 1, name="c")(c)))
    model = keras.Model(inputs, outputs)
    _randomize(model)
    _zero_input_groups(model.get_layer("c"), [1, 4])  # a's channel 1, b's channel 1
    layers = _slim_and_compare(model)
    assert layers["a"].kernel.shape == (3, 3, 2, 2)
    assert layers["b"].kernel.shape == (3, 3, 2, 1)
    assert layers["c"].kernel.shape == (1, 1, 3, 2)


@pytest.mark.parametrize(
    "between",
    [lambda: L.LayerNormalization(), lambda: L.Activation("softmax"), lambda: L.Reshape((4, 4, 4))],
    ids=["layer_norm", "softmax", "reshape"],
)
def test_unknown_layers_stop_removal(between):
    model = keras.Sequential(
        [keras.Input((4, 4, 2)), L.Conv2D(4, 1, name="a"), between(),
         L.Conv2D(3, 1, name="b"), L.GlobalAveragePooling2D(), L.Dense(2)]
    )
    _randomize(model)
    _zero_input_groups(model.get_layer("b"), [0, 1])
    layers = _slim_and_compare(model)
    assert layers["a"].kernel.shape == (1, 1, 2, 4)
    assert layers["b"].kernel.shape == (1, 1, 4, 3)


def test_channel_mixing_activation_keeps_producer_outputs():
    model = keras.Sequential(
        [keras.Input((5,)), L.Dense(4, activation="softmax", name="a"), L.Dense(2, name="b")]
    )
    _randomize(model)
    _zero_input_groups(model.get_layer("b"), [0, 2])
    layers = _slim_and_compare(model)
    assert layers["a"].kernel.shape == (5, 4)


def test_nested_model_is_copied_unchanged():
    inner = keras.Sequential([keras.Input((4,)), L.Dense(3, kernel_constraint=groups.InputUnits())])
    inputs = keras.Input((5,))
    x = L.Dense(4, name="a")(inputs)
    outputs = L.Dense(2, name="b")(inner(x))
    model = keras.Model(inputs, outputs)
    _randomize(model)
    _zero_input_groups(inner.layers[0], [1])
    layers = _slim_and_compare(model)
    assert layers["a"].kernel.shape == (5, 4)
    assert "keras_rmda" not in json.dumps(layers[inner.name].get_config(), default=str)


def test_all_channels_unread_keeps_one():
    model = keras.Sequential([keras.Input((3,)), L.Dense(4, name="a"), L.Dense(2, name="b")])
    _randomize(model)
    _zero_input_groups(model.get_layer("b"), [0, 1, 2, 3])
    layers = _slim_and_compare(model)
    assert layers["a"].kernel.shape == (3, 1)


def test_reads_prox_point_and_leaves_the_model_unchanged():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((6,)), L.Dense(8), L.ReLU(), L.Dense(1)])
    model.compile(keras_rmda.RMDA(momentum=0.1, regularizer=keras_rmda.GroupLasso(4.0)), "mse")
    x = np.random.default_rng(0).standard_normal((16, 6)).astype("float32")
    model.train_on_batch(x, x[:, :1])
    before = [keras.ops.convert_to_numpy(w) for w in model.weights]
    optimizer = keras_rmda.proximal_optimizer_of(model)
    prox = keras.ops.convert_to_numpy(optimizer.prox_point(model.layers[2].kernel))
    unread = int((~np.any(prox != 0, axis=1)).sum())
    assert 0 < unread < 8, "the test needs some zero groups at the prox point"
    slim_model = slim_lib.slim(model)  # check=True compares at the prox point
    assert slim_model.layers[1].kernel.shape == (6, 8 - unread)
    assert getattr(slim_model, "optimizer", None) is None
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))


def test_failed_check_raises(monkeypatch):
    model = keras.Sequential([keras.Input((3,)), L.Dense(4), L.Dense(2)])
    _randomize(model)
    real = slim_lib._slimmed_config_and_weights

    def corrupted(*args):
        config, weights = real(*args)
        return config, [w + 1.0 for w in weights]

    monkeypatch.setattr(slim_lib, "_slimmed_config_and_weights", corrupted)
    with pytest.raises(RuntimeError, match="changed output"):
        slim_lib.slim(model)


def test_shared_layer_and_symbolic_less_models_are_clear_errors():
    shared = L.Dense(3, name="shared")
    inputs = keras.Input((3,))
    model = keras.Model(inputs, shared(shared(inputs)))
    with pytest.raises(ValueError, match=r"layer 'shared' \(Dense\) is called 2 times"):
        slim_lib.slim(model)
    with pytest.raises(ValueError, match="symbolic inputs"):
        slim_lib.slim(keras.Sequential([L.Dense(2)], name="lazy"))
