"""Time to the first training step: RMDA against Keras SGD with momentum.

The time from just before `model.compile` to the end of the first
`train_on_batch` (tracing, graph building, compilation and the step itself)
of `keras_rmda.models.resnet50` on CIFAR-shaped random data (32×32×3, 10
classes, batch 32): RMDA(GroupLasso(1e-4)) against
`keras.optimizers.SGD(momentum=0.9)`. It is what a user waits before the
first batch of `fit` completes, and what a test building the model pays.

Each measurement runs in a fresh Python process (a second first step in one
process would find Keras's and TensorFlow's caches warm), interleaved
(A B A B ...) over `--repeats`; the median ratio is printed. Each process
also reports the time to build the model (the same for both optimizers, not
part of the ratio), its second step (the steady step, for scale) and the
CPU time of the first step (all threads; steadier than wall time on a
shared machine, printed as `first_step_cpu_ratio`).

    python benchmarks/first_step.py [--repeats 3] [--model resnet50|vgg19|lenet5]
                                    [--jit auto|true|false] [--batch 32]

Prints one line per measurement, then the medians, `first_step_cpu_ratio
<c>` and last `first_step_ratio <median RMDA / median SGD, wall time>`; the
rows go to `benchmarks/results/first_step.json` (`--name` changes the file).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import record  # noqa: E402

INPUT_SHAPE, NUM_CLASSES = (32, 32, 3), 10
OPTIMIZERS = ("sgd", "rmda")
JIT = {"auto": "auto", "true": True, "false": False}


def make_optimizer(name):
    import keras

    import keras_rmda as kr

    if name == "sgd":
        return keras.optimizers.SGD(0.01, momentum=0.9)
    return kr.RMDA(0.1, 0.1, regularizer=kr.GroupLasso(1e-4))


def measure(optimizer_name, model_name, jit, batch):
    """One first step, in this process: {build_s, first_step_s, second_step_s, ...}."""
    start = time.perf_counter()
    import keras
    import numpy as np

    import keras_rmda as kr
    imported = time.perf_counter()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch,) + INPUT_SHAPE).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=batch).astype("int32")
    keras.utils.set_random_seed(0)
    built_start, built_start_cpu = time.perf_counter(), time.process_time()
    model = kr.models.build(model_name, NUM_CLASSES, INPUT_SHAPE)
    built, built_cpu = time.perf_counter(), time.process_time()

    optimizer = make_optimizer(optimizer_name)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=JIT[jit])
    model.train_on_batch(x, y)
    first, first_cpu = time.perf_counter(), time.process_time()
    loss = model.train_on_batch(x, y)
    second = time.perf_counter()
    if not np.isfinite(float(np.asarray(loss).reshape(-1)[0])):
        raise RuntimeError(f"{optimizer_name}: non-finite loss {loss}")
    return {
        "optimizer": optimizer_name,
        "import_s": imported - start,
        "build_s": built - built_start,
        "first_step_s": first - built,
        "build_cpu_s": built_cpu - built_start_cpu,
        "first_step_cpu_s": first_cpu - built_cpu,
        "second_step_s": second - first,
        "jit_compile": model.jit_compile,  # "auto" resolved by Keras
        "variables": len(model.trainable_variables),
        "parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
        "backend": keras.backend.backend(),
        "keras_rmda": os.path.dirname(os.path.abspath(kr.__file__)),
    }


def in_fresh_process(optimizer_name, args):
    """`measure` in a new Python process; returns its dict."""
    command = [sys.executable, os.path.abspath(__file__),
               "--measure", optimizer_name, "--model", args.model,
               "--jit", args.jit, "--batch", str(args.batch)]
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3,
                        help="fresh processes per optimizer, interleaved")
    parser.add_argument("--model", default="resnet50", choices=("resnet50", "vgg19", "lenet5"))
    parser.add_argument("--jit", default="auto", choices=tuple(JIT),
                        help="model.compile(jit_compile=...); auto: Keras's default")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--name", default="first_step", help="results file name")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # optimizer name, in a child
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.model, args.jit, args.batch)))
        return

    import keras  # for the versions `record` writes (and the backend's own import)

    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}, "
          f"{os.cpu_count()} CPU cores; {args.model} on {INPUT_SHAPE}, batch {args.batch}, "
          f"jit_compile={args.jit}; interleaved repeats: {args.repeats}, "
          "each measurement in its own process", flush=True)
    rows = []
    for repeat in range(args.repeats):
        for name in OPTIMIZERS:  # interleaved: A B A B ...
            row = dict(in_fresh_process(name, args), repeat=repeat)
            rows.append(row)
            print(f"repeat {repeat} {name:4s}: first step {row['first_step_s']:7.2f} s, "
                  f"CPU {row['first_step_cpu_s']:7.2f} s  "
                  f"(model build {row['build_s']:.2f} s, second step "
                  f"{row['second_step_s']:.3f} s, import {row['import_s']:.1f} s, "
                  f"jit_compile={row['jit_compile']})", flush=True)

    def median(name, key):
        return statistics.median(r[key] for r in rows if r["optimizer"] == name)

    first = {name: median(name, "first_step_s") for name in OPTIMIZERS}
    ratio = first["rmda"] / first["sgd"]
    cpu = {name: median(name, "first_step_cpu_s") for name in OPTIMIZERS}
    print(f"{args.model}: {rows[0]['variables']} trainable variables, "
          f"{rows[0]['parameters'] / 1e6:.1f}M parameters; keras_rmda from {rows[0]['keras_rmda']}")
    for name in OPTIMIZERS:
        print(f"median {name:4s}: first step {first[name]:.2f} s (CPU {cpu[name]:.2f} s), "
              f"model build {median(name, 'build_s'):.2f} s, "
              f"second step {median(name, 'second_step_s'):.3f} s")
    # CPU time (all threads of the process) moves far less than wall time
    # when other jobs share the cores; wall time is what a user waits.
    print(f"first_step_cpu_ratio {cpu['rmda'] / cpu['sgd']:.3f}")
    summary = f"first_step_ratio {ratio:.3f}"
    record.write(args.name, rows, summary, {
        "model": args.model, "input_shape": INPUT_SHAPE, "batch": args.batch,
        "jit_compile": args.jit, "repeats": args.repeats,
        "rmda": "RMDA(0.1, 0.1, regularizer=GroupLasso(1e-4))",
        "sgd": "SGD(0.01, momentum=0.9)",
    })
    print(summary)


if __name__ == "__main__":
    main()
