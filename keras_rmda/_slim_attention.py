"""Attention heads, einsum projections and keras_hub blocks for `keras_rmda.slim`.

What the channel analysis (`keras_rmda._channel_graph`) hands to this module:

- `keras.layers.MultiHeadAttention` (kind "attention"). For the channel
  analysis it is an unknown layer: it reads every channel of its inputs and
  its output is fresh and live. Only its width inside shrinks: head h
  contributes exactly nothing to the output when its output-projection rows
  `output_kernel[h]` are all zero, or when its value kernel slice
  `value_kernel[:, h, :]` and value bias `value_bias[h]` are all zero (its
  attention-weighted values are then zero whatever the attention weights).
  Such heads go: the query/key/value (and gate) kernels `(d, H, k)` keep
  `[:, kept, :]`, their biases `(H, k)` keep `[kept]`, the output kernel
  `(H, v, d_out)` keeps `[kept]`, the output bias stays; `key_dim` and
  `value_dim` (and so the scale 1/√key_dim) are unchanged. Zero query and
  key slices alone do not make a head removable: its attention is then
  uniform and it still adds the mean of its values. One head is kept at
  least (a layer cannot have none; a kept zero head adds nothing).
- `keras.layers.EinsumDense` used as a dense projection (`"abc,cd->abd"`,
  `"...b,bc->...c"`: a 2-D kernel `(in, out)` contracting the last axis,
  bias on the output axis or none) is a producer, like Dense.
- `keras_hub.layers.TransformerEncoder` blocks are replaced, before the
  analysis, by the plain Keras layers they compute with (LayerNormalization,
  MultiHeadAttention with the block's key_dim, Dropout, Add, the two Dense
  layers of its MLP), with the block's weights. Their heads and MLP neurons
  then slim like any other, and the slim model needs no keras_hub.
"""

import inspect
import sys

import keras
import numpy as np

from keras_rmda import _graph_walk


def _hub_layer(name):
    """`keras_hub.layers.<name>`; None while keras_hub is not imported (no
    model can hold its layers then, and slim never imports it itself)."""
    hub = sys.modules.get("keras_hub")
    return getattr(getattr(hub, "layers", None), name, None)


def _bound_arguments(call, new_tensor=None):
    """`{parameter: value}` of a layer call, by the names of its `call` signature."""
    arguments = call.node.arguments
    args, kwargs = (
        arguments.fill_in(new_tensor) if new_tensor is not None
        else (arguments.args, arguments.kwargs)
    )
    return inspect.signature(call.operation.call).bind(*args, **kwargs).arguments


# --- MultiHeadAttention ----------------------------------------------------------


def is_attention(call):
    """Whether `call` is a MultiHeadAttention call whose heads slim can remove.

    The exact Keras class, and keras_hub's CachedMultiHeadAttention called
    without a cache (it then computes what its base class does); other
    subclasses may use the heads otherwise. Its variables must be plain
    kernels and biases (no quantization, no LoRA), and its one output the
    attention output (attention scores have a heads axis).
    """
    layer = call.operation
    cached = _hub_layer("CachedMultiHeadAttention")
    if type(layer) is not keras.layers.MultiHeadAttention:
        if cached is None or type(layer) is not cached:
            return False
        bound = _bound_arguments(call)
        if bound.get("cache") is not None or bound.get("cache_update_index") is not None:
            return False
    if len(call.outputs) != 1 or not layer.built:
        return False
    projections = 5 if layer.get_config().get("use_gate", False) else 4
    if len(layer.weights) != projections * (2 if layer.use_bias else 1):
        return False
    # The heads axis of each weight, where slimmed_attention slices it.
    output_kernel = id(layer.output_dense.kernel)
    output_bias = id(getattr(layer.output_dense, "bias", None))
    for variable in layer.weights:
        rank = len(variable.shape)
        if id(variable) == output_bias:
            continue
        if id(variable) == output_kernel or rank == 2:
            axis = 0  # output kernel (H, v, d_out); projection bias (H, k)
        elif rank == 3:
            axis = 1  # projection kernel (d, H, k)
        else:
            return False
        if variable.shape[axis] != layer.num_heads:
            return False
    return True


def kept_heads(layer, values):
    """Boolean mask over `layer`'s heads: False for a head that contributes
    nothing (zero output rows, or zero value kernel slice and bias); at
    least one True. `values` maps `id(variable)` to its numpy value."""
    heads = layer.num_heads

    def all_zero_per_head(variable, axis):
        value = np.moveaxis(values[id(variable)], axis, 0).reshape(heads, -1)
        return ~np.any(value != 0, axis=1)

    silent = all_zero_per_head(layer.output_dense.kernel, 0)
    no_values = all_zero_per_head(layer.value_dense.kernel, 1)
    if layer.value_dense.bias is not None:
        no_values &= all_zero_per_head(layer.value_dense.bias, 0)
    kept = ~(silent | no_values)
    if not kept.any():
        kept[0] = True
    return kept


