"""Unstructured sparsity: RMDA + L1 vs gradual magnitude pruning on LeNet-5 / MNIST.

    python benchmarks/unstructured.py [--train-size 12000] [--epochs 8] [--data-dir DIR]

LeNet-5 small (6-16-120-84, `keras_rmda.models.lenet5`) on offline MNIST
(TFDS, no download). By default a SUBSET: the first 12,000 training images
and 5,000 test images, 8 epochs, batch 128 (about 10 minutes on 2 CPU
cores); `--train-size 60000 --test-size 10000 --epochs 30` for the full run.

- RMDA (η 0.1, c 0.1) with L1 on every conv / dense kernel, λ swept over
  `--lambdas`; for each target sparsity the most accurate run whose kernel
  sparsity (at the prox point, where `fit` leaves the model) is at least the
  target is reported.
- GMP (Zhu & Gupta): SGD with momentum 0.9, η 0.03 (η 0.1 diverges here), every kernel pruned to
  the target with the cubic schedule from the end of epoch 1 to 3/4 of
  training, every quarter epoch.

Both use the same stage schedule (η ÷ 10 after 1/2 and 3/4 of the epochs;
RMDA also restarts there). Prints a table and as its last line

    unstructured rmda_acc_at_95 <a> gmp_acc_at_95 <b>

(test accuracy as fractions; nan where the sparsity was not reached).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_rmda as kr  # noqa: E402
from keras_rmda import callbacks, models, pruning  # noqa: E402

TARGETS = (0.90, 0.95, 0.98)


def load_mnist(data_dir, train_size, test_size):
    import tensorflow_datasets as tfds

    def arrays(split, size):
        dataset = tfds.load("mnist", split=split, data_dir=data_dir, download=False,
                            as_supervised=True).take(size).batch(size)
        images, labels = next(iter(tfds.as_numpy(dataset)))
        return images.astype("float32") / 255.0, labels.astype("int32")

    return arrays("train", train_size), arrays("test", test_size)


def kernel_sparsity(model):
    kernels = [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]
    values = [keras.ops.convert_to_numpy(k) for k in kernels]
    return sum(int(np.count_nonzero(v == 0)) for v in values) / sum(v.size for v in values)


def train(optimizer, data, epochs, batch_size, extra_callbacks=()):
    (x, y), (x_test, y_test) = data
    keras.utils.set_random_seed(0)
    model = models.lenet5()
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=True)
    milestones = [m for m in sorted({epochs // 2, (3 * epochs) // 4}) if 0 < m < epochs]
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0,
              callbacks=[callbacks.StageSchedule(milestones), *extra_callbacks])
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return float(accuracy), kernel_sparsity(model)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--train-size", type=int, default=12000)
    parser.add_argument("--test-size", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lambdas", type=float, nargs="+", default=[4e-3, 8e-3, 1.5e-2, 3e-2])
    args = parser.parse_args(argv)
    data_dir = args.data_dir or "../shared/data/tensorflow_datasets"
    data = load_mnist(data_dir, args.train_size, args.test_size)
    steps_per_epoch = -(-args.train_size // args.batch_size)

    rmda_runs = []
    for strength in args.lambdas:
        optimizer = kr.RMDA(0.1, momentum=0.1, regularizer=kr.L1(strength))
        accuracy, sparsity = train(optimizer, data, args.epochs, args.batch_size)
        rmda_runs.append((strength, accuracy, sparsity))
        print(f"rmda λ={strength:g}: accuracy {accuracy:.4f} sparsity {sparsity:.4f}", flush=True)

    gmp, rmda = {}, {}
    for target in TARGETS:
        schedule = pruning.GradualMagnitudePruning(
            target, begin_step=steps_per_epoch, end_step=(3 * args.epochs * steps_per_epoch) // 4,
            frequency=max(1, steps_per_epoch // 4))
        gmp[target] = train(keras.optimizers.SGD(0.03, momentum=0.9), data, args.epochs,
                            args.batch_size, [schedule])
        print(f"gmp target {target:.2f}: accuracy {gmp[target][0]:.4f} "
              f"sparsity {gmp[target][1]:.4f}", flush=True)
        reached = [run for run in rmda_runs if run[2] >= target]
        rmda[target] = max(reached, key=lambda run: run[1]) if reached else None

    print(f"\nLeNet-5 small, MNIST subset {args.train_size}/{args.test_size}, "
          f"{args.epochs} epochs: test accuracy at kernel sparsity ≥ target")
    print(f"{'target':>7} {'RMDA+L1 acc':>12} {'(λ, sparsity)':>18} {'GMP acc':>8} {'sparsity':>9}")
    for target in TARGETS:
        run = rmda[target]
        rmda_text = (f"{run[1]:>12.4f} {f'({run[0]:g}, {run[2]:.3f})':>18}" if run
                     else f"{'nan':>12} {'not reached':>18}")
        print(f"{target:>7.2f} {rmda_text} {gmp[target][0]:>8.4f} {gmp[target][1]:>9.4f}")
    rmda_95 = rmda[0.95][1] if rmda[0.95] else float("nan")
    gmp_95 = gmp[0.95][0] if gmp[0.95][1] >= 0.95 - 1e-3 else float("nan")
    print(f"unstructured rmda_acc_at_95 {rmda_95:.4f} gmp_acc_at_95 {gmp_95:.4f}")


if __name__ == "__main__":
    main()
