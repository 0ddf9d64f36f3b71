"""`keras-rmda train`: one preset run with metrics, plots, checkpoints and resume.

A run directory holds:

- `run.json`: the run's settings (a resumed run must match them, except the
  number of epochs, which may grow);
- `checkpoint.keras` + `checkpoint.json`: the model with its optimizer state
  after the last completed epoch (and `StructureMonitor`'s state, so group
  flips and identification continue across a resume), written atomically
  each epoch, never for an epoch whose loss or weights are not finite;
- `metrics.csv` / `metrics.json`: one row per epoch (loss, accuracy,
  validation metrics, learning rate, momentum, group sparsities, flips, seconds);
- `accuracy.png`, `sparsity.png`: curves vs epoch;
- `model.keras`: the final model (at the optimizer's prox point),
  `report.txt` / `structure.json`: its structure report, `summary.json`.

**Which model a figure describes.** While RMDA's momentum c < 1 the
iterate W that `fit` trains differs from the prox point W̃ that `fit`
leaves and `model.keras` holds. `val_loss` / `val_accuracy` (progress
output, metrics, summary, report) describe W̃, so after the last epoch they
are exactly the saved model's; `iterate_val_*` are W's figures beside them;
`loss` / `accuracy` are the training batches' running averages at the
iterates; the sparsities describe W̃ (`keras_rmda.callbacks`).

**Restarts.** `--resume` on a finished run leaves it as it is. A directory
whose run never completed an epoch does not block its rerun. A run whose
loss or weights turn non-finite stops, keeps its last good checkpoint and
raises `TrainingDiverged`.

**Exact resume.** Data order and augmentation depend only on (seed, epoch)
(`keras_rmda.datasets`), the schedule is a function of the epoch
(`StageSchedule`), and the checkpoint carries the optimizer state, so
`--resume` continues bit-for-bit like an uninterrupted run on CPU. RMDA's
`finalize` (set the model to its prox point) runs only after the last
epoch's checkpoint is written, so it never enters a resumed run.

**Strategies.** The model is built and compiled inside `strategy.scope()`.
Under `MultiWorkerMirroredStrategy`, where Keras 3.15's `fit` fails
(keras-team/keras#20585), training goes through `keras_rmda.distribute.fit`
and each worker computes the validation metrics itself; only the chief
writes the run directory, which every worker must be able to read to
`--resume` (see docs/distributed.md).
"""

import contextlib
import os
import sys

import keras

from keras_rmda import _run_dir
from keras_rmda import callbacks as callbacks_lib
from keras_rmda import datasets
from keras_rmda import distribute
from keras_rmda import models
from keras_rmda import presets
from keras_rmda import structure
from keras_rmda._plots import plot_curves


class TrainingDiverged(RuntimeError):
    """The loss or the weights became non-finite; the last good checkpoint is kept."""


