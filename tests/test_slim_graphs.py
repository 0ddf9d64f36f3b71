"""slim on the graphs people have: loaded Sequentials, keras.ops nodes,
depthwise convolutions, ConvNeXt; and a clear error where it cannot."""

import importlib

import keras
import numpy as np
import pytest

from keras_rmda.structure import structure_report
from test_slim import _randomize, _slim_and_compare, _zero_input_groups

slim_lib = importlib.import_module("keras_rmda.slim")

L = keras.layers


def _sequential_convnet():
    return keras.Sequential(
        [keras.Input((8, 8, 3), name="pixels"), L.Conv2D(6, 3, padding="same", name="c1"),
         L.BatchNormalization(name="bn"), L.ReLU(), L.Conv2D(5, 3, name="c2"),
         L.GlobalAveragePooling2D(), L.Dense(2, name="head")]
    )


def test_sequential_loaded_from_a_keras_file(tmp_path):
    model = _sequential_convnet()
    _randomize(model)
    _zero_input_groups(model.get_layer("c2"), [1, 3, 4])
    model.save(tmp_path / "seq.keras")
    loaded = keras.saving.load_model(tmp_path / "seq.keras")
    # What made slim fail: loading builds a Sequential several times, and
    # each build calls every layer again.
    assert len(loaded.get_layer("c1")._inbound_nodes) > 1
    layers = _slim_and_compare(loaded)
    assert layers["c1"].kernel.shape == (3, 3, 3, 3)
    assert layers["bn"].gamma.shape == (3,)
    assert layers["c2"].kernel.shape == (3, 3, 3, 5)
    slim_model = slim_lib.slim(loaded)
    assert slim_model.count_params() < loaded.count_params()
    assert slim_model.inputs[0].name == "pixels"  # serving signatures keep their name
    x = np.random.default_rng(3).standard_normal((2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(slim_model(x)), keras.ops.convert_to_numpy(model(x)),
        rtol=1e-4, atol=1e-5,
    )


def test_keras_ops_residual_and_activation():
    inputs = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1, name="stem")(inputs)
    y = L.Conv2D(4, 3, padding="same", name="branch")(keras.ops.relu(x))
    z = L.Conv2D(3, 1, name="after")(x + 0.5 * y)  # `+`, `*`: keras.ops nodes, not layers
    outputs = L.Dense(2, name="head")(L.GlobalAveragePooling2D()(z))
    model = keras.Model(inputs, outputs)
    _randomize(model)
    _zero_input_groups(model.get_layer("after"), [0, 1])
    _zero_input_groups(model.get_layer("branch"), [1, 2])
    layers = _slim_and_compare(model)
    # Channel 0 is read by the branch: kept; channel 1 by no one: removed.
    assert layers["stem"].kernel.shape == (1, 1, 3, 3)
    assert layers["branch"].kernel.shape == (3, 3, 3, 3)
    assert layers["after"].kernel.shape == (1, 1, 3, 3)


def test_keras_ops_with_a_per_channel_constant_stop_removal():
    inputs = keras.Input((4, 4, 2))
    x = L.Conv2D(4, 1, name="a")(inputs)
    x = x * np.array([1.0, 2.0, 3.0, 4.0], dtype="float32")  # not sliced with the channels
    outputs = L.Conv2D(3, 1, name="b")(x)
    model = keras.Model(inputs, outputs)
    _randomize(model)
    _zero_input_groups(model.get_layer("b"), [0, 1])
    layers = _slim_and_compare(model)
    assert layers["a"].kernel.shape == (1, 1, 2, 4)


@pytest.mark.parametrize(
    "depthwise",
    [lambda: L.DepthwiseConv2D(3, padding="same", name="dw"),
     lambda: L.Conv2D(12, 3, padding="same", groups=12, name="dw")],
    ids=["DepthwiseConv2D", "Conv2D_groups"],
)
def test_inverted_residual_expansion_slims_through_the_depthwise_conv(depthwise):
    model = keras.Sequential(
        [keras.Input((6, 6, 4)), L.Conv2D(12, 1, name="expand"), L.BatchNormalization(name="bn"),
         L.ReLU(6.0), depthwise(), L.Activation("relu"), L.Conv2D(4, 1, name="project"),
         L.GlobalAveragePooling2D(), L.Dense(2)]
    )
    _randomize(model)
    _zero_input_groups(model.get_layer("project"), list(range(0, 12, 2)))
    predicted = {row["name"]: row for row in structure_report(model).layers}
    layers = _slim_and_compare(model)
    # The report predicts what slim does to the channelwise layer.
    assert predicted["dw"]["channels_after"] == 6
    assert predicted["dw"]["params_after"] == layers["dw"].count_params()
    assert layers["expand"].kernel.shape == (1, 1, 4, 6)
    assert layers["bn"].moving_mean.shape == (6,)
    assert layers["dw"].bias.shape == (6,)
    assert layers["project"].kernel.shape == (1, 1, 6, 4)


@keras.saving.register_keras_serializable(package="test_slim_graphs")
class LayerScale(L.Layer):
    """ConvNeXt's per-channel scale, as a user's own layer (unknown to slim)."""

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.gamma


def _convnext_block(x, dim, name):
    y = L.Conv2D(dim, 7, padding="same", groups=dim, name=f"{name}_dw")(x)
    y = L.LayerNormalization(epsilon=1e-6, name=f"{name}_ln")(y)
    y = L.Dense(4 * dim, name=f"{name}_pw1")(y)  # a 1x1 convolution on a 4-D tensor
    y = L.Activation("gelu")(y)
    y = L.Dense(dim, name=f"{name}_pw2")(y)
    return x + LayerScale(name=f"{name}_scale")(y)


