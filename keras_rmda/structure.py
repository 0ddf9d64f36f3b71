"""How structured a model is, and how much smaller slimming makes it.

    report = keras_rmda.structure.structure_report(model)
    print(report)                  # a per-layer table with a total row
    report.as_dict()["total"]["group_sparsity"]

Weights are read at the optimizer's prox point W̃ (where RMDA's structure
lives, see docs/algorithms.md) when the model has a built keras_rmda optimizer,
else from the variables. Groups are those the optimizer regularises:
`keras_rmda.groups.grouping_of(variable, optimizer.groups)` ("auto" without
a keras_rmda optimizer), so a declared grouping constraint always counts.
"""

import dataclasses
import math

import keras
import numpy as np

from keras_rmda import _channel_graph
from keras_rmda import _slim_attention
from keras_rmda import groups as groups_lib

L = keras.layers
# Layers whose kernels count for unstructured sparsity and FLOPs.
_KERNEL_LAYERS = (
    L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose, L.Conv2DTranspose,
    L.Conv3DTranspose, L.DepthwiseConv1D, L.DepthwiseConv2D,
    L.SeparableConv1D, L.SeparableConv2D, L.Dense,
)
_TRANSPOSED = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
_KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")


# --- pure helpers --------------------------------------------------------------


def group_norms(values, variable_groups):
    """‖W_g‖₂ of every group of one variable, as a 1-D numpy array."""
    values = np.asarray(values, dtype=np.float64)
    if variable_groups.kept_axis is None:  # elementwise groups
        return np.abs(values).ravel()
    return np.sqrt(np.sum(values**2, axis=variable_groups.reduce_axes))


def zero_group_mask(values, variable_groups):
    """True for each group of one variable whose weights are all exactly 0."""
    values = np.asarray(values)
    if variable_groups.kept_axis is None:
        return (values == 0).ravel()
    # Exact test: a sum of squares of tiny weights could underflow to 0.
    return ~np.any(values != 0, axis=variable_groups.reduce_axes)


# --- reading a model -----------------------------------------------------------


def structured_optimizer_of(model):
    """The model's keras_rmda optimizer (through a loss-scale wrapper), or None.

    Found by its interface (`prox_point`, `tracks`) so that structure, slim
    and export never import an optimizer module.
    """
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    if hasattr(optimizer, "prox_point") and hasattr(optimizer, "tracks"):
        return optimizer
    return None


def weight_values(model, use_prox_point=True):
    """`{id(variable): numpy value}` for every weight of `model`.

    Trainable variables of a built keras_rmda optimizer are read at its prox
    point when `use_prox_point`; everything else as stored.
    """
    optimizer = structured_optimizer_of(model)
    use_prox = use_prox_point and optimizer is not None and optimizer.built
    values = {}
    for variable in model.weights:
        value = variable
        if use_prox and variable.trainable and optimizer.tracks(variable):
            value = optimizer.prox_point(variable)
        values[id(variable)] = keras.ops.convert_to_numpy(value)
    return values


def regularized_groups(model, variable):
    """The `VariableGroups` the model's optimizer regularises `variable` by, or None."""
    optimizer = structured_optimizer_of(model)
    grouping = groups_lib.grouping_of(variable, optimizer.groups if optimizer else "auto")
    if not grouping.regularized:
        return None
    return grouping.resolve(variable.shape, variable.path)


def zero_group_masks(model, use_prox_point=True, values=None):
    """`{variable path: boolean mask of all-zero groups}` per regularised variable."""
    values = values if values is not None else weight_values(model, use_prox_point)
    masks = {}
    for variable in model.weights:
        variable_groups = regularized_groups(model, variable)
        if variable_groups is not None:
            masks[variable.path] = zero_group_mask(values[id(variable)], variable_groups)
    return masks


def sparsities(model, use_prox_point=True, values=None):
    """The model's group, weighted group and unstructured sparsity (a dict)."""
    values = values if values is not None else weight_values(model, use_prox_point)
    counts = _Counts()
    for layer in _leaf_layers(model):
        counts.add_layer(model, layer, values)
    return counts.sparsities()


# --- the report ------------------------------------------------------------------


