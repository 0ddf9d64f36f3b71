"""Step time of RMDA against Keras SGD with momentum, on this machine's CPU.

1. `model.fit` steps of LeNet-5 (6-16-120-84) on MNIST-shaped input, batch
   128: RMDA(GroupLasso) against SGD(momentum=0.9), jit off and on.
2. The optimizer update alone on a ~25M-parameter set of dense and conv
   kernels: RMDA(GroupLasso), RMDA(L1) against SGD(momentum=0.9), jit off and
   on.

Repeats are interleaved (A B A B ...) in one run and the median ratio is
printed; the fit timing times the steps inside `fit` (see `StepClock`), on
several independent models per optimizer. Each measurement runs in a
process of its own. The last line is `step_time_ratio <worst of the two
modes>`.

    python benchmarks/step_time.py [--repeats 7] [--instances 5] [--parts fit,update]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_rmda as kr  # noqa: E402
from timing import big_variable_set  # noqa: E402
from timing import interleaved_medians  # noqa: E402

import record  # noqa: E402

BATCH, FIT_STEPS = 128, 100


def lenet5():
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(6, 5, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 5, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(120, activation="relu"),
        keras.layers.Dense(84, activation="relu"),
        keras.layers.Dense(10),
    ])


class StepClock(keras.callbacks.Callback):
    """Times the steps of a `fit` call, from the end of its first batch to the end of its last.

    Not the whole call: on this 2-core machine a `fit` call sometimes stalls
    for 150-200 ms AFTER `on_train_end`, while its dataset iterator is torn
    down (measured with this callback; SGD and RMDA alike, about one call in
    three), which made whole-call timings look bimodal. That stall is not a
    training step.
    """

    def on_train_begin(self, logs=None):
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())

    def step_seconds(self):
        return (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1)


def fit_step_ratio(jit, repeats, instances=5):
    """Median `fit` step time of RMDA over SGD, over `instances` models of each.

    Several independent models per optimizer, interleaved, so one model's
    luck (memory placement, thread scheduling) does not decide the ratio.
    Each model's median is printed.
    """
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * 8, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, size=BATCH * 8)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).cache().repeat()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizers = {
        "sgd": lambda: keras.optimizers.SGD(0.01, momentum=0.9),
        # finalize=False: setting the weights to the prox point is a once-per-fit
        # cost (10 eager ops a variable), not part of a step.
        "rmda": lambda: kr.RMDA(0.1, 0.1, regularizer=kr.GroupLasso(1e-4), finalize=False),
    }
    runs, clocks = {}, {}
    for instance in range(instances):
        for name, make in optimizers.items():
            keras.utils.set_random_seed(0)
            model = lenet5()
            model.compile(make(), loss, jit_compile=jit)
            model.fit(data, steps_per_epoch=5, epochs=1, verbose=0, shuffle=False)  # trace, warm up
            clock = clocks[(name, instance)] = StepClock()
            runs[(name, instance)] = (
                lambda m=model, c=clock: m.fit(data, steps_per_epoch=FIT_STEPS, epochs=1,
                                               verbose=0, shuffle=False, callbacks=[c])
            )
    step_times = {key: [] for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():  # interleaved: A B A B ...
            run()
            step_times[key].append(clocks[key].step_seconds())
    medians = {name: statistics.median(t for (n, _), ts in step_times.items() if n == name
                                       for t in ts) for name in optimizers}
    per_model = {name: [round(1e3 * statistics.median(ts), 2)
                        for (n, _), ts in step_times.items() if n == name] for name in optimizers}
    return medians["rmda"] / medians["sgd"], medians, per_model


def compiled_apply(optimizer, grads, variables, jit):
    return tf.function(lambda: optimizer.apply(grads, variables), jit_compile=jit)


def update_ratios(jit, repeats):
    optimizers = {
        "sgd": lambda: keras.optimizers.SGD(0.01, momentum=0.9),
        "group_lasso": lambda: kr.RMDA(0.1, 0.1, regularizer=kr.GroupLasso(1e-4)),
        "l1": lambda: kr.RMDA(0.1, 0.1, regularizer=kr.L1(1e-4)),
    }
    runs = {}
    for name, make in optimizers.items():
        variables = big_variable_set()
        grads = [tf.constant(np.full(v.shape, 1e-3, "float32")) for v in variables]
        optimizer = make()
        optimizer.build(variables)
        step = compiled_apply(optimizer, grads, variables, jit)
        step()  # trace
        runs[name] = step
    medians = interleaved_medians(runs, repeats)
    n = sum(int(np.prod(v.shape)) for v in big_variable_set())
    return {k: medians[k] / medians["sgd"] for k in ("group_lasso", "l1")}, medians, n


def measure(part, jit, args):
    """One measurement, printed as a line; returns its ratio (fit) or ratios (update)."""
    if part == "fit":
        ratio, medians, per_model = fit_step_ratio(jit, args.repeats, args.instances)
        per_step = {k: f"{1e3 * v:.2f} ms" for k, v in medians.items()}
        print(f"fit step, LeNet-5, batch {BATCH}, jit={jit}: {per_step}  "
              f"RMDA/SGD = {ratio:.3f}  (ms a step, each model: {per_model})")
        return ratio
    ratios, medians, n = update_ratios(jit, args.repeats)
    per_update = {k: f"{1e3 * v:.1f} ms" for k, v in medians.items()}
    print(f"update alone, {n / 1e6:.1f}M parameters, jit={jit}: {per_update}  "
          + "  ".join(f"{k}/SGD = {r:.3f}" for k, r in ratios.items()))
    return ratios


def in_fresh_process(part, jit, args):
    """`measure` in a new Python process: what one measurement leaves behind
    (allocator state, thread pools, 100s of MB of variables) skewed the next
    one in the same process (update alone after the fit timing: group LASSO
    2.2-2.5x instead of 1.5-1.6x, with SGD's own time moving)."""
    command = [sys.executable, __file__, "--measure", f"{part}:{int(jit)}",
               "--repeats", str(args.repeats), "--instances", str(args.instances)]
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{child.stderr}")
    *lines, result = child.stdout.strip().splitlines()
    print(*lines, sep="\n", flush=True)
    return json.loads(result)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--instances", type=int, default=5,
                        help="independent LeNet-5 models per optimizer in the fit timing")
    parser.add_argument("--parts", default="fit,update",
                        help="what to time, comma-separated: fit, update")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # part:jit, in a child process
    args = parser.parse_args()
    if args.measure:
        part, jit = args.measure.split(":")
        print(json.dumps(measure(part, bool(int(jit)), args)))
        return
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"{os.cpu_count()} CPU cores; interleaved repeats: {args.repeats}; "
          "each measurement in its own process", flush=True)

    parts = args.parts.split(",")
    results = {(part, jit): in_fresh_process(part, jit, args)
               for part in ("fit", "update") if part in parts for jit in (False, True)}
    update = {jit: r for (part, jit), r in results.items() if part == "update"}
    lines = report_update(update) if update else []
    step_ratios = [r for (part, _), r in results.items() if part == "fit"]
    if step_ratios:
        lines.append(f"step_time_ratio {max(step_ratios):.3f}")
        print(lines[-1])
    rows = [{"part": part, "jit": jit, "ratios": r} for (part, jit), r in results.items()]
    record.write("step_time", rows, lines[-1] if lines else None, vars(args))


def report_update(update):
    """Prints the update-alone ratios; returns the lines."""
    lines = [f"update_ratio jit={jit} group_lasso {update[jit]['group_lasso']:.3f} "
             f"l1 {update[jit]['l1']:.3f}" for jit in (False, True)]
    best = min((False, True), key=lambda j: update[j]["group_lasso"])
    lines.append(f"update_ratio group_lasso {update[best]['group_lasso']:.3f} "
                 f"l1 {update[best]['l1']:.3f}  (jit={best}, the faster path)")
    lines.append(f"update_ratio_jit group_lasso {update[True]['group_lasso']:.3f} "
                 f"l1 {update[True]['l1']:.3f}")
    for line in lines:
        print(line)
    return lines


if __name__ == "__main__":
    main()
