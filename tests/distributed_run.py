"""Run in a subprocess: MirroredStrategy over two logical CPUs vs one device.

`python distributed_run.py <optimizer> [cnn|transformer]`; the transformer
has attention heads and MLP neurons as shared groups. Prints one JSON line: the largest weight difference, whether every replica
holds the same optimizer state, and the stage step after restart().
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)

import numpy as np  # noqa: E402

import optimizer_cases as cases  # noqa: E402


def train(strategy, name, architecture):
    x, y = cases.data()
    with strategy.scope():
        model = cases.small_transformer() if architecture == "transformer" else cases.small_cnn()
        model = cases.compile_model(model, cases.OPTIMIZERS[name](finalize=False))
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    steps_after_restart = None
    if hasattr(model.optimizer, "restart"):  # eagerly, between epochs, under the strategy
        model.optimizer.restart()
        steps_after_restart = [float(model.optimizer.stage_step.numpy())]
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    return model, steps_after_restart


def replica_values(variable):
    value = variable.value if hasattr(variable, "value") else variable
    if hasattr(value, "values"):
        return [np.asarray(v.numpy()) for v in value.values]
    return [np.asarray(value.numpy())]


if __name__ == "__main__":
    name = sys.argv[1]
    architecture = sys.argv[2] if len(sys.argv) > 2 else "cnn"  # or "transformer"
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    distributed, steps = train(mirrored, name, architecture)
    single, _ = train(tf.distribute.get_strategy(), name, architecture)
    diff = max(
        float(np.abs(a.numpy() - b.numpy()).max())
        for a, b in zip(distributed.trainable_variables, single.trainable_variables)
    )
    replicas_agree = all(
        all(np.array_equal(vals[0], other) for other in vals[1:])
        for vals in map(replica_values, distributed.optimizer.variables)
    )
    n_replicas = len(replica_values(distributed.optimizer.variables[-1]))
    print(json.dumps({"max_diff": diff, "replicas_agree": replicas_agree,
                      "replicas": n_replicas, "steps_after_restart": steps}))
