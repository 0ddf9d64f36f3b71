"""Make structured sparsity physical: a smaller model with the same outputs.

    slim_model = keras_rmda.slim(model)

A channel is removed when no layer reads it: every convolution / dense
consumer has an all-zero input group for it (through BatchNormalization,
elementwise activations, dropout, pooling, depthwise convolutions, Flatten,
residual adds, as `Add` layers or `x + y`, and Concatenate). It goes from
its producers (kernel slice and bias), from the normalisation and depthwise
layers on the way and from the consumers' kernels. Layers slim does not
know (LayerNormalization among them: its statistics run over every
channel) stop the removal at their boundary: the channels flowing into and
out of them are kept, and the layer is copied. See
`keras_rmda._channel_graph`. A layer or operation slim cannot analyse or
rebuild (one whose get_config() does not re-create it, say) stops slim with
a ValueError that names it.

Transformers: a MultiHeadAttention layer loses the heads that contribute
nothing to its output (all-zero output-projection rows, or all-zero value
kernel slice and bias), keeping its key_dim; the hidden units of an MLP
(Dense or dense EinsumDense, elementwise activation) whose rows in the
second projection are zero go as channels do. keras_hub TransformerEncoder
blocks are first replaced by the plain Keras layers they compute with, so
the slim model needs no keras_hub. See `keras_rmda._slim_attention`.
"""

import contextlib

import keras
import numpy as np

from keras_rmda import _channel_graph
from keras_rmda import _graph_walk
from keras_rmda import _slim_attention
from keras_rmda import structure


def slim(model, check=True, rtol=1e-4):
    """A new, physically smaller Keras model computing the same function.

    Weights are read at the optimizer's prox point when `model` has a built
    keras_rmda optimizer (the point whose zeros the optimizer guarantees),
    else from its variables. The result is a plain Functional Keras model
    (same layer names, no keras_rmda constraints, not compiled) that loads
    without keras_rmda installed.

    Args:
        model: a built Sequential or Functional model, built in code or
            loaded from a `.keras` file. Each layer must be called once in
            it (nested models count as one layer each and are copied
            unchanged).
        check: compare the slim model's outputs with the original's (at the
            same weights) on random inputs before returning.
        rtol: tolerance of the check: `max|slim − original| <= rtol ·
            max|original|` for every output.

    Returns:
        The slim `keras.Model`.

    Raises:
        ValueError: the model has no symbolic graph, shares a layer, or has
            a layer or operation slim cannot analyse or rebuild (the
            message names it; any failure there is this one error).
        RuntimeError: the check failed (a bug: please report it).
    """
    values = structure.weight_values(model, use_prox_point=True)
    # keras_hub transformer blocks become the plain layers they are made of.
    graph, graph_values = _slim_attention.expand_blocks(model, values)
    plan = _channel_graph.plan_channels(graph, lambda v: graph_values[id(v)])
    slim_model = _rebuild(graph, plan, graph_values)
    if check:
        _check_same_outputs(model, slim_model, values, rtol)
    return slim_model


def _rebuild(model, plan, values):
    input_names = {
        id(layer.output): layer.name
        for layer in model.layers
        if isinstance(layer, keras.layers.InputLayer)
    }
    new_tensor = {}
    new_inputs = []
    for tensor in plan.inputs:
        x = keras.Input(
            batch_shape=tuple(tensor.shape),
            dtype=tensor.dtype,
            # A Sequential lists no InputLayer; its input tensor bears the name.
            name=input_names.get(id(tensor), tensor.name),
        )
        new_tensor[id(tensor)] = x
        new_inputs.append(x)
    for call, kind in plan.calls:
        outputs = _rebuild_call(call, kind, plan, values, new_tensor)
        for old, new in zip(call.outputs, outputs):
            new_tensor[id(old)] = new
    outputs = [new_tensor[id(t)] for t in plan.outputs]
    return keras.Model(
        new_inputs[0] if len(new_inputs) == 1 else new_inputs,
        outputs[0] if len(outputs) == 1 else outputs,
        name=model.name,
    )


def _rebuild_call(call, kind, plan, values, new_tensor):
    """Repeat `call` on the slim graph's tensors; returns its flat outputs,
    one per output of `call`, of the widths the plan keeps."""
    with _naming(call, "finding its inputs in the slim graph"):
        for tensor in call.inputs:
            if id(tensor) not in new_tensor:  # `plan.calls` has producers first
                raise ValueError(f"input '{tensor.name}' was not rebuilt")
        args, kwargs = call.node.arguments.fill_in(new_tensor)
    if call.is_layer:
        with _naming(call, "re-creating it from its config"):
            config, weights = _slimmed_config_and_weights(call, kind, plan, values)
            new_operation = type(call.operation).from_config(config)
    else:
        new_operation = call.operation  # not a layer: holds no state, call it again
    with _naming(call, "calling it on the slimmed inputs"):
        outputs = keras.tree.flatten(new_operation(*args, **kwargs))
    with _naming(call, "comparing its outputs with the original's"):
        _check_rebuilt_outputs(call, plan, outputs)
    if call.is_layer:
        with _naming(call, "setting its slimmed weights"):
            new_operation.set_weights(weights)
    return outputs


