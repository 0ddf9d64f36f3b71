"""slim on transformers: whole attention heads and MLP neurons go, outputs stay."""

import importlib
import json

import keras
import numpy as np
import pytest

import keras_rmda
from test_slim import _randomize

slim_lib = importlib.import_module("keras_rmda.slim")

L = keras.layers
SEQ, DIM, HEADS, KEY_DIM, HIDDEN = 8, 16, 4, 4, 32


def _block(x, name, mlp="dense", ops_residual=False):
    """Pre-norm transformer block: LN → MHA → +x → LN → up(gelu) → down → +x."""
    h = L.LayerNormalization(name=f"{name}_ln1")(x)
    h = L.MultiHeadAttention(HEADS, KEY_DIM, name=f"{name}_mha")(h, h)
    x = L.Add(name=f"{name}_add1")([x, h])
    h = L.LayerNormalization(name=f"{name}_ln2")(x)
    if mlp == "dense":
        h = L.Dense(HIDDEN, activation="gelu", name=f"{name}_up")(h)
        h = L.Dense(DIM, name=f"{name}_down")(h)
    else:
        h = L.EinsumDense("abc,cd->abd", (SEQ, HIDDEN), bias_axes="d", activation="relu",
                          name=f"{name}_up")(h)
        h = L.EinsumDense("...b,bc->...c", DIM, bias_axes="c", name=f"{name}_down")(h)
    return x + h if ops_residual else L.Add(name=f"{name}_add2")([x, h])


def _transformer(mlp="dense"):
    inputs = keras.Input((SEQ, DIM), name="tokens")
    x = _block(inputs, "b0", mlp)
    x = _block(x, "b1", mlp, ops_residual=True)
    outputs = L.Dense(3, name="head")(L.GlobalAveragePooling1D()(x))
    model = keras.Model(inputs, outputs, name="vit")
    _randomize(model)
    return model


def _zero(variable, index):
    value = keras.ops.convert_to_numpy(variable).copy()
    value[index] = 0.0
    variable.assign(value)


def _zero_heads(mha, heads, parts=("query", "key", "value", "output")):
    """Zero `heads` of `mha` in the projections named by `parts`."""
    for part in parts:
        dense = getattr(mha, f"{part}_dense")
        if part == "output":  # kernel (H, v, d): rows [h]; its bias is shared by all heads
            _zero(dense.kernel, heads)
        else:  # kernel (d, H, k), bias (H, k)
            _zero(dense.kernel, (slice(None), heads))
            _zero(dense.bias, heads)


def _zero_neurons(up, down, neurons):
    """A whole MLP neuron: up-projection column and bias, down-projection row."""
    _zero(up.kernel, (Ellipsis, neurons))
    _zero(up.bias, neurons)
    _zero(down.kernel, neurons)


def _inputs(model, batch=3, seed=7):
    rng = np.random.default_rng(seed)
    x = [rng.standard_normal((batch,) + tuple(t.shape[1:])).astype("float32")
         for t in model.inputs]
    return x[0] if len(x) == 1 else x


def _same_outputs(model, slim_model, x=None):
    """The slim model's outputs are the original model's own (rtol 1e-5)."""
    x = _inputs(model) if x is None else x
    expected = keras.ops.convert_to_numpy(model(x))
    got = keras.ops.convert_to_numpy(slim_model(x))
    assert np.abs(expected).max() > 0.1  # outputs that could differ
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def _layers(model):
    return {layer.name: layer for layer in model.layers}


