"""`keras-rmda train`: one preset run with metrics, plots, checkpoints and resume.

A run directory holds:

- `run.json`: the run's settings (a resumed run must match them, except the
  number of epochs, which may grow);
- `checkpoint.keras` + `checkpoint.json`: the model with its optimizer state
  after the last completed epoch, written atomically each epoch;
- `metrics.csv` / `metrics.json`: one row per epoch (loss, accuracy,
  validation metrics, learning rate, momentum, group sparsities, flips, seconds);
- `accuracy.png`, `sparsity.png`: curves vs epoch;
- `model.keras`: the final model (at the optimizer's prox point),
  `report.txt` / `structure.json`: its structure report, `summary.json`.

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
import csv
import json
import os
import time

import keras

from keras_rmda import callbacks as callbacks_lib
from keras_rmda import datasets
from keras_rmda import distribute
from keras_rmda import models
from keras_rmda import presets
from keras_rmda import structure


def run(preset, out, resume=False, seed=0, data_dir=None, download=False,
        limit_train=None, limit_val=None, verbose="auto", strategy=None):
    """Train `preset` into the run directory `out`; returns the summary dict.

    `strategy`: a `tf.distribute` strategy (None: the default one). Returns
    None on workers other than the chief, which write nothing.
    """
    from keras_rmda.cli import CLIError
    from keras_rmda.cli import load_model

    import tensorflow as tf

    chief = distribute.is_chief(strategy or tf.distribute.get_strategy())
    multiworker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    settings = {"preset": preset.as_dict(), "seed": seed, "limit_train": limit_train,
                "limit_val": limit_val}
    rejected = None
    if chief:
        try:
            _check_run_dir(out, settings, resume, CLIError)
        except CLIError as error:
            rejected = error
    if multiworker and _any_worker(strategy, rejected is not None) and rejected is None:
        rejected = CLIError(f"The chief rejected the output dir '{out}'; see its error.")
    if rejected is not None:  # every worker stops, none waits for the chief
        raise rejected
    spec = datasets.info(preset.dataset)
    checkpoint = os.path.join(out, "checkpoint.keras")
    initial_epoch = 0
    keras.utils.set_random_seed(seed)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        if resume and os.path.exists(checkpoint):
            with open(os.path.join(out, "checkpoint.json")) as f:
                initial_epoch = json.load(f)["epoch"]
            model = load_model(checkpoint)
            print(f"Resuming '{out}' after epoch {initial_epoch}.")
        else:
            model = models.build(preset.model, spec.num_classes, spec.input_shape)
            model.compile(optimizer=presets.make_optimizer(preset),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=["accuracy"])
    if chief:
        _write_json(os.path.join(out, "run.json"), settings)

    if initial_epoch < preset.epochs:
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
        callbacks = [schedule, callbacks_lib.StructureMonitor()]
        if multiworker:
            callbacks.append(Validation(val))
        if chief:
            callbacks += [MetricsLogger(out, initial_epoch), Checkpoint(out)]
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
                      steps_per_epoch=steps, validation_data=val, verbose=verbose,
                      shuffle=False, callbacks=callbacks)
    else:
        print(f"'{out}' has completed {initial_epoch} epochs already.")
    return _finish(model, out) if chief else None


def _check_run_dir(out, settings, resume, error):
    path = os.path.join(out, "run.json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                previous = json.load(f)
        except (OSError, ValueError):
            raise error(f"Output dir '{out}' has an unreadable run.json; "
                        "choose another --out.") from None
        differing = _differences(previous, settings)
        if differing:
            raise error(f"Output dir '{out}' holds a different run (differs in: "
                        f"{', '.join(differing)}); choose another --out.")
        if not resume:
            raise error(f"Output dir '{out}' holds this run already; pass --resume to "
                        "continue it or choose another --out.")
    elif os.path.isdir(out) and os.listdir(out):
        raise error(f"Output dir '{out}' is not empty and holds no keras-rmda run; "
                    "choose another --out.")
    os.makedirs(out, exist_ok=True)


def _any_worker(strategy, flag):
    """True on every worker when `flag` is True on any (a collective: all must call it)."""
    import tensorflow as tf

    flags = strategy.run(lambda: tf.constant(float(flag)))
    return bool(strategy.reduce(tf.distribute.ReduceOp.SUM, flags, axis=None) > 0)


def _differences(previous, settings):
    """Settings that differ, ignoring the epoch count (a resumed run may extend it)."""
    old = dict(previous, **previous.get("preset", {}))
    new = dict(settings, **settings["preset"])
    keys = (set(old) | set(new)) - {"preset", "epochs"}
    return sorted(k for k in keys if old.get(k) != new.get(k))


class MetricsLogger(keras.callbacks.Callback):
    """Appends each epoch's logs (and its duration) to metrics.csv / metrics.json.

    On resume, rows after `initial_epoch` (an epoch that ended after its
    checkpoint was taken) are dropped first, so every epoch appears once.
    """

    def __init__(self, out, initial_epoch=0):
        super().__init__()
        self.json_path = os.path.join(out, "metrics.json")
        self.csv_path = os.path.join(out, "metrics.csv")
        self.rows = []
        if initial_epoch and os.path.exists(self.json_path):
            with open(self.json_path) as f:
                self.rows = [r for r in json.load(f) if r["epoch"] <= initial_epoch]
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1}
        row.update({k: _number(v) for k, v in (logs or {}).items()})
        row["seconds"] = time.perf_counter() - self._start
        self.rows.append(row)
        _write_json(self.json_path, self.rows)
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)


class Validation(keras.callbacks.Callback):
    """`val_loss` and `val_accuracy` at each epoch end, on this worker alone.

    For `keras_rmda.distribute.fit`, under whose multi-worker strategy
    `model.evaluate` fails too: each worker runs the whole validation set
    through its own replica of the model, without collectives.
    """

    def __init__(self, data):
        super().__init__()
        self.data = data
        self._logits = None

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        if self._logits is None:
            self._logits = tf.function(lambda x: self.model(x, training=False),
                                       reduce_retracing=True)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
        loss = correct = count = 0.0
        for x, y in self.data:
            logits = self._logits(x)
            y = tf.cast(y, tf.int32)
            loss += float(loss_fn(y, logits))
            hits = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)
            correct += float(tf.reduce_sum(tf.cast(hits, tf.float32)))
            count += int(tf.shape(y)[0])
        if logs is not None and count:
            logs.update(val_loss=loss / count, val_accuracy=correct / count)


class Checkpoint(keras.callbacks.Callback):
    """Saves model + optimizer state atomically at every epoch end."""

    def __init__(self, out):
        super().__init__()
        self.path = os.path.join(out, "checkpoint.keras")
        self.state_path = os.path.join(out, "checkpoint.json")

    def on_epoch_end(self, epoch, logs=None):
        partial = self.path + ".partial.keras"
        self.model.save(partial)
        os.replace(partial, self.path)  # a crash never leaves a torn checkpoint
        _write_json(self.state_path, {"epoch": epoch + 1})


def _finish(model, out):
    """Final model, structure report, plots and summary."""
    model.save(os.path.join(out, "model.keras"))
    report = structure.structure_report(model)
    text = f"Structure of '{model.name}':\n{report.table()}"
    print(text)
    with open(os.path.join(out, "report.txt"), "w") as f:
        f.write(text + "\n")
    _write_json(os.path.join(out, "structure.json"), report.as_dict())
    rows = []
    if os.path.exists(os.path.join(out, "metrics.json")):
        with open(os.path.join(out, "metrics.json")) as f:
            rows = json.load(f)
    plot_curves(rows, out)
    summary = summarize(rows, report)
    _write_json(os.path.join(out, "summary.json"), summary)
    print("Summary: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                  for k, v in summary.items()))
    print(f"Outputs in {out}")
    return summary


def summarize(rows, report):
    """Final metrics of a run: accuracy, sparsities, identification, time."""
    last = rows[-1] if rows else {}
    flips = [r.get("group_flips", 0) for r in rows]
    changed = [r["epoch"] for r, f in zip(rows, flips) if f]
    return {
        "epochs": last.get("epoch", 0),
        "val_accuracy": last.get("val_accuracy"),
        "group_sparsity": report.total["group_sparsity"],
        "weighted_group_sparsity": report.total["weighted_group_sparsity"],
        "identified_epoch": changed[-1] if changed else 1,
        "seconds_per_epoch": (sum(r["seconds"] for r in rows) / len(rows)) if rows else None,
    }


def plot_curves(rows, out):
    """accuracy.png and sparsity.png vs epoch (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib).")
        return
    epochs = [r["epoch"] for r in rows]
    for name, keys, label in (
        ("accuracy", ("accuracy", "val_accuracy"), "accuracy"),
        ("sparsity", ("group_sparsity", "weighted_group_sparsity"), "sparsity"),
    ):
        figure, axis = plt.subplots(figsize=(5, 3.5))
        for key in keys:
            if rows and key in rows[0]:
                axis.plot(epochs, [r.get(key) for r in rows], marker=".", label=key)
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
        figure.tight_layout()
        figure.savefig(os.path.join(out, f"{name}.png"), dpi=100)
        plt.close(figure)


def _number(value):
    try:
        return float(keras.ops.convert_to_numpy(value))
    except (TypeError, ValueError):
        return str(value)


def _write_json(path, data):
    partial = path + ".partial"
    with open(partial, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(partial, path)