def _check_rebuilt_outputs(call, plan, outputs):
    """Raise where the rebuilt call's outputs differ in number or width from
    what the plan expects: a layer whose config does not re-create it (or a
    bug in the plan) would otherwise fail later, at a layer not to blame."""
    hint = " (does its get_config() return all its constructor arguments?)"
    if len(outputs) != len(call.outputs):
        raise ValueError(
            f"it returns {len(outputs)} tensors, the original {len(call.outputs)}{hint}"
        )
    for index, (old, new) in enumerate(zip(call.outputs, outputs)):
        kept = plan.keep(old)
        expected = old.shape[-1] if kept is None else int(kept.sum())
        if len(new.shape) != len(old.shape) or (len(new.shape) and new.shape[-1] != expected):
            raise ValueError(
                f"output {index} has shape {tuple(new.shape)}, expected rank "
                f"{len(old.shape)} with {expected} channels{hint}"
            )


@contextlib.contextmanager
def _naming(call, step):
    """Turn any error into one line that says which layer and what step."""
    try:
        yield
    except Exception as error:
        raise _graph_walk.failure("rebuild", call.operation, error, step) from error


def _slimmed_config_and_weights(call, kind, plan, values):
    layer = call.operation
    config = _without_keras_rmda_constraints(layer.get_config())
    weights = [values[id(w)] for w in layer.weights]
    if kind == "producer":
        kept_in, kept_out = plan.kept_in(call), plan.kept_out(call)
        if isinstance(layer, keras.layers.EinsumDense):  # a Dense in einsum form
            config["output_shape"] = _slim_attention.einsum_output_shape(
                config, int(kept_out.sum())
            )
        else:
            config["units" if isinstance(layer, keras.layers.Dense) else "filters"] = int(
                kept_out.sum()
            )
        kernel = weights[0][..., kept_in, :][..., kept_out]
        weights = [kernel] + [bias[kept_out] for bias in weights[1:]]
    elif kind == "channelwise":
        kept = plan.kept_out(call)
        if "groups" in config:  # Conv with one channel per group: kernel (..., 1, C)
            config["filters"] = config["groups"] = int(kept.sum())
            weights = [weights[0][..., kept]] + [bias[kept] for bias in weights[1:]]
        else:  # DepthwiseConv, depth multiplier 1: kernel (..., C, 1)
            weights = [weights[0][..., kept, :]] + [bias[kept] for bias in weights[1:]]
    elif kind == "normalization":
        kept = plan.kept_out(call)
        weights = [w[kept] for w in weights]
    elif kind == "attention":  # whole heads (keras_rmda._slim_attention)
        config, weights = _slim_attention.slimmed_attention(layer, config, values)
    return config, weights


def _without_keras_rmda_constraints(config):
    """A copy of a (nested) layer config with keras_rmda constraints set to None."""
    if isinstance(config, dict):
        return {
            key: None
            if key.endswith("constraint") and _is_keras_rmda_object(value)
            else _without_keras_rmda_constraints(value)
            for key, value in config.items()
        }
    if isinstance(config, (list, tuple)):
        return type(config)(_without_keras_rmda_constraints(v) for v in config)
    return config


def _is_keras_rmda_object(serialized):
    if not isinstance(serialized, dict):
        return False
    module = str(serialized.get("module") or "")
    registered = str(serialized.get("registered_name") or "")
    return module.split(".")[0] == "keras_rmda" or registered.startswith("keras_rmda>")


def random_inputs(model, batch_size=4, seed=0):
    """Random arrays matching `model.inputs` (unknown dimensions become 8)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for tensor in model.inputs:
        shape = tuple(batch_size if i == 0 and d is None else d or 8
                      for i, d in enumerate(tensor.shape))
        if "int" in str(tensor.dtype):
            arrays.append(rng.integers(0, 2, size=shape).astype(tensor.dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(tensor.dtype))
    return arrays[0] if len(arrays) == 1 else arrays


def _check_same_outputs(model, slim_model, values, rtol):
    x = random_inputs(model)
    # The original is evaluated at the weights slim used (its prox point):
    # swap them in for one call, then restore the exact bits.
    swapped = []
    for variable in model.weights:
        current = keras.ops.convert_to_numpy(variable)
        if not np.array_equal(current, values[id(variable)]):
            swapped.append((variable, current))
            variable.assign(values[id(variable)])
    try:
        expected = keras.tree.flatten(model(x, training=False))
    finally:
        for variable, current in swapped:
            variable.assign(current)
    got = keras.tree.flatten(slim_model(x, training=False))
    for index, (want, have) in enumerate(zip(expected, got)):
        want, have = keras.ops.convert_to_numpy(want), keras.ops.convert_to_numpy(have)
        error = float(np.max(np.abs(want - have))) if want.size else 0.0
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        if want.shape != have.shape or not error <= rtol * max(scale, 1e-12):
            raise RuntimeError(
                f"slim changed output {index} of model '{model.name}': max abs "
                f"error {error:.3g} vs max |output| {scale:.3g} (rtol={rtol}). "
                "Unless a layer's get_config() does not re-create it, this is a bug "
                "in keras_rmda.slim; please report it."
            )