def slimmed_attention(layer, config, values):
    """`(config, weights)` of `layer` with only its contributing heads.

    `config` is the layer's config (its `num_heads` is replaced); the
    weights come in `layer.weights` order, read from `values`.
    """
    kept = kept_heads(layer, values)
    config = dict(config, num_heads=int(kept.sum()))
    output_kernel = id(layer.output_dense.kernel)
    output_bias = id(getattr(layer.output_dense, "bias", None))
    weights = []
    for variable in layer.weights:
        value = values[id(variable)]
        if id(variable) == output_kernel:  # (H, v, d_out)
            weights.append(value[kept])
        elif id(variable) == output_bias:  # (d_out,): every head adds to it
            weights.append(value)
        elif value.ndim == 3:  # query / key / value / gate kernel (d, H, k)
            weights.append(value[:, kept])
        else:  # their bias (H, k)
            weights.append(value[kept])
    return config, weights


def head_counts(layer, values):
    """`(heads, kept heads, parameters after slimming)` of an attention layer."""
    kept = int(kept_heads(layer, values).sum())
    bias = getattr(layer.output_dense, "bias", None)
    fixed = 0 if bias is None else int(np.prod(bias.shape))
    sliced = layer.count_params() - fixed  # every other weight has one slice per head
    return layer.num_heads, kept, sliced * kept // layer.num_heads + fixed


# --- EinsumDense as Dense ----------------------------------------------------------


def is_dense_einsum(layer):
    """Whether `layer` is an exact EinsumDense computing a Dense on the last
    axis: equation `<prefix>b,bc-><prefix>c` (prefix letters and/or `...`),
    a 2-D kernel, bias on axis `c` or none, no quantization or LoRA."""
    if type(layer) is not keras.layers.EinsumDense or not layer.built:
        return False
    try:
        operand, rest = layer.equation.replace(" ", "").split(",")
        kernel_axes, output = rest.split("->")
    except ValueError:
        return False
    if len(kernel_axes) != 2 or len(layer.kernel.shape) != 2:
        return False
    contracted, produced = kernel_axes
    prefix = operand[:-1]
    letters = prefix.replace("...", "")
    return (
        operand.endswith(contracted)
        and output == prefix + produced
        and contracted != produced
        and contracted not in letters
        and produced not in letters
        and len(set(letters)) == len(letters)  # a repeated letter takes a diagonal
        and layer.bias_axes in (None, produced)
        and len(layer.weights) == (1 if layer.bias_axes is None else 2)
    )


def einsum_output_shape(config, width):
    """The `output_shape` of a dense EinsumDense config, with `width` outputs."""
    shape = config["output_shape"]
    shape = list(shape) if isinstance(shape, (list, tuple)) else [shape]
    return tuple(shape[:-1]) + (width,)


# --- keras_hub TransformerEncoder --------------------------------------------------


def expand_blocks(model, values):
    """`(model, values)` with each keras_hub TransformerEncoder call replaced by
    the plain Keras layers it computes with, at the same weights.

    Returns `model` and `values` themselves when the model has no such call
    (exact class; subclasses stay unknown layers). Otherwise a new Functional
    model (same name, inputs and outputs; every other layer copied from its
    config) and `{id(variable): value}` for it. `values` maps `id(variable)`
    of `model` to the weights to use.

    Raises:
        ValueError: a TransformerEncoder is called in a way its plain layers
            do not reproduce (the message names it).
    """
    encoder = _hub_layer("TransformerEncoder")
    if encoder is None:
        return model, values
    calls = _graph_walk.model_calls(model)
    if not any(type(call.operation) is encoder for call in calls):
        return model, values
    input_names = {
        id(layer.output): layer.name
        for layer in model.layers
        if isinstance(layer, keras.layers.InputLayer)
    }
    new_tensor, new_inputs = {}, []
    for tensor in model.inputs:
        x = keras.Input(batch_shape=tuple(tensor.shape), dtype=tensor.dtype,
                        name=input_names.get(id(tensor), tensor.name))
        new_tensor[id(tensor)] = x
        new_inputs.append(x)
    for call in calls:
        if type(call.operation) is encoder:
            outputs = _expand_encoder(call, new_tensor, values)
        else:
            outputs = _copy_call(call, new_tensor, values)
        for old, new in zip(call.outputs, keras.tree.flatten(outputs)):
            new_tensor[id(old)] = new
    outputs = [new_tensor[id(t)] for t in keras.tree.flatten(model.outputs)]
    expanded = keras.Model(
        new_inputs[0] if len(new_inputs) == 1 else new_inputs,
        outputs[0] if len(outputs) == 1 else outputs,
        name=model.name,
    )
    return expanded, {id(v): keras.ops.convert_to_numpy(v) for v in expanded.weights}