@pytest.mark.parametrize("mlp", ["dense", "einsum"])
def test_heads_and_mlp_neurons_go_outputs_stay(mlp):
    model = _transformer(mlp)
    _zero_heads(model.get_layer("b1_mha"), [1, 3])
    _zero_neurons(model.get_layer("b0_up"), model.get_layer("b0_down"), [0, 5, 6, 31])
    _zero_neurons(model.get_layer("b1_up"), model.get_layer("b1_down"), list(range(10)))
    slim_model = slim_lib.slim(model)
    _same_outputs(model, slim_model)
    layers = _layers(slim_model)
    mha = layers["b1_mha"]
    assert (mha.num_heads, mha.key_dim, mha.value_dim) == (2, KEY_DIM, KEY_DIM)
    assert tuple(mha.query_dense.kernel.shape) == (DIM, 2, KEY_DIM)
    assert tuple(mha.value_dense.bias.shape) == (2, KEY_DIM)
    assert tuple(mha.output_dense.kernel.shape) == (2, KEY_DIM, DIM)
    assert tuple(mha.output_dense.bias.shape) == (DIM,)
    # The kept heads are heads 0 and 2, weights unchanged.
    original = model.get_layer("b1_mha")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(mha.key_dense.kernel),
                                  keras.ops.convert_to_numpy(original.key_dense.kernel)[:, [0, 2]])
    assert layers["b0_mha"].num_heads == HEADS
    assert tuple(layers["b0_up"].kernel.shape) == (DIM, HIDDEN - 4)
    assert tuple(layers["b0_down"].kernel.shape) == (HIDDEN - 4, DIM)
    assert tuple(layers["b1_up"].kernel.shape) == (DIM, HIDDEN - 10)
    assert tuple(layers["b1_up"].bias.shape) == (HIDDEN - 10,)
    assert tuple(layers["b1_down"].kernel.shape) == (HIDDEN - 10, DIM)
    if mlp == "einsum":
        assert type(layers["b1_up"]) is L.EinsumDense
        assert tuple(layers["b1_up"].output.shape) == (None, SEQ, HIDDEN - 10)
    # LayerNorms and the residual stream keep every channel.
    assert tuple(layers["b1_ln2"].gamma.shape) == (DIM,)


@pytest.mark.parametrize(
    "parts, removed",
    [
        (("output",), True),  # the head's output rows: it adds nothing
        (("value",), True),  # its values: attention-weighted zeros
        (("query", "key"), False),  # uniform attention still adds the mean value
    ],
)
def test_when_a_head_is_removable(parts, removed):
    model = _transformer()
    _zero_heads(model.get_layer("b0_mha"), [2], parts)
    slim_model = slim_lib.slim(model)
    _same_outputs(model, slim_model)
    mha = _layers(slim_model)["b0_mha"]
    assert mha.num_heads == (HEADS - 1 if removed else HEADS)


def test_value_bias_keeps_a_head_with_zero_value_kernel():
    model = _transformer()
    mha = model.get_layer("b0_mha")
    _zero(mha.value_dense.kernel, (slice(None), 2))
    slim_model = slim_lib.slim(model)
    _same_outputs(model, slim_model)
    assert _layers(slim_model)["b0_mha"].num_heads == HEADS


def test_all_heads_silent_keeps_one():
    model = _transformer()
    _zero_heads(model.get_layer("b0_mha"), [0, 1, 2, 3], ("output",))
    slim_model = slim_lib.slim(model)
    _same_outputs(model, slim_model)
    assert _layers(slim_model)["b0_mha"].num_heads == 1


def test_cross_attention_with_key_mask_and_causal_mask_arguments():
    query, memory = keras.Input((SEQ, DIM)), keras.Input((6, 12))
    mask = keras.Input((SEQ, 6), dtype="bool")
    key = L.Dense(10, name="key_proj")(memory)
    mha = L.MultiHeadAttention(HEADS, 3, value_dim=5, output_shape=7, name="mha")
    x = mha(query, memory, key=key, attention_mask=mask, use_causal_mask=True)
    model = keras.Model([query, memory, mask], L.Dense(2, name="head")(x))
    _randomize(model)
    _zero_heads(model.get_layer("mha"), [0, 3], ("value",))
    slim_model = slim_lib.slim(model)
    x = _inputs(model)
    x[2] = np.random.default_rng(3).random((3, SEQ, 6)) < 0.7
    _same_outputs(model, slim_model, x)
    mha = _layers(slim_model)["mha"]
    assert (mha.num_heads, mha.key_dim, mha.value_dim) == (2, 3, 5)
    assert tuple(mha.key_dense.kernel.shape) == (10, 2, 3)
    assert tuple(mha.value_dense.kernel.shape) == (12, 2, 5)
    assert tuple(mha.output_dense.kernel.shape) == (2, 5, 7)


def test_other_einsum_dense_layers_stay_unknown():
    inputs = keras.Input((SEQ, DIM))
    h = L.EinsumDense("abc,cde->abde", (SEQ, 2, 8), bias_axes="de", name="split")(inputs)
    h = L.Reshape((SEQ, 16))(h)
    outputs = L.Dense(3, name="head")(h)
    model = keras.Model(inputs, outputs)
    _randomize(model)
    _zero(model.get_layer("head").kernel, [0, 1, 2])
    slim_model = slim_lib.slim(model)
    _same_outputs(model, slim_model)
    assert tuple(_layers(slim_model)["split"].kernel.shape) == (DIM, 2, 8)


