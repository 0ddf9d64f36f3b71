"""Keras callbacks of keras_rmda."""

import keras
import numpy as np

from keras_rmda import structure
from keras_rmda._schedule import StageSchedule  # noqa: F401 (public here)


class StructureMonitor(keras.callbacks.Callback):
    """Logs sparsities and the identification of the zero pattern each epoch.

    At every epoch end it measures the model at the optimizer's prox point
    (where RMDA's structure lives; the variables when there is no built
    keras_rmda optimizer) and adds to `logs`, hence to `History.history`
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

    Epochs count from the start of each `fit` (`epoch + 1` as Keras prints
    it, including `initial_epoch`); the comparison restarts with every `fit`.

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

    def on_train_begin(self, logs=None):
        self.history = []
        self.identified_epoch = None
        self._previous_masks = None
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