def run(preset, out, resume=False, seed=0, data_dir=None, download=False,
        limit_train=None, limit_val=None, verbose="auto", strategy=None):
    """Train `preset` into the run directory `out`; returns the summary dict.

    `strategy`: a `tf.distribute` strategy (None: the default one). Returns
    None on workers other than the chief, which write nothing. `verbose`
    "auto": a progress bar on a terminal, else one line per epoch.
    """
    from keras_rmda.cli import CLIError
    from keras_rmda.cli import load_model

    import tensorflow as tf

    if verbose == "auto":  # progress-bar redraws would fill a log file
        verbose = 1 if sys.stdout.isatty() else 2
    chief = distribute.is_chief(strategy or tf.distribute.get_strategy())
    multiworker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    settings = {"preset": preset.as_dict(), "seed": seed, "limit_train": limit_train,
                "limit_val": limit_val}
    rejected = note = None
    if chief:
        try:
            note = _run_dir.check(out, settings, resume, CLIError)
        except CLIError as error:
            rejected = error
    if multiworker and _any_worker(strategy, rejected is not None) and rejected is None:
        rejected = CLIError(f"The chief rejected the output dir '{out}'; see its error.")
    if rejected is not None:  # every worker stops, none waits for the chief
        raise rejected
    if note and chief:
        print(note)
    # Every worker reads the run directory alike, so all take the same branch.
    done = _run_dir.finished_summary(out, preset.epochs) if resume else None
    if done is not None:
        if chief:
            print(f"'{out}' finished {done['epochs']} epochs already; it is left as it is "
                  "(pass a larger --epochs to continue it).")
        return done if chief else None
    spec = datasets.info(preset.dataset)
    state = _run_dir.checkpoint_state(out) if resume else None
    initial_epoch = state["epoch"] if state else 0
    monitor = callbacks_lib.StructureMonitor()
    keras.utils.set_random_seed(seed)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        if state:
            model = load_model(os.path.join(out, _run_dir.CHECKPOINT))
            if state.get("structure_monitor"):
                monitor.set_state(state["structure_monitor"])
            print(f"Resuming '{out}' after epoch {initial_epoch}.")
        else:
            model = models.build(preset.model, spec.num_classes, spec.input_shape)
            model.compile(optimizer=presets.make_optimizer(preset),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=["accuracy"])
    if chief:
        _run_dir.write_json(os.path.join(out, _run_dir.RUN), settings)

    if initial_epoch < preset.epochs:
        _fit(model, preset, out, strategy, multiworker, chief, monitor, initial_epoch, seed,
             data_dir, download, limit_train, limit_val, verbose)
    else:
        # The last checkpoint holds W; finish as fit would have: at the prox point.
        print(f"'{out}' has completed {initial_epoch} epochs already; finishing it.")
        model.optimizer.finalize_variable_values(model.trainable_weights)
    return _finish(model, out, preset) if chief else None


def _fit(model, preset, out, strategy, multiworker, chief, monitor, initial_epoch, seed,
         data_dir, download, limit_train, limit_val, verbose):
    import tensorflow as tf

    spec = datasets.info(preset.dataset)
    train = datasets.load(preset.dataset, "train", preset.batch_size, data_dir=data_dir,
                          download=download, augment=preset.augment, seed=seed,
                          epochs=preset.epochs, initial_epoch=initial_epoch,
                          limit=limit_train)
    val = datasets.load(preset.dataset, spec.eval_split, preset.batch_size,
                        data_dir=data_dir, download=download, limit=limit_val)
    steps = datasets.steps_per_epoch(train, preset.epochs, initial_epoch)
    schedule = callbacks_lib.StageSchedule(
        preset.milestones, lr_factor=preset.lr_factor, momentum_rule=preset.momentum_rule,
        learning_rate=preset.learning_rate,
        momentum=preset.momentum if preset.optimizer != "msgd" else None)
    guard = callbacks_lib.StopOnNonFinite()
    # The guard first, so the writers see its verdict on the same epoch end.
    callbacks = [guard, schedule, monitor,
                 Validation(val) if multiworker else callbacks_lib.ProxPointValidation(val)]
    if chief:
        callbacks += [_run_dir.MetricsLogger(out, initial_epoch, guard),
                      _run_dir.Checkpoint(out, monitor, guard)]
    if multiworker:
        options = tf.data.Options()
        # Each worker takes its share of every global batch, in order.
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        distribute.fit(model, train.with_options(options), epochs=preset.epochs,
                       initial_epoch=initial_epoch, steps_per_epoch=steps,
                       callbacks=callbacks, verbose=verbose if chief else 0)
    else:
        model.fit(train, epochs=preset.epochs, initial_epoch=initial_epoch,
                  steps_per_epoch=steps, verbose=verbose, shuffle=False, callbacks=callbacks)
    if guard.failed_epoch is not None:
        kept = guard.failed_epoch - 1
        where = (f"the checkpoint of epoch {kept} is kept in '{out}'" if kept
                 else "no checkpoint was written")
        retry = "with another --out" if kept else "(the same --out will do)"
        raise TrainingDiverged(
            f"Training diverged in epoch {guard.failed_epoch}: {guard.reason}; stopped, "
            f"{where} and no model.keras was written. Try a smaller --lr or --lambda "
            f"{retry}.")


