r"""Gradual magnitude pruning (Zhu & Gupta, 2017), the unstructured baseline.

    model.fit(..., callbacks=[keras_rmda.pruning.GradualMagnitudePruning(
        target_sparsity=0.95, begin_step=0, end_step=2000, frequency=100)])

Every `frequency` steps between `begin_step` and `end_step` each pruned
kernel's smallest-magnitude weights are set to zero so that its sparsity is

    s_t = s_f + (s_i − s_f) · (1 − (t − t₀)/(n·Δt))³,     t₀ ≤ t ≤ t₀ + n·Δt,

with s_i = `initial_sparsity`, s_f = `target_sparsity`, t₀ = `begin_step`,
Δt = `frequency` and t₀ + n·Δt = `end_step` (the last pruning step, where
s = s_f exactly). A new mask ranks the weights after the old mask is
applied, so a pruned weight never comes back. Between pruning steps, and after `end_step`, a fixed mask
keeps the pruned weights at exactly zero: it is re-applied after every
training step (the optimizer may move them; the mask moves them back). The
sparsity is per kernel (every kernel gets s_t, as in the paper's default).

Reference:
    M. Zhu, S. Gupta. To prune, or not to prune: exploring the efficacy of
    pruning for model compression. [arXiv:1710.01878](https://arxiv.org/abs/1710.01878)
"""

import keras
import numpy as np

SCOPES = ("per_variable", "global")
_KERNEL_LAYERS = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D,
                  keras.layers.Conv3D)


def polynomial_sparsity(step, target_sparsity, begin_step, end_step, initial_sparsity=0.0):
    """s_t of the cubic schedule: s_i before `begin_step`, s_f from `end_step` on."""
    if step <= begin_step:
        return float(initial_sparsity)
    if step >= end_step:
        return float(target_sparsity)
    progress = (step - begin_step) / (end_step - begin_step)
    return float(target_sparsity + (initial_sparsity - target_sparsity) * (1.0 - progress) ** 3)


def is_pruning_step(step, begin_step, end_step, frequency):
    """True at t₀, t₀ + Δt, ... up to `end_step`, and at `end_step` itself."""
    if step < begin_step or step > end_step:
        return False
    return step == end_step or (step - begin_step) % frequency == 0


def magnitude_mask(weights, sparsity):
    """Boolean mask keeping all but the `round(sparsity · size)` smallest |w|."""
    weights = np.asarray(weights)
    num_pruned = int(round(sparsity * weights.size))
    mask = np.ones(weights.size, dtype=bool)
    if num_pruned > 0:
        mask[np.argsort(np.abs(weights).ravel(), kind="stable")[:num_pruned]] = False
    return mask.reshape(weights.shape)


class GradualMagnitudePruning(keras.callbacks.Callback):
    """Prunes kernels to `target_sparsity` with Zhu & Gupta's cubic schedule.

    Args:
        target_sparsity: s_f in [0, 1).
        begin_step: t₀, the first pruning step (≥ 0; steps count the
            optimizer's iterations, so they continue across `fit` calls).
        end_step: the last pruning step (≥ `begin_step`).
        frequency: Δt, steps between pruning steps (≥ 1).
        initial_sparsity: s_i in [0, `target_sparsity`].
        variables: the variables to prune; None: the kernels of every
            Dense / Conv1D / Conv2D / Conv3D layer.
        scope: `"per_variable"` (Zhu & Gupta's default: every variable
            pruned to s_t) or `"global"` (one magnitude threshold over all
            pruned variables together, so that s_t of all their weights is
            zero and layers keep different sparsities).

    After each training batch the masks are applied (and recomputed at
    pruning steps). `masks` maps each variable's path to its current mask.
    With `steps_per_execution > 1` the callback sees only every k-th step.
    """

    def __init__(self, target_sparsity, begin_step, end_step, frequency,
                 initial_sparsity=0.0, variables=None, scope="per_variable"):
        super().__init__()
        if scope not in SCOPES:
            raise ValueError(f"`scope` must be one of {SCOPES}. Received: scope={scope!r}")
        if not isinstance(target_sparsity, (int, float)) or not 0.0 <= target_sparsity < 1.0:
            raise ValueError("`target_sparsity` must be in [0, 1). "
                             f"Received: target_sparsity={target_sparsity!r}")
        if (not isinstance(initial_sparsity, (int, float))
                or not 0.0 <= initial_sparsity <= target_sparsity):
            raise ValueError("`initial_sparsity` must be in [0, target_sparsity]. "
                             f"Received: initial_sparsity={initial_sparsity!r}")
        for name, value, minimum in (("begin_step", begin_step, 0), ("frequency", frequency, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"`{name}` must be an int >= {minimum}. Received: {name}={value!r}")
        if isinstance(end_step, bool) or not isinstance(end_step, int) or end_step < begin_step:
            raise ValueError(f"`end_step` must be an int >= begin_step ({begin_step}). "
                             f"Received: end_step={end_step!r}")
        self.target_sparsity = float(target_sparsity)
        self.initial_sparsity = float(initial_sparsity)
        self.begin_step, self.end_step, self.frequency = begin_step, end_step, frequency
        self._variables = variables
        self.scope = scope
        self.masks = {}

    def sparsity_at(self, step):
        """s_t of the schedule at training step `step`."""
        return polynomial_sparsity(step, self.target_sparsity, self.begin_step,
                                   self.end_step, self.initial_sparsity)

    def pruned_variables(self):
        if self._variables is not None:
            return list(self._variables)
        return [layer.kernel for layer in _leaf_layers(self.model)
                if isinstance(layer, _KERNEL_LAYERS)]

    def on_train_batch_end(self, batch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        prune = is_pruning_step(step, self.begin_step, self.end_step, self.frequency)
        variables = self.pruned_variables()
        values = []
        for variable in variables:
            weights = keras.ops.convert_to_numpy(variable)
            mask = self.masks.get(variable.path)
            if mask is not None:  # pruned weights stay pruned: mask before ranking
                weights = np.where(mask, weights, 0.0).astype(weights.dtype)
            values.append(weights)
        if prune:
            self._new_masks(variables, values, self.sparsity_at(step))
        for variable, weights in zip(variables, values):
            mask = self.masks.get(variable.path)
            if mask is not None:
                variable.assign(np.where(mask, weights, 0.0).astype(weights.dtype))

    def _new_masks(self, variables, values, sparsity):
        if self.scope == "per_variable":
            for variable, weights in zip(variables, values):
                self.masks[variable.path] = magnitude_mask(weights, sparsity)
            return
        flat = magnitude_mask(np.concatenate([v.ravel() for v in values]), sparsity)
        offsets = np.cumsum([0] + [v.size for v in values])
        for variable, weights, start, end in zip(variables, values, offsets, offsets[1:]):
            self.masks[variable.path] = flat[start:end].reshape(weights.shape)


def _leaf_layers(model):
    for layer in getattr(model, "layers", []):
        if getattr(layer, "layers", None):
            yield from _leaf_layers(layer)
        else:
            yield layer