@dataclasses.dataclass
class _Counts:
    groups: int = 0
    zero_groups: int = 0
    regularized_weights: int = 0
    weights_in_zero_groups: int = 0
    kernel_weights: int = 0
    kernel_nonzeros: int = 0

    def add_layer(self, model, layer, values, seen=None):
        for variable in layer.weights:
            if seen is not None:
                if id(variable) in seen:
                    continue
                seen.add(id(variable))
            value = values[id(variable)]
            variable_groups = regularized_groups(model, variable)
            if variable_groups is not None:
                zeros = int(zero_group_mask(value, variable_groups).sum())
                self.groups += variable_groups.num_groups
                self.zero_groups += zeros
                self.regularized_weights += value.size
                self.weights_in_zero_groups += zeros * variable_groups.group_size
            name = variable.path.split("/")[-1]
            if isinstance(layer, _KERNEL_LAYERS) and name in _KERNEL_NAMES:
                self.kernel_weights += value.size
                self.kernel_nonzeros += int(np.count_nonzero(value))

    def sparsities(self):
        return {
            "group_sparsity": _share(self.zero_groups, self.groups),
            "weighted_group_sparsity": _share(
                self.weights_in_zero_groups, self.regularized_weights
            ),
            "unstructured_sparsity": _share(
                self.kernel_weights - self.kernel_nonzeros, self.kernel_weights
            ),
        }


def _share(part, whole):
    return part / whole if whole else 0.0


class StructureReport:
    """Per-layer and total structure of a model (see `structure_report`).

    Attributes:
        layers: one dict per layer (see `as_dict`).
        total: the same keys summed / aggregated over the model.
        slimmable: False when the graph could not be analysed (then the
            "after" figures equal the "before" ones); `note` says why.
    """

    _COLUMNS = (
        ("layer", "name", "{}"), ("type", "type", "{}"),
        ("groups", "groups", "{}"), ("zero", "zero_groups", "{}"),
        ("group sp.", "group_sparsity", "{:.3f}"),
        ("weighted sp.", "weighted_group_sparsity", "{:.3f}"),
        ("unstruct. sp.", "unstructured_sparsity", "{:.3f}"),
        ("removable", "removable_channels", "{}"),
    )

    def __init__(self, layers, total, slimmable=True, note=""):
        self.layers = layers
        self.total = total
        self.slimmable = slimmable
        self.note = note

    def as_dict(self):
        """Plain data: `{"layers": [...], "total": {...}, "slimmable", "note"}`."""
        return {
            "layers": [dict(row) for row in self.layers],
            "total": dict(self.total),
            "slimmable": self.slimmable,
            "note": self.note,
        }

    def table(self):
        """The report as a printable text table."""
        header = [c[0] for c in self._COLUMNS] + ["channels", "params", "FLOPs"]
        rows = [self._cells(row) for row in self.layers + [self.total]]
        widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]

        def line(cells):
            return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

        rule = "-" * len(line(header))
        text = [line(header), rule] + [line(r) for r in rows[:-1]] + [rule, line(rows[-1])]
        if self.note:
            text.append(self.note)
        return "\n".join(text)

    def _cells(self, row):
        cells = [fmt.format(row[key]) for _, key, fmt in self._COLUMNS]
        if row.get("heads") is not None:  # an attention layer's type cell: "... 2/4 heads"
            cells[1] += f" {row['heads_after']}/{row['heads']} heads"
        for before, after in (("channels", "channels_after"), ("params", "params_after"),
                              ("flops", "flops_after")):
            b, a = row[before], row[after]
            cells.append("" if b is None else _human(b) if a == b else f"{_human(b)}->{_human(a)}")
        return cells

    def __str__(self):
        return self.table()

    def __repr__(self):
        t = self.total
        return (f"<StructureReport group_sparsity={t['group_sparsity']:.3f} "
                f"params {t['params']}->{t['params_after']} "
                f"flops {t['flops']}->{t['flops_after']}>")