def test_structure_report_shows_heads_kept():
    model = _transformer("einsum")
    _zero_heads(model.get_layer("b1_mha"), [1, 3])
    _zero_neurons(model.get_layer("b0_up"), model.get_layer("b0_down"), [0, 1])
    report = keras_rmda.structure_report(model)
    rows = {row["name"]: row for row in report.layers}
    assert report.slimmable
    assert (rows["b1_mha"]["heads"], rows["b1_mha"]["heads_after"]) == (4, 2)
    assert rows["b0_up"]["removable_channels"] == 2
    assert "MultiHeadAttention 2/4 heads" in report.table()
    slim_model = slim_lib.slim(model)
    for name in ("b1_mha", "b0_up", "b0_down"):
        assert rows[name]["params_after"] == slim_model.get_layer(name).count_params()
    assert rows["b0_up"]["flops"] == SEQ * DIM * HIDDEN
    assert report.total["params_after"] == slim_model.count_params()


# --- keras_hub ------------------------------------------------------------------


def _hub_model(keras_hub, normalize_first, **call_kwargs):
    inputs = keras.Input((SEQ, DIM))
    x = inputs
    for index in range(2):
        x = keras_hub.layers.TransformerEncoder(
            HIDDEN, HEADS, activation="gelu", layer_norm_epsilon=1e-6,
            normalize_first=normalize_first, name=f"enc{index}")(x, **call_kwargs)
    outputs = L.Dense(3, name="head")(L.GlobalAveragePooling1D()(x))
    model = keras.Model(inputs, outputs, name="hub")
    _randomize(model)
    return model


@pytest.mark.parametrize("normalize_first", [False, True])
def test_keras_hub_transformer_encoders_become_slim_plain_layers(normalize_first):
    keras_hub = pytest.importorskip("keras_hub")
    model = _hub_model(keras_hub, normalize_first)
    encoder = model.get_layer("enc1")
    # private: TransformerEncoder exposes its sublayers only as attributes.
    _zero_heads(encoder._self_attention_layer, [0, 2], ("value",))
    _zero_neurons(encoder._feedforward_intermediate_dense, encoder._feedforward_output_dense,
                  [3, 4, 30])
    slim_model = slim_lib.slim(model)
    _same_outputs(model, slim_model)
    layers = _layers(slim_model)
    mha = layers["enc1_self_attention_layer"]
    # key_dim stays the block's hidden_dim // num_heads.
    assert (type(mha), mha.num_heads, mha.key_dim) == (L.MultiHeadAttention, 2, DIM // HEADS)
    assert layers["enc0_self_attention_layer"].num_heads == HEADS
    assert tuple(layers["enc1_feedforward_intermediate_dense"].kernel.shape) == (DIM, HIDDEN - 3)
    assert tuple(layers["enc1_feedforward_output_dense"].kernel.shape) == (HIDDEN - 3, DIM)
    assert layers["enc1_self_attention_layer_norm"].epsilon == 1e-6
    assert not any(type(layer).__module__.startswith("keras_hub") for layer in slim_model.layers)
    assert "keras_hub" not in json.dumps(slim_model.get_config(), default=str)


def test_keras_hub_padding_mask_is_rejected_naming_the_layer():
    keras_hub = pytest.importorskip("keras_hub")
    inputs, padding = keras.Input((SEQ, DIM)), keras.Input((SEQ,), dtype="bool")
    x = keras_hub.layers.TransformerEncoder(HIDDEN, HEADS, name="enc")(inputs, padding_mask=padding)
    model = keras.Model([inputs, padding], L.GlobalAveragePooling1D()(x))
    with pytest.raises(ValueError, match=r"'enc' \(TransformerEncoder\).*Received: padding_mask="):
        slim_lib.slim(model)


@pytest.mark.slow
def test_slim_transformer_export_serves_in_a_fresh_process(tmp_path):
    from keras_rmda import export as export_lib
    from test_export import _serve_in_fresh_process

    model = _transformer()
    _zero_heads(model.get_layer("b1_mha"), [1, 3])
    _zero_neurons(model.get_layer("b0_up"), model.get_layer("b0_down"), [0, 5])
    path = export_lib.export_for_serving(model, tmp_path / "vit", verbose=False)
    x = _inputs(model, batch=4)
    served = _serve_in_fresh_process(tmp_path, {"vit": (path, "serving_default", "tokens", x)})
    expected = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(served["vit"], expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())
