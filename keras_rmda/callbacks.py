"""Keras callbacks of keras_rmda.

While RMDA's momentum c < 1, the variables `fit` trains (the iterate W) and
the model `fit` leaves behind (the prox point W̃, set by `finalize=True`)
differ, early in training by a lot. Every figure these callbacks log says
which of the two it describes: `StructureMonitor` measures W̃,
`ProxPointValidation` evaluates W̃ as `val_*` and W as `iterate_val_*`.
"""

import contextlib
import math

import keras
import numpy as np

from keras_rmda import structure
from keras_rmda._schedule import StageSchedule  # noqa: F401 (public here)


class StructureMonitor(keras.callbacks.Callback):
    """Logs sparsities and the identification of the zero pattern each epoch.

    At every epoch end it measures the model at the optimizer's prox point
    W̃ (where RMDA's structure lives, and what `fit` leaves in the model;
    the variables when there is no built keras_rmda optimizer or with
    `use_prox_point=False`) and adds to `logs`, hence to `History.history`
    and TensorBoard:

    - `group_sparsity`, `weighted_group_sparsity`, `unstructured_sparsity`
      (see `keras_rmda.structure.structure_report`);
    - `group_flips`: number of groups whose zero / non-zero state changed
      since the previous epoch end (0 at the first epoch of a `fit`, which
      has nothing to compare with);
    - `identified_epoch`: the candidate epoch of identification, i.e. the
      last (1-based) epoch whose end showed a changed pattern, 1 if it never
      changed. Identification means the pattern never changes again; while
      training, the future is unknown, so this is the best guess so far.
      After `fit`, `monitor.identified_epoch` is the final answer for the
      run and `monitor.history` holds one dict per epoch.

    Epochs count as Keras prints them (`epoch + 1`, including
    `initial_epoch`). The comparison restarts with every `fit`, unless the
    state was restored with `set_state` before it: a run resumed from a
    checkpoint saves `get_state()` beside it and restores it, so its first
    resumed epoch compares with the last checkpointed one.

    Args:
        log_dir: if set, writes per-variable histograms of the group norms
            (and the logged values as scalars) there with `tf.summary`, for
            TensorBoard.
        use_prox_point: measure at the optimizer's prox point (default) or at
            the variables.
    """

    def __init__(self, log_dir=None, use_prox_point=True):
        super().__init__()
        self.log_dir = log_dir
        self.use_prox_point = use_prox_point
        self.history = []
        self.identified_epoch = None
        self._previous_masks = None
        self._writer = None
        self._restored = False

    def get_state(self):
        """The comparison state after the last epoch end, as JSON-compatible data."""
        masks = self._previous_masks
        return {
            "identified_epoch": self.identified_epoch,
            "history": [dict(row) for row in self.history],
            "previous_masks": None if masks is None else {
                path: mask.astype(int).tolist() for path, mask in masks.items()},
        }

    def set_state(self, state):
        """Restore `get_state()`; the next `fit` continues from it instead of restarting."""
        masks = state["previous_masks"]
        self.identified_epoch = state["identified_epoch"]
        self.history = [dict(row) for row in state["history"]]
        self._previous_masks = None if masks is None else {
            path: np.asarray(mask, dtype=bool) for path, mask in masks.items()}
        self._restored = True

    def on_train_begin(self, logs=None):
        if not self._restored:
            self.history = []
            self.identified_epoch = None
            self._previous_masks = None
        self._restored = False  # only the first fit after set_state continues
        if self.log_dir is not None and self._writer is None:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(str(self.log_dir))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        values = structure.weight_values(self.model, self.use_prox_point)
        masks = structure.zero_group_masks(self.model, values=values)
        measured = structure.sparsities(self.model, values=values)
        flips = count_flips(self._previous_masks, masks)
        if self._previous_masks is None or flips > 0:
            self.identified_epoch = epoch + 1
        self._previous_masks = masks
        measured = {k: float(v) for k, v in measured.items()}  # JSON-able in get_state
        measured.update(group_flips=flips, identified_epoch=self.identified_epoch)
        logs.update(measured)
        self.history.append({"epoch": epoch + 1, **measured})
        if self._writer is not None:
            self._write_summaries(epoch + 1, values, measured)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()

    def _write_summaries(self, step, values, measured):
        import tensorflow as tf

        # tf.summary.histogram / scalar live in TensorBoard, which training
        # machines often lack: write the same plugin data with tf.summary.write.
        with self._writer.as_default(step=step):
            for variable in self.model.weights:
                variable_groups = structure.regularized_groups(self.model, variable)
                if variable_groups is not None:
                    norms = structure.group_norms(values[id(variable)], variable_groups)
                    counts, edges = np.histogram(norms, bins=30)
                    buckets = np.stack([edges[:-1], edges[1:], counts], axis=1)
                    tf.summary.write(f"group_norms/{variable.path}", buckets,
                                     metadata=_plugin("histograms"))
            for name, value in measured.items():
                tf.summary.write(f"structure/{name}", np.float32(value),
                                 metadata=_plugin("scalars"))