def test_convnext_style_blocks_slim_their_mlp_behind_layer_norms():
    inputs = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 4, strides=4, name="stem")(inputs)
    x = L.LayerNormalization(name="stem_ln")(x)
    x = _convnext_block(x, 8, "s0b0")
    x = _convnext_block(x, 8, "s0b1")
    x = L.LayerNormalization(name="down_ln")(x)
    x = L.Conv2D(16, 2, strides=2, name="down")(x)
    x = _convnext_block(x, 16, "s1b0")
    x = L.LayerNormalization(name="head_ln")(L.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, L.Dense(10, name="head")(x))
    _randomize(model)
    for name, dim in (("s0b0", 8), ("s0b1", 8), ("s1b0", 16)):
        _zero_input_groups(model.get_layer(f"{name}_pw2"), list(range(0, 4 * dim, 2)))
        _zero_input_groups(model.get_layer(f"{name}_dw"), [0])  # one input per group: no-op
    _zero_input_groups(model.get_layer("down"), [0, 1, 2])  # behind a LayerNorm: kept
    layers = _slim_and_compare(model)
    for name, dim in (("s0b0", 8), ("s0b1", 8), ("s1b0", 16)):
        assert layers[f"{name}_pw1"].kernel.shape == (dim, 2 * dim)
        assert layers[f"{name}_pw2"].kernel.shape == (2 * dim, dim)
        # Every LayerNorm keeps all its channels: their statistics run over all.
        assert layers[f"{name}_ln"].gamma.shape == (dim,)
        assert layers[f"{name}_dw"].kernel.shape == (7, 7, 1, dim)
    assert layers["down"].kernel.shape == (2, 2, 8, 16)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):  # ConvNeXt's stem and downsampling blocks
            yield from _all_layers(layer)


def test_convnext_tiny_from_keras_applications():
    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=10)
    # Random weights everywhere: at its default 1e-6 layer scale a block's
    # MLP barely reaches the output, and the check would miss a wrong slice.
    _randomize(model)
    removed = 0
    for layer in _all_layers(model):
        if isinstance(layer, L.Dense) and layer.name.endswith("pointwise_conv_2"):
            hidden, dim = layer.kernel.shape
            _zero_input_groups(layer, list(range(hidden // 2)))
            removed += (hidden // 2) * dim + (dim + 1) * (hidden // 2)  # pw2 rows, pw1 units
        if type(layer) is L.Conv2D and layer.groups == 1:  # as issue 16 tried it
            _zero_input_groups(layer, list(range(layer.kernel.shape[-2] // 2)))
    assert removed > 0
    report = structure_report(model)  # the same plan as slim's
    assert report.slimmable, report.note
    slim_model = slim_lib.slim(model)  # verifies the outputs
    assert slim_model.count_params() == model.count_params() - removed
    assert report.as_dict()["total"]["params_after"] == slim_model.count_params()
    block = "convnext_tiny_stage_0_block_0"
    assert slim_model.get_layer(f"{block}_pointwise_conv_1").units == 4 * 96 // 2
    # LayerScale (a private class of keras.applications) is copied unchanged.
    assert slim_model.get_layer(f"{block}_layer_scale").gamma.shape == (96,)
    x = np.random.default_rng(5).standard_normal((2, 32, 32, 3)).astype("float32") * 50
    expected = keras.ops.convert_to_numpy(model(x))
    got = keras.ops.convert_to_numpy(slim_model(x))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_text_model_with_unknown_sequence_length():
    inputs = keras.Input((None,), dtype="int32")  # no channel axis of static size
    x = L.Embedding(10, 4, name="embed")(inputs)
    x = L.Dense(5, activation="relu", name="a")(x)
    outputs = L.Dense(2, name="b")(L.GlobalAveragePooling1D()(x))
    model = keras.Model(inputs, outputs)
    _randomize(model)
    _zero_input_groups(model.get_layer("b"), [0, 3])
    slim_model = slim_lib.slim(model)
    assert slim_model.get_layer("a").kernel.shape == (4, 3)


class _LookupScale(L.Layer):
    """A user's layer that Keras cannot re-create from its config."""

    def __init__(self, table, **kwargs):
        super().__init__(**kwargs)
        self.table = table

    def call(self, x):
        return x * self.table


def test_a_layer_slim_cannot_rebuild_is_named_in_one_line():
    inputs = keras.Input((4, 4, 2))
    x = L.Conv2D(3, 1, name="a")(inputs)
    x = _LookupScale(np.ones(3, dtype="float32"), name="lookup")(x)
    model = keras.Model(inputs, L.Conv2D(2, 1, name="b")(x))
    with pytest.raises(ValueError) as error:
        slim_lib.slim(model)
    message = str(error.value)
    assert "layer 'lookup' (_LookupScale)" in message and "config" in message
    assert "\n" not in message


class _Copies(L.Layer):
    """A user's layer whose get_config() forgets an argument: re-created
    from its config, it returns two tensors instead of three."""

    def __init__(self, count=2, **kwargs):
        super().__init__(**kwargs)
        self.count = count

    def call(self, x):
        return [x] * self.count

    def get_config(self):
        return super().get_config()


def test_a_layer_rebuilt_with_fewer_outputs_is_named_not_a_bare_key_error():
    inputs = keras.Input((4, 4, 2))
    first, _, last = _Copies(3, name="copies")(L.Conv2D(3, 1, name="a")(inputs))
    model = keras.Model(inputs, [L.Conv2D(2, 1, name="b")(last), first])
    # Before: `KeyError: <id of the third output>` at the call of 'b'.
    with pytest.raises(ValueError) as error:
        slim_lib.slim(model)
    message = str(error.value)
    assert "layer 'copies' (_Copies)" in message
    assert "returns 2 tensors, the original 3" in message and "get_config()" in message
    assert "\n" not in message