def _human(n):
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= 10 * size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def structure_report(model, use_prox_point=True):
    """Measure `model`'s structure per layer and in total.

    Columns (per layer, and for the model in `total`):
    - `group_sparsity` = 1 − non-zero groups / all groups, over the
      regularised variables (groups as the optimizer regularises them);
    - `weighted_group_sparsity` = share of regularised weights in all-zero
      groups;
    - `unstructured_sparsity` = 1 − non-zero weights / all weights, counted
      over the kernels (`kernel`, `depthwise_kernel`, `pointwise_kernel`) of
      convolution and dense layers only: biases and normalisation parameters
      are excluded, regularised or not;
    - `removable_channels`: filters / units of a convolution or dense layer
      that `keras_rmda.slim` removes (no consumer reads them);
    - `channels`, `params`, `flops` and their `_after` slimming values;
      FLOPs are multiply-accumulates of convolution and dense layers
      (biases and normalisation not counted), None where a layer's output
      shape is unknown. Parameters count every weight (non-trainable ones,
      e.g. BatchNormalization moving statistics, included).
    - `heads`, `heads_after` (MultiHeadAttention rows only): its heads, and
      those `slim` keeps (the table shows them as "kept/all heads").

    Args:
        model: a built Keras model (Sequential / Functional for the slimming
            figures; any model for the sparsities).
        use_prox_point: read weights at the optimizer's prox point when the
            model has a built keras_rmda optimizer.

    Returns:
        A `StructureReport`.
    """
    if not model.built:
        raise ValueError(f"structure_report needs a built model; '{model.name}' is not built.")
    values = weight_values(model, use_prox_point)
    try:
        plan = _channel_graph.plan_channels(model, lambda v: values[id(v)])
        planned = {id(layer): kind for layer, kind in plan.steps}
        slimmable, note = True, ""
    except ValueError as error:
        plan, planned = None, {}
        slimmable, note = False, f"not slimmable: {error}"
    rows, total, seen = [], _Counts(), set()
    for layer in _leaf_layers(model):
        counts = _Counts()
        counts.add_layer(model, layer, values)
        total.add_layer(model, layer, values, seen)
        kind = planned.get(id(layer), "unknown")
        rows.append(_layer_row(layer, kind, plan, counts))
        if kind == "attention":  # MultiHeadAttention: heads kept of all
            heads, kept, params_after = _slim_attention.head_counts(layer, values)
            rows[-1].update(heads=heads, heads_after=kept, params_after=params_after)
    summed = {
        key: sum(r[key] or 0 for r in rows)
        for key in ("removable_channels", "params", "params_after", "flops", "flops_after")
    }
    total_row = {
        "name": "total", "type": "", "channels": None, "channels_after": None,
        **dataclasses.asdict(total), **total.sparsities(), **summed,
    }
    return StructureReport(rows, total_row, slimmable, note)


def _layer_row(layer, kind, plan, counts):
    out_shape = _output_shape(layer)
    channels = out_shape[-1] if out_shape else None
    channels_after, params_after = channels, layer.count_params()
    flops = flops_after = _flops(layer, out_shape)
    if plan is not None and kind in ("producer", "normalization"):
        kept_out = int(plan.kept_out(layer).sum())
        channels_after = kept_out
        if kind == "producer":
            kept_in = int(plan.kept_in(layer).sum())
            spatial = math.prod(layer.kernel.shape[:-2])
            has_bias = getattr(layer, "bias", None) is not None  # EinsumDense: no use_bias
            params_after = spatial * kept_in * kept_out + (kept_out if has_bias else 0)
            positions = _positions(layer, out_shape) if out_shape else None
            # As _flops counts them; also for a dense EinsumDense, which it does not list.
            flops = positions and positions * math.prod(layer.kernel.shape)
            flops_after = positions and positions * spatial * kept_in * kept_out
        else:
            params_after = len(layer.weights) * kept_out
    elif plan is not None and kind == "channelwise":
        # Depthwise-style: every weight and multiply belongs to one channel.
        channels_after = int(plan.kept_out(layer).sum())
        params_after = layer.count_params() * channels_after // channels
        flops_after = flops and flops * channels_after // channels
    elif plan is not None and kind in ("pass", "flatten", "merge", "concat"):
        channels_after = int(plan.kept_out(layer).sum())
    return {
        "name": layer.name,
        "type": type(layer).__name__,
        **dataclasses.asdict(counts),
        **counts.sparsities(),
        "removable_channels": (channels - channels_after) if kind == "producer" else 0,
        "channels": channels,
        "channels_after": channels_after,
        "params": layer.count_params(),
        "params_after": params_after,
        "flops": flops,
        "flops_after": flops_after,
    }


def _output_shape(layer):
    try:
        output = layer.output
    except (AttributeError, ValueError):
        return None
    return tuple(output.shape) if not isinstance(output, (list, tuple, dict)) else None


def _positions(layer, out_shape):
    """Output positions each kernel is applied at (input ones when transposed)."""
    shape = tuple(layer.input.shape) if isinstance(layer, _TRANSPOSED) else out_shape
    dims = shape[1:-1]
    return math.prod(dims) if all(d is not None for d in dims) else None


def _flops(layer, out_shape):
    if not isinstance(layer, _KERNEL_LAYERS) or out_shape is None:
        return 0 if not isinstance(layer, _KERNEL_LAYERS) else None
    positions = _positions(layer, out_shape)
    if positions is None:
        return None
    kernels = [w for w in layer.weights if w.path.split("/")[-1] in _KERNEL_NAMES]
    return positions * sum(math.prod(k.shape) for k in kernels)


def _leaf_layers(model):
    """Layers holding weights directly: nested models are entered."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer
