"""Training under any `tf.distribute` strategy, and exact epoch-level resume.

Keras 3.15's `model.fit` fails under `tf.distribute.MultiWorkerMirroredStrategy`
even with stock SGD ("Attempt to convert a value (PerReplica...)",
keras-team/keras#20585). `fit` here is a small custom training loop with the
same contract for the parts keras_rmda needs (Keras callbacks, `initial_epoch`,
`steps_per_epoch`, a `History`), which runs under the default strategy,
`MirroredStrategy`, `MultiWorkerMirroredStrategy` and `TPUStrategy`. Switch
back to `model.fit` once a Keras release fixes #20585
(`tests/test_multiworker.py` reports which way it is).

    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG
    with strategy.scope():
        model = make_model()
        model.compile(optimizer=keras_rmda.RMDA(...), loss=...)
    keras_rmda.distribute.fit(
        model, lambda epoch: global_batches(epoch), epochs=30,
        callbacks=[keras_rmda.StageSchedule([10, 20]),
                   keras_rmda.distribute.BackupAndRestore("/shared/backup")])

`BackupAndRestore` is Keras's callback of that name made exact for
keras_rmda: it also restores the dropout (seed generator) states, writes its
backup atomically, and under a multi-worker strategy only the chief writes
the backup directory.
"""

import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf

__all__ = ["fit", "BackupAndRestore", "is_chief"]


def fit(model, dataset, epochs=1, initial_epoch=0, steps_per_epoch=None, callbacks=None,
        strategy=None, verbose=0):
    """Train a compiled model under its distribution strategy, like `model.fit`.

    Each step runs `model.compute_loss` and the gradients on every replica
    (the loss rescaled so that the all-reduced gradient is the gradient of
    the mean loss over the GLOBAL batch, also when the replicas' batches
    differ in size) and `model.optimizer.apply`, which all-reduces the
    gradients and updates every replica's variables and optimizer state
    identically. The model and its optimizer must be created and compiled
    inside `strategy.scope()`. At the end, as `fit` does, the optimizer's
    `finalize_variable_values` runs (RMDA's `finalize`).

    Args:
        model: a compiled Keras model.
        dataset: a `tf.data.Dataset` of global batches `(x, y)` or
            `(x, y, sample_weight)`, or a callable `epoch -> Dataset` giving
            the batches of one epoch (then the data of an epoch depends on
            the epoch alone, which makes `BackupAndRestore` resumes exact).
            A Dataset is distributed with
            `strategy.experimental_distribute_dataset` under its own options
            (for in-memory data set `auto_shard_policy=DATA`: each global
            batch is then split between the workers in order, so training
            equals a one-process run on the same global batches).
        epochs: index of the last epoch + 1, as in `model.fit`.
        initial_epoch: epoch to start from; a callback that sets it (as
            `BackupAndRestore` does in `on_train_begin`) wins.
        steps_per_epoch: batches per epoch. With a Dataset, the epochs then
            continue one iterator, as `model.fit` does; None: each epoch
            runs through the whole dataset.
        callbacks: Keras callbacks; called at train, epoch and batch begin
            and end. Epoch logs hold `loss` (the mean over the epoch's
            examples) plus what callbacks add.
        strategy: default: the strategy the model was created under.
        verbose: 0 (silent) or 1 / 2 (Keras's progress output).

    Returns:
        A `keras.callbacks.History` (also `model.history`).
    """
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise ValueError("keras_rmda.distribute.fit needs a compiled model: call "
                         f"model.compile(optimizer, loss) first. Received: model={model!r}")
    if not model.built:
        raise ValueError("keras_rmda.distribute.fit needs a built model (give it an "
                         f"`Input` or call `model.build`). Received: model={model!r}")
    _check_int("epochs", epochs, 0)
    _check_int("initial_epoch", initial_epoch, 0)
    if steps_per_epoch is not None:
        _check_int("steps_per_epoch", steps_per_epoch, 1)
    if not (isinstance(dataset, tf.data.Dataset) or callable(dataset)):
        raise ValueError("`dataset` must be a tf.data.Dataset or a callable epoch -> "
                         f"Dataset. Received: dataset={dataset!r}")
    strategy = strategy or model.distribute_strategy
    if not model.optimizer.built:  # its variables must exist before tracing
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)
    if not isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks = keras.callbacks.CallbackList(
            callbacks, add_history=True, add_progbar=verbose != 0, model=model,
            verbose=verbose, epochs=epochs, steps=steps_per_epoch)
    train_step = _make_train_step(model, strategy)
    shared = shared_iterator = None
    if isinstance(dataset, tf.data.Dataset):
        shared = strategy.experimental_distribute_dataset(dataset)
        shared_iterator = iter(shared) if steps_per_epoch is not None else None

    model.stop_training = False
    callbacks.on_train_begin()
    initial_epoch = _resume_epoch(model) or initial_epoch
    logs = None
    for epoch in range(initial_epoch, epochs):
        callbacks.on_epoch_begin(epoch)
        if shared is None:
            iterator = iter(strategy.experimental_distribute_dataset(dataset(epoch)))
        else:
            iterator = shared_iterator if shared_iterator is not None else iter(shared)
        loss_sum, count, step = 0.0, 0.0, 0
        while steps_per_epoch is None or step < steps_per_epoch:
            try:
                batch = next(iterator)
            except (StopIteration, tf.errors.OutOfRangeError):
                break
            callbacks.on_train_batch_begin(step)
            loss, examples = train_step(batch)
            loss, examples = float(loss), float(examples)
            loss_sum, count = loss_sum + loss * examples, count + examples
            callbacks.on_train_batch_end(step, {"loss": loss})
            step += 1
            if model.stop_training:
                break
        logs = {"loss": loss_sum / count if count else float("nan")}
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    if epochs > 0:  # as fit does: RMDA(finalize=True) sets the prox point here
        model.optimizer.finalize_variable_values(model.trainable_weights)
    callbacks.on_train_end(logs)
    return model.history


def _make_train_step(model, strategy):
    """A `tf.function`: one distributed step; returns (global mean loss, examples)."""

    def replica_step(batch):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        context = tf.distribute.get_replica_context()
        local = tf.cast(tf.shape(tf.nest.flatten(x)[0])[0], tf.float32)
        total = context.all_reduce(tf.distribute.ReduceOp.SUM, local)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            # compute_loss is this replica's mean divided by the replica count
            # (Keras's convention); rescale to (replica's sum) / (global batch).
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                      training=True)
            replicas = tf.cast(context.num_replicas_in_sync, tf.float32)
            weight = tf.math.divide_no_nan(replicas * local, total)
            loss = loss * tf.cast(weight, loss.dtype)
            scaled = model.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, model.trainable_variables)
        model.optimizer.apply(gradients, model.trainable_variables)
        return loss, total

    @tf.function(reduce_retracing=True)
    def train_step(batch):
        loss, total = strategy.run(replica_step, args=(batch,))
        loss = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        return loss, strategy.experimental_local_results(total)[0]

    return train_step


# The epoch `fit` resumes from is the model's `_initial_epoch`, which Keras's own
# `keras.callbacks.BackupAndRestore` sets in `on_train_begin` and `model.fit`
# reads after it: these two helpers are the only code that touches it.
def _resume_epoch(model):
    # private: Keras has no public hook for the epoch fit resumes from
    return getattr(model, "_initial_epoch", None)


def _set_resume_epoch(model, epoch):
    # private: Keras has no public hook for the epoch fit resumes from
    model._initial_epoch = epoch


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}. Received: {name}={value!r}")


def is_chief(strategy=None):
    """True on the worker that writes shared outputs (always, with one worker).

    The task of type "chief", else worker 0, as TensorFlow's multi-worker
    guides define it. `strategy`: default: the strategy in scope, else the
    task in `$TF_CONFIG`; a strategy without a cluster is always the chief.
    """
    if strategy is None and tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()
    if strategy is not None:
        resolver = getattr(strategy, "cluster_resolver", None)
        if resolver is None:
            return True
        task_type, task_id = resolver.task_type, resolver.task_id
        cluster = resolver.cluster_spec().as_dict()
    else:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
        task_type, task_id = config.get("task", {}).get("type"), config.get("task", {}).get("index")
        cluster = config.get("cluster", {})
    if task_type is None or task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


