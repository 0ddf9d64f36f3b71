"""The run directory of `keras-rmda train`: its checks, its per-epoch writers.

A run has *started* once its first epoch checkpoint exists
(`checkpoint.json`, written after `checkpoint.keras`), and has *finished*
`n` epochs once `summary.json` (written last, after `model.keras`) says so.
"""

import csv
import json
import os
import time

import keras

RUN = "run.json"
CHECKPOINT = "checkpoint.keras"
CHECKPOINT_STATE = "checkpoint.json"
METRICS = "metrics.json"
SUMMARY = "summary.json"


def check(out, settings, resume, error):
    """Make `out` ready for the run `settings`, or raise `error` (one line) why not.

    Returns a note to print, or None. A directory whose run never completed
    an epoch (say its data was missing) holds nothing to keep: it is reused
    whatever its settings were, with or without `resume`.
    """
    path = os.path.join(out, RUN)
    if os.path.exists(path):
        try:
            previous = read_json(path)
        except (OSError, ValueError):
            raise error(f"Output dir '{out}' has an unreadable {RUN}; "
                        "choose another --out.") from None
        if not started(out):
            return f"'{out}' holds a run that never completed an epoch; starting it afresh."
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
    return None


def started(out):
    """True once `out` holds an epoch checkpoint."""
    return (os.path.exists(os.path.join(out, CHECKPOINT_STATE))
            and os.path.exists(os.path.join(out, CHECKPOINT)))


def checkpoint_state(out):
    """`{"epoch": n, "structure_monitor": ...}` of the last checkpoint, or None."""
    return read_json(os.path.join(out, CHECKPOINT_STATE)) if started(out) else None


def finished_summary(out, epochs):
    """The stored summary when `out` finished at least `epochs` epochs, else None."""
    path = os.path.join(out, SUMMARY)
    if not os.path.exists(path) or not os.path.exists(os.path.join(out, "model.keras")):
        return None
    summary = read_json(path)
    return summary if summary.get("epochs", 0) >= epochs else None


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
    An epoch `guard` (a `StopOnNonFinite`) failed is not written: the files
    stay consistent with the last checkpoint.
    """

    def __init__(self, out, initial_epoch=0, guard=None):
        super().__init__()
        self.json_path = os.path.join(out, METRICS)
        self.csv_path = os.path.join(out, "metrics.csv")
        self.guard = guard
        self.rows = []
        if initial_epoch and os.path.exists(self.json_path):
            self.rows = [r for r in read_json(self.json_path) if r["epoch"] <= initial_epoch]
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self.guard is not None and self.guard.failed_epoch is not None:
            return
        row = {"epoch": epoch + 1}
        row.update({k: _number(v) for k, v in (logs or {}).items()})
        row["seconds"] = time.perf_counter() - self._start
        self.rows.append(row)
        write_json(self.json_path, self.rows)
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        partial = self.csv_path + ".partial"
        with open(partial, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(partial, self.csv_path)


class Checkpoint(keras.callbacks.Callback):
    """Saves model + optimizer state (and the monitor's state) atomically each epoch.

    Skips an epoch `guard` (a `StopOnNonFinite`) failed, so the last good
    checkpoint survives a diverging run.
    """

    def __init__(self, out, monitor=None, guard=None):
        super().__init__()
        self.path = os.path.join(out, CHECKPOINT)
        self.state_path = os.path.join(out, CHECKPOINT_STATE)
        self.monitor = monitor
        self.guard = guard

    def on_epoch_end(self, epoch, logs=None):
        if self.guard is not None and self.guard.failed_epoch is not None:
            return
        partial = self.path + ".partial.keras"
        self.model.save(partial)
        os.replace(partial, self.path)  # a crash never leaves a torn checkpoint
        state = {"epoch": epoch + 1}
        if self.monitor is not None:
            state["structure_monitor"] = self.monitor.get_state()
        write_json(self.state_path, state)


def _number(value):
    try:
        return float(keras.ops.convert_to_numpy(value))
    except (TypeError, ValueError):
        return str(value)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, data):
    partial = path + ".partial"
    with open(partial, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(partial, path)
