"""Does slimming make a channel-sparse CNN as fast as a natively narrow one?

A VGG-style CNN on 32x32x3 (conv 64-64-128-128-256-256, each with
BatchNorm + ReLU, max-pooling after each pair, global average pooling,
dense 10). In each conv layer 80% of the output channels are made unread
by planting zero input groups in their consumers (the next conv's kernel
slice [:, :, k, :], the dense head's row k): the structure group LASSO
leaves. The producers' filters are left dense, so only slim's liveness
analysis can find them. Three SavedModels, written by the same exporter:

- dense:  `export_for_serving(model, slim=False)`, the model as trained;
- slim:   `export_for_serving(model)`, unread channels removed;
- native: the same architecture built at the slimmed widths (random
  weights), the physical limit.

Prints parameters, size on disk, FLOPs (multiply-accumulates) and the
median CPU latency of `serving_default` at batch 1 and 64 (repeats
interleaved across the three models). Last line:
`slim_speedup <dense/slim at 64> native_speedup <dense/native at 64>
flop_ratio <dense/slim FLOPs>`.

    python benchmarks/slim_speed.py [--repeats 15]
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_rmda.export import export_for_serving  # noqa: E402
from keras_rmda.structure import structure_report  # noqa: E402

import record  # noqa: E402

WIDTHS = (64, 64, 128, 128, 256, 256)
DEAD_SHARE = 0.8


def vgg(widths, name):
    inputs = keras.Input((32, 32, 3), name="image")
    x = inputs
    for i, width in enumerate(widths):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU()(x)
        if i % 2 == 1:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, name="head")(x)
    model = keras.Model(inputs, outputs, name=name)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # non-trivial normalisation statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n),
                               rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n)])
    return model


def plant_unread_channels(model, rng):
    """Zero the consumers' input groups of 80% of each conv's channels."""
    consumers = [f"conv{i}" for i in range(1, len(WIDTHS))] + ["head"]
    kept = []
    for width, consumer in zip(WIDTHS, consumers):
        dead = rng.choice(width, size=int(round(DEAD_SHARE * width)), replace=False)
        layer = model.get_layer(consumer)
        kernel = keras.ops.convert_to_numpy(layer.kernel).copy()
        kernel[..., dead, :] = 0.0
        layer.kernel.assign(kernel)
        kept.append(width - len(dead))
    return tuple(kept)


def disk_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def latencies(functions, batch, repeats):
    """Median seconds per call of each function, repeats interleaved."""
    x = tf.constant(np.random.default_rng(1).standard_normal((batch, 32, 32, 3)), tf.float32)
    for fn in functions.values():  # warm up
        for _ in range(3):
            fn(image=x)
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn(image=x)["output_0"].numpy()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)

    model = vgg(WIDTHS, "vgg_dense")
    kept = plant_unread_channels(model, np.random.default_rng(0))
    native = vgg(kept, "vgg_native")
    print(f"planted: zero input groups in each consumer (conv1-5 kernels, dense head) for "
          f"{DEAD_SHARE:.0%} of each conv's output channels; producers' filters left dense")
    print(f"widths dense {WIDTHS} -> kept {kept}")

    report = structure_report(model)
    flops = {"dense": report.total["flops"], "slim": report.total["flops_after"],
             "native": structure_report(native).total["flops"]}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {
            "dense": export_for_serving(model, os.path.join(tmp, "dense"), slim=False),
            "slim": export_for_serving(model, os.path.join(tmp, "slim")),
            "native": export_for_serving(native, os.path.join(tmp, "native"), slim=False),
        }
        loaded = {name: tf.saved_model.load(path) for name, path in paths.items()}
        functions = {name: m.signatures["serving_default"] for name, m in loaded.items()}
        params = {name: sum(int(np.prod(v.shape)) for v in m.model_variables)
                  for name, m in loaded.items()}
        sizes = {name: disk_size(path) for name, path in paths.items()}
        at_1 = latencies(functions, 1, args.repeats * 4)
        at_64 = latencies(functions, 64, args.repeats)

    print(f"{'model':8}{'params':>10}{'size KiB':>10}{'MFLOPs':>9}{'ms @1':>9}{'ms @64':>9}")
    for name in ("dense", "slim", "native"):
        print(f"{name:8}{params[name]:>10}{sizes[name] / 1024:>10.0f}{flops[name] / 1e6:>9.1f}"
              f"{at_1[name] * 1e3:>9.2f}{at_64[name] * 1e3:>9.1f}")
    slim_speedup = at_64["dense"] / at_64["slim"]
    native_speedup = at_64["dense"] / at_64["native"]
    print(f"batch-1 speedup: slim {at_1['dense'] / at_1['slim']:.2f} "
          f"native {at_1['dense'] / at_1['native']:.2f}")
    summary = (f"slim_speedup {slim_speedup:.2f} native_speedup {native_speedup:.2f} "
               f"flop_ratio {flops['dense'] / flops['slim']:.2f}")
    rows = [{"model": name, "params": params[name], "saved_model_bytes": sizes[name],
             "flops": flops[name], "ms_batch_1": at_1[name] * 1e3,
             "ms_batch_64": at_64[name] * 1e3} for name in ("dense", "slim", "native")]
    record.write("slim_speed", rows, summary, dict(vars(args), widths=list(WIDTHS),
                                                   kept=list(kept)))
    print(summary)


if __name__ == "__main__":
    main()