class BackupAndRestore(keras.callbacks.Callback):
    """Back up the training state each epoch; restore it when training restarts.

    `keras.callbacks.BackupAndRestore` (Keras 3.15) already saves the
    optimizer's variables with the weights (for RMDA: W⁰, V, t, α, the
    fingerprints, the iteration count, η and c), so `fit` resumed after a
    preemption continues the optimizer exactly. This callback adds what
    exactness and multi-worker training need:

    - the states of the model's seed generators (seeded `Dropout`, ...),
      which Keras's weights files leave out: with them a resumed run draws
      the same dropout masks as an uninterrupted one;
    - an atomic backup: the weights go to a new file and a small JSON file
      naming it is replaced last, so a kill at any moment leaves the
      previous complete backup;
    - under `MultiWorkerMirroredStrategy` the chief writes `backup_dir`
      (which every worker must be able to read, e.g. a shared or cloud
      file system), the other workers save to a temporary directory that
      is deleted at once, and every worker restores from `backup_dir`.

    Works with `model.fit` and `keras_rmda.distribute.fit`; it sets the
    epoch to resume from in `on_train_begin`, like Keras's callback. Backups
    are taken at epoch ends only: a resume repeats the interrupted epoch
    from its start, which is exact when that epoch's data depends only on
    the epoch (see `keras_rmda.datasets`, or pass `fit` a callable of the
    epoch).

    Args:
        backup_dir: directory of the backup; not to be shared with anything else.
        delete_checkpoint: delete the backup when training ends.
    """

    STATE_FILE = "state.json"

    def __init__(self, backup_dir, delete_checkpoint=True):
        super().__init__()
        if not backup_dir:
            raise ValueError(f"`backup_dir` must be a directory path. Received: "
                             f"backup_dir={backup_dir!r}")
        self.backup_dir = os.fspath(backup_dir)
        self.delete_checkpoint = bool(delete_checkpoint)

    @property
    def backed_up_epoch(self):
        """Epochs completed according to the backup (0 when there is none).

        Lets a script build the data stream for the resumed epochs before `fit`.
        """
        state = self._read_state()
        return state["epoch"] if state else 0

    def on_train_begin(self, logs=None):
        state = self._read_state()
        if state is None:
            return
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            with self.model.distribute_strategy.scope():
                optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.backup_dir, state["weights"]))
        for variable, value in zip(_seed_states(self.model), state["seed_states"]):
            variable.assign(value)
        _set_resume_epoch(self.model, state["epoch"])  # read by fit, as Keras's callback does

    def on_epoch_end(self, epoch, logs=None):
        if is_chief(self.model.distribute_strategy):
            self._save(self.backup_dir, epoch + 1)
            return
        # Saving may read variables through collectives: every worker saves.
        scratch = tempfile.mkdtemp(prefix="keras_rmda_backup_")
        try:
            self._save(scratch, epoch + 1)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and is_chief(self.model.distribute_strategy):
            shutil.rmtree(self.backup_dir, ignore_errors=True)

    def _save(self, directory, epoch):
        os.makedirs(directory, exist_ok=True)
        name = f"epoch-{epoch}.weights.h5"
        self.model.save_weights(os.path.join(directory, name), overwrite=True)
        state = {"epoch": epoch, "weights": name,
                 "seed_states": [keras.ops.convert_to_numpy(v).tolist()
                                 for v in _seed_states(self.model)]}
        path = os.path.join(directory, self.STATE_FILE)
        with open(path + ".partial", "w") as f:
            json.dump(state, f)
        os.replace(path + ".partial", path)  # the backup switches here, atomically
        for other in os.listdir(directory):
            if other.endswith(".weights.h5") and other != name:
                os.remove(os.path.join(directory, other))

    def _read_state(self):
        path = os.path.join(self.backup_dir, self.STATE_FILE)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)


def _seed_states(model):
    """The model's seed-generator state variables: its variables that are not weights."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]