@contextlib.contextmanager
def prox_point_weights(model):
    """Within the block, `model` holds the weights `fit` will leave in it.

    That is the optimizer's prox point W̃ for a built keras_rmda optimizer
    with `finalize=True`, else the variables as they are. On exit every
    variable gets back exactly the value it had (the optimizer then sees no
    outside write, and a resumed run stays bit-for-bit). Yields True when
    some weight differs from the variables.
    """
    optimizer = structure.structured_optimizer_of(model)
    if optimizer is None or not optimizer.built or not getattr(optimizer, "finalize", False):
        yield False
        return
    values = structure.weight_values(model, use_prox_point=True)
    saved = []
    for variable in model.trainable_weights:
        old = keras.ops.convert_to_numpy(variable)
        if not np.array_equal(old, values[id(variable)]):
            saved.append((variable, old))
    try:
        for variable, _ in saved:
            variable.assign(values[id(variable)])
        yield bool(saved)
    finally:
        for variable, old in saved:
            variable.assign(old)


class ProxPointValidation(keras.callbacks.Callback):
    """Validation metrics of the model `fit` will leave, at every epoch end.

    With RMDA's `finalize=True` (the default), `fit` ends by setting the
    model to its prox point W̃, which is also what gets saved; Keras's own
    `validation_data` evaluates the iterate W, which differs while the
    momentum c < 1. This callback evaluates both and logs:

    - `val_loss`, `val_<metric>`: the model at W̃, i.e. after the last
      epoch exactly the model `fit` leaves (or W for optimizers without a
      prox point, or with `finalize=False`);
    - `iterate_val_loss`, `iterate_val_<metric>`: the iterate W, the
      variables as they were during the epoch (equal to the above when
      W̃ = W, which is then evaluated once).

    Use it instead of `fit(validation_data=...)`, and list callbacks that
    read `val_*` (checkpointing, early stopping, loggers) after it. The
    training figures `loss` and `<metric>` stay Keras's running averages
    over the epoch's batches, taken at the iterates.

    Args:
        validation_data: what `model.evaluate` takes: a dataset yielding
            `(x, y)` or `(x, y, sample_weight)`, or such a tuple of arrays.
        batch_size: for arrays (default 32, as `evaluate`).
    """

    def __init__(self, validation_data, batch_size=None):
        super().__init__()
        self.validation_data = validation_data
        self.batch_size = batch_size

    def evaluate(self):
        """`{metric name: value}` of the model as it is now (`loss` included)."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(self.validation_data)
        results = self.model.evaluate(x, y, sample_weight=sample_weight,
                                      batch_size=self.batch_size, verbose=0, return_dict=True)
        return {name: float(value) for name, value in results.items()}

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        iterate = self.evaluate()
        with prox_point_weights(self.model) as differs:
            final = self.evaluate() if differs else iterate
        logs.update({f"val_{name}": value for name, value in final.items()})
        logs.update({f"iterate_val_{name}": value for name, value in iterate.items()})


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops `fit` at the end of an epoch whose loss or weights are not finite.

    Checked once per epoch (a per-batch check would synchronise every step):
    the epoch's loss, which any non-finite batch loss makes non-finite, and
    every floating-point weight, which can overflow while the loss is still
    finite. After a stop, `failed_epoch` is the (1-based) epoch and `reason`
    says what. Keras still calls the other callbacks' `on_epoch_end` for
    that epoch: list this one first, and let callbacks that save the model
    check `failed_epoch`, so that no non-finite model is written.
    """

    def __init__(self):
        super().__init__()
        self.failed_epoch = None
        self.reason = None

    def on_train_begin(self, logs=None):
        self.failed_epoch = self.reason = None

    def on_epoch_end(self, epoch, logs=None):
        loss = _scalar((logs or {}).get("loss"))
        if loss is not None and not math.isfinite(loss):
            self.reason = f"the training loss became {loss}"
        else:
            for variable in self.model.weights:
                value = keras.ops.convert_to_numpy(variable)
                if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                    self.reason = f"weight '{variable.path}' became non-finite"
                    break
        if self.reason is not None:
            self.failed_epoch = epoch + 1
            self.model.stop_training = True


def _scalar(value):
    try:
        return float(keras.ops.convert_to_numpy(value))
    except (TypeError, ValueError):
        return None


def _plugin(name):
    import tensorflow as tf

    metadata = tf.compat.v1.SummaryMetadata
    return metadata(plugin_data=metadata.PluginData(plugin_name=name))


def count_flips(previous_masks, masks):
    """Groups whose zero state differs between two `zero_group_masks` results.

    0 when `previous_masks` is None. A variable present in only one of them
    counts all its groups.
    """
    if previous_masks is None:
        return 0
    flips = 0
    for path in set(previous_masks) | set(masks):
        old, new = previous_masks.get(path), masks.get(path)
        if old is None or new is None or old.shape != new.shape:
            flips += int((old if new is None else new).size)
        else:
            flips += int(np.count_nonzero(old != new))
    return flips