def _copy_call(call, new_tensor, values):
    """Repeat `call` on new tensors with a copy of its layer (same config and weights)."""
    args, kwargs = call.node.arguments.fill_in(new_tensor)
    if not call.is_layer:
        return call.operation(*args, **kwargs)
    layer = call.operation
    try:
        copy = type(layer).from_config(layer.get_config())
        outputs = copy(*args, **kwargs)
        copy.set_weights([values[id(w)] for w in layer.weights])
    except Exception as error:
        raise _graph_walk.failure("copy", layer, error,
                                  step="expanding the model's keras_hub blocks") from error
    return outputs


# TransformerEncoder keeps its sublayers in private attributes only (keras_hub
# 0.32 offers no public handle); each use below reads one of these.
_ENCODER_PARTS = {
    "attention": ("_self_attention_layer", keras.layers.MultiHeadAttention),
    "attention_norm": ("_self_attention_layer_norm", keras.layers.LayerNormalization),
    "attention_dropout": ("_self_attention_dropout", keras.layers.Dropout),
    "mlp_norm": ("_feedforward_layer_norm", keras.layers.LayerNormalization),
    "mlp_up": ("_feedforward_intermediate_dense", keras.layers.Dense),
    "mlp_down": ("_feedforward_output_dense", keras.layers.Dense),
    "mlp_dropout": ("_feedforward_dropout", keras.layers.Dropout),
}


def _encoder_parts(layer):
    """`{part: sublayer}` of a built TransformerEncoder (private attributes)."""
    parts = {}
    for part, (attribute, expected) in _ENCODER_PARTS.items():
        sublayer = getattr(layer, attribute, None)  # private keras_hub attribute, see above
        if type(sublayer) is not expected:
            raise ValueError(
                f"slim cannot expand {_graph_walk.describe(layer)}: its `{attribute}` is "
                f"not a {expected.__name__} (slim knows keras_hub 0.32's layout). "
                f"Received: {type(sublayer).__name__}"
            )
        parts[part] = sublayer
    return parts


def _unsupported_encoder_arguments(call, bound):
    """Descriptions of what a TransformerEncoder call reads beyond its inputs."""
    found = [
        f"{name}={bound[name]!r}"
        for name in ("padding_mask", "attention_mask")
        if bound.get(name) is not None
    ]
    if bound.get("return_attention_scores"):
        found.append(f"return_attention_scores={bound['return_attention_scores']!r}")
    # private: Keras has no public read of a symbolic tensor's mask; the block
    # itself reads the same attribute (keras_hub merge_padding_and_attention_mask).
    if getattr(call.inputs[0], "_keras_mask", None) is not None:
        found.append("a Keras mask on its input (e.g. from Embedding(mask_zero=True))")
    return found


def _expand_encoder(call, new_tensor, values):
    """The plain-layer subgraph of one TransformerEncoder call, on new tensors."""
    layer = call.operation
    unsupported = _unsupported_encoder_arguments(call, _bound_arguments(call))
    if unsupported:
        raise ValueError(
            f"slim cannot rebuild {_graph_walk.describe(layer)} from plain Keras layers: "
            f"it supports calls on the inputs alone, without padding or attention masks. "
            f"Received: {'; '.join(unsupported)}"
        )
    bound = _bound_arguments(call, new_tensor)
    x, training = bound["inputs"], bound.get("training")
    parts = _encoder_parts(layer)
    new = {
        part: type(sublayer).from_config(
            dict(sublayer.get_config(), name=f"{layer.name}_{sublayer.name}")
        )
        for part, sublayer in parts.items()
    }

    def add(name, a, b):
        return keras.layers.Add(dtype=layer.dtype_policy, name=f"{layer.name}_{name}")([a, b])

    # The order of TransformerEncoder.call (keras_hub 0.32).
    first = layer.normalize_first
    residual = x
    if first:
        x = new["attention_norm"](x)
    x = new["attention"](x, x, training=training)
    x = new["attention_dropout"](x, training=training)
    x = add("attention_residual", x, residual)
    if not first:
        x = new["attention_norm"](x)
    residual = x
    if first:
        x = new["mlp_norm"](x)
    x = new["mlp_down"](new["mlp_up"](x))
    x = new["mlp_dropout"](x, training=training)
    x = add("mlp_residual", x, residual)
    if not first:
        x = new["mlp_norm"](x)
    for part, sublayer in parts.items():
        new[part].set_weights([values[id(w)] for w in sublayer.weights])
    return x
