"""One worker of tests/test_multiworker.py (also the one-process reference).

Run as `python multiworker_worker.py '<json config>'` with TF_CONFIG set: it
trains a small CNN with RMDA + GroupLasso under MultiWorkerMirroredStrategy
through `keras_rmda.distribute.fit` and writes `<out>/worker-<i>.npz` (the
weights, every optimizer variable, the state right after the milestone's
restart and the weights after epoch 1) and `<out>/worker-<i>.json`. Config
keys: `out`, `backup` (a BackupAndRestore directory), `kill_at` ([epoch,
batch]: this worker SIGKILLs itself there, `kill_worker` says which),
`probe_fit` (afterwards, try `model.fit` under the strategy and record how
it went), `mirrored` (instead: one process, MirroredStrategy over two
logical CPUs, writing `worker-mirrored.*`).
"""

import json
import os
import signal
import sys

import numpy as np

EPOCHS = 3
GLOBAL_BATCH = 32
EXAMPLES = 128  # 4 steps an epoch
MILESTONES = [2]  # restart() at the start of epoch index 2
SEED = 7


def build_model():
    """The small CNN of the shared optimizer tests, weights drawn by numpy."""
    import optimizer_cases as cases

    return cases.numpy_initialised_rmda(cases.small_cnn())


def epoch_dataset(epoch):
    """The global batches of one epoch: a stateless shuffle keyed on (SEED, epoch)."""
    import tensorflow as tf

    import optimizer_cases as cases

    x, y = cases.data(EXAMPLES)
    order = tf.random.experimental.stateless_shuffle(
        tf.range(EXAMPLES), seed=tf.constant([SEED, epoch], tf.int64))
    dataset = tf.data.Dataset.from_tensor_slices((tf.gather(x, order), tf.gather(y, order)))
    options = tf.data.Options()
    # In-memory data: each worker takes its half of every global batch, in order.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.batch(GLOBAL_BATCH).with_options(options)


def state_arrays(model, prefix=""):
    """Weights and every optimizer variable as numpy arrays."""
    arrays = {f"{prefix}w{i}": w for i, w in enumerate(model.get_weights())}
    for i, v in enumerate(model.optimizer.variables):
        arrays[f"{prefix}opt{i}"] = np.asarray(v.numpy())
    return arrays


def make_callbacks(model, results, kill_at=None, backup=None):
    import keras

    import keras_rmda as kr
    from keras_rmda import distribute

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            results.setdefault("epochs_run", []).append(epoch)
            if epoch == MILESTONES[0]:  # after StageSchedule's restart()
                results["arrays"].update(state_arrays(model, "restart_"))

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                results["arrays"].update({f"epoch0_w{i}": w
                                          for i, w in enumerate(model.get_weights())})

        def on_train_batch_begin(self, batch, logs=None):
            if kill_at is not None and [results["epochs_run"][-1], batch] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # preempted mid-epoch

    callbacks = [kr.StageSchedule(MILESTONES), kr.callbacks.StructureMonitor(), Record()]
    if backup is not None:
        callbacks.append(distribute.BackupAndRestore(backup))
    return callbacks


def train(model, kill_at=None, backup=None):
    """`distribute.fit` for EPOCHS epochs; returns (history dict, recorded results)."""
    from keras_rmda import distribute

    results = {"arrays": {}}
    history = distribute.fit(model, epoch_dataset, epochs=EPOCHS,
                             callbacks=make_callbacks(model, results, kill_at, backup))
    results["arrays"].update(state_arrays(model))
    return history.history, results


def probe_fit(strategy):
    """`model.fit` for one epoch under the strategy: its weights, or its error."""
    import keras_rmda as kr

    with strategy.scope():
        model = build_model()
    try:
        model.fit(epoch_dataset(0), epochs=1, verbose=0, callbacks=[kr.StageSchedule(MILESTONES)])
    except Exception as error:  # noqa: BLE001 (any failure is the answer)
        return {"error": f"{type(error).__name__}: {error}"[:2000]}, {}
    return {"error": None}, {f"fit_w{i}": w for i, w in enumerate(model.get_weights())}


def main(config):
    import tensorflow as tf  # the strategy first: it configures the runtime

    if config.get("mirrored"):  # one process, two logical CPUs
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy, index = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), "mirrored"
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        index = strategy.cluster_resolver.task_id
    with strategy.scope():
        model = build_model()
    if config.get("kill_worker") != index:
        config["kill_at"] = None
    history, results = train(model, config.get("kill_at"), config.get("backup"))
    arrays = results.pop("arrays")
    local_values = [[np.asarray(r.numpy()) for r in strategy.experimental_local_results(v.value)]
                    for v in model.weights + model.optimizer.variables]
    report = {"replicas": strategy.num_replicas_in_sync, "history": history,
              "local_replicas": len(local_values[0]),
              "local_replicas_agree": all(np.array_equal(values[0], other)
                                          for values in local_values for other in values),
              "optimizer_paths": [v.path for v in model.optimizer.variables], **results}
    if config.get("probe_fit"):
        report["fit"], fit_arrays = probe_fit(strategy)
        arrays.update(fit_arrays)
    out = config["out"]
    np.savez(os.path.join(out, f"worker-{index}.npz"), **arrays)
    with open(os.path.join(out, f"worker-{index}.json"), "w") as f:
        json.dump(report, f, default=float)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(json.loads(sys.argv[1]))
