"""Training runs of tests/test_preemption.py, one process each call.

    python preemption_run.py '<json list of runs>'

Each run trains the small CNN of the shared optimizer tests with RMDA +
GroupLasso under `model.fit` for EPOCHS epochs with a `StageSchedule`
milestone and a BackupAndRestore callback, and writes `<out>/final.npz`
(weights and every optimizer variable) and `<out>/epochs.json` (the epochs
run). Run keys: `out`, `backup`, `callback` ("keras":
`keras.callbacks.BackupAndRestore` with the same arrays every epoch;
"rmda": `keras_rmda.distribute.BackupAndRestore` with a per-epoch stateless
shuffle resumed at its `backed_up_epoch`), `dropout` (a seeded Dropout
layer), `kill_at` ([epoch, batch]: SIGKILL this process there), `raise_at`
(the same, raising an exception instead: an interruption without a new
process).
"""

import json
import os
import signal
import sys

import numpy as np

EPOCHS = 3
BATCH = 32
EXAMPLES = 128  # 4 steps an epoch
MILESTONES = [2]  # restart() and η × 0.1 at the start of epoch index 2, after the resume


class Interrupted(Exception):
    pass


def build_model(dropout):
    import keras

    import optimizer_cases as cases

    layers = [keras.Input((8, 8, 5)), keras.layers.Conv2D(6, 3, activation="relu"),
              keras.layers.MaxPooling2D(), keras.layers.Flatten(),
              keras.layers.Dense(12, activation="relu")]
    if dropout:
        layers.append(keras.layers.Dropout(0.3, seed=5))
    model = keras.Sequential(layers + [keras.layers.Dense(3)])
    return cases.numpy_initialised_rmda(model)


def epoch_stream(initial_epoch, seed=3):
    """Epochs initial_epoch..EPOCHS-1, each shuffled by a stateless op keyed on (seed, epoch)."""
    import tensorflow as tf

    import optimizer_cases as cases

    x, y = cases.data(EXAMPLES)

    def one_epoch(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(EXAMPLES), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(
            (tf.gather(x, order), tf.gather(y, order))).batch(BATCH)

    return tf.data.Dataset.range(initial_epoch, EPOCHS).flat_map(one_epoch)


def run(config):
    import keras

    import keras_rmda as kr
    import optimizer_cases as cases
    from keras_rmda import distribute

    epochs_run = []

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs_run.append(epoch)

        def on_train_batch_begin(self, batch, logs=None):
            if [epochs_run[-1], batch] == config.get("kill_at"):
                os.kill(os.getpid(), signal.SIGKILL)  # preempted mid-epoch
            if [epochs_run[-1], batch] == config.get("raise_at"):
                raise Interrupted()

    model = build_model(config.get("dropout", False))
    schedule = kr.StageSchedule(MILESTONES)
    if config["callback"] == "keras":
        backup = keras.callbacks.BackupAndRestore(config["backup"])
        data = dict(x=cases.data(EXAMPLES)[0], y=cases.data(EXAMPLES)[1], batch_size=BATCH,
                    shuffle=False)
    else:
        backup = distribute.BackupAndRestore(config["backup"])
        # The stream starts at the epoch the backup will restore.
        data = dict(x=epoch_stream(backup.backed_up_epoch), steps_per_epoch=EXAMPLES // BATCH,
                    shuffle=False)
    try:
        model.fit(**data, epochs=EPOCHS, verbose=0, callbacks=[schedule, backup, Interrupt()])
    except Interrupted:
        return model
    arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    arrays.update({f"opt{i}": np.asarray(v.numpy())
                   for i, v in enumerate(model.optimizer.variables)})
    os.makedirs(config["out"], exist_ok=True)
    np.savez(os.path.join(config["out"], "final.npz"), **arrays)
    with open(os.path.join(config["out"], "epochs.json"), "w") as f:
        json.dump(epochs_run, f)
    return model


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    for run_config in json.loads(sys.argv[1]):
        run(run_config)