def _any_worker(strategy, flag):
    """True on every worker when `flag` is True on any (a collective: all must call it)."""
    import tensorflow as tf

    flags = strategy.run(lambda: tf.constant(float(flag)))
    return bool(strategy.reduce(tf.distribute.ReduceOp.SUM, flags, axis=None) > 0)


class Validation(callbacks_lib.ProxPointValidation):
    """`ProxPointValidation` computed on this worker alone.

    For `keras_rmda.distribute.fit`, under whose multi-worker strategy
    `model.evaluate` fails: each worker runs the whole validation set
    through its own replica of the model, without collectives, for the
    sparse categorical cross-entropy and accuracy of `keras-rmda train`.
    """

    def __init__(self, data):
        super().__init__(data)
        self._logits = None

    def evaluate(self):
        import tensorflow as tf

        if self._logits is None:
            self._logits = tf.function(lambda x: self.model(x, training=False),
                                       reduce_retracing=True)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
        loss = correct = count = 0.0
        for x, y in self.validation_data:
            logits = self._logits(x)
            y = tf.cast(y, tf.int32)
            loss += float(loss_fn(y, logits))
            hits = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)
            correct += float(tf.reduce_sum(tf.cast(hits, tf.float32)))
            count += int(tf.shape(y)[0])
        return {"loss": loss / count, "accuracy": correct / count} if count else {}


def _finish(model, out, preset):
    """Final model, structure report, plots and summary."""
    model.save(os.path.join(out, "model.keras"))
    report = structure.structure_report(model)
    path = os.path.join(out, _run_dir.METRICS)
    rows = _run_dir.read_json(path) if os.path.exists(path) else []
    summary = summarize(rows, report)
    text = f"Structure of '{model.name}':\n{report.table()}"
    if summary["val_accuracy"] is not None:
        text += (f"\nValidation accuracy of this model (model.keras): "
                 f"{summary['val_accuracy']:.4f}")
        if summary.get("iterate_val_accuracy") is not None:
            text += (f"; of the last training iterate W, which fit replaced by its prox "
                     f"point: {summary['iterate_val_accuracy']:.4f}")
    print(text)
    with open(os.path.join(out, "report.txt"), "w") as f:
        f.write(text + "\n")
    _run_dir.write_json(os.path.join(out, "structure.json"), report.as_dict())
    plot_curves(rows, out, title=_title(preset))
    # summary.json last: its presence marks the run finished (`_run_dir`).
    _run_dir.write_json(os.path.join(out, _run_dir.SUMMARY), summary)
    print("Summary: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                  for k, v in summary.items()))
    print("(val_* describe the saved model.keras; iterate_val_* the last iterate W.)")
    print(f"Outputs in {out}")
    return summary


def summarize(rows, report):
    """Final metrics of a run: accuracy, sparsities, identification, time.

    `val_*` are the saved model's figures, `iterate_val_*` the last iterate's.
    """
    last = rows[-1] if rows else {}
    flips = [r.get("group_flips", 0) for r in rows]
    changed = [r["epoch"] for r, f in zip(rows, flips) if f]
    return {
        "epochs": last.get("epoch", 0),
        "val_accuracy": last.get("val_accuracy"),
        "val_loss": last.get("val_loss"),
        "iterate_val_accuracy": last.get("iterate_val_accuracy"),
        "group_sparsity": report.total["group_sparsity"],
        "weighted_group_sparsity": report.total["weighted_group_sparsity"],
        "identified_epoch": changed[-1] if changed else 1,
        "seconds_per_epoch": (sum(r["seconds"] for r in rows) / len(rows)) if rows else None,
    }


def _title(preset):
    milestones = ", ".join(str(m) for m in preset.milestones) or "none"
    strength = "" if preset.optimizer == "msgd" else f", λ = {preset.strength:g}"
    return f"{preset.name}: {preset.optimizer}{strength}, milestones {milestones}"
