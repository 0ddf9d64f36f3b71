"""Unstructured sparsity: RMDA + L1 against gradual magnitude pruning (GMP).

    python benchmarks/unstructured.py               # ~45 min on 2 CPU cores
    python benchmarks/unstructured.py --quick       # ~5 min smoke run

LeNet-5 small (6-16-120-84, `keras_rmda.models.lenet5`) on all 60,000 MNIST
training images (no augmentation, normalised as `keras_rmda.datasets` does),
tested on the 10,000 test images. Both methods get the same budget, 20
epochs of batch 128, and no fine-tuning phase (neither gets one):

- RMDA (η 0.1, c 0.1) with L1 on every conv / dense kernel, the paper's
  stage schedule (`StageSchedule`, milestones 10 and 15, γ = 0.1, "ramda"
  momentum rule). For each target sparsity λ is searched until the kernel
  sparsity of the final model is within ±0.5 point of the target: a
  bracketing search in log λ (interpolating logit(sparsity) between the
  bracket, kept inside its middle half, so it also works as a bisection;
  before a bracket exists, a secant step in logit(sparsity) over log λ, by a
  factor of 2 to 16); every run, of any target, informs the others.
- GMP (Zhu & Gupta 2017, `keras_rmda.pruning`): SGD with momentum 0.9, η 0.03
  ÷ 10 at epochs 10 and 15; pruned to the target with the cubic schedule
  from the end of epoch 1 to the end of epoch 10, every quarter epoch; the
  mask then stays fixed while η decays (its recovery phase). Two variants:
  every kernel to the target (Zhu & Gupta's default), and one global
  magnitude threshold over all kernels (layers keep different sparsities,
  as with L1: the stronger baseline).

Sparsity is counted over all conv / dense kernels of the final model (the
model `fit` leaves, which RMDA finalises at its prox point), accuracy on the
test set. Rows go to `benchmarks/results/unstructured.json`, the plot of
accuracy against sparsity to `benchmarks/results/unstructured.png`. The last
line reads `unstructured rmda_acc_at_95 <a> gmp_acc_at_95 <b> gmp_global_acc_at_95 <c>`
(nan where the target was not reached within `--max-runs` RMDA runs per target).
"""

import argparse
import json
import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_rmda as kr  # noqa: E402
from keras_rmda import callbacks, datasets, models, pruning  # noqa: E402

import record  # noqa: E402

TARGETS = (0.90, 0.95, 0.98)
# Zhu & Gupta prune every kernel to the target; a global threshold lets the
# layers keep different sparsities, as L1 does (the stronger baseline).
GMP_VARIANTS = {"gmp": "per_variable", "gmp_global": "global"}
DEFAULT_DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "shared", "data", "tensorflow_datasets")


def kernel_sparsity(model):
    """Share of exactly-zero weights over all conv / dense kernels."""
    values = [keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers
              if hasattr(layer, "kernel")]
    return sum(int(np.count_nonzero(v == 0)) for v in values) / sum(v.size for v in values)


def train(optimizer, data, settings, extra_callbacks=()):
    """Fit LeNet-5; returns (test accuracy, kernel sparsity) of the final model."""
    train_data, test_data, steps = data
    keras.utils.set_random_seed(settings["seed"])
    model = models.lenet5()
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(train_data, epochs=settings["epochs"], steps_per_epoch=steps, verbose=0,
              shuffle=False,
              callbacks=[callbacks.StageSchedule(settings["milestones"]), *extra_callbacks])
    _, accuracy = model.evaluate(test_data, verbose=0)
    return float(accuracy), kernel_sparsity(model)


def next_lambda(runs, target, tolerance):
    """The next λ to try for `target`, or None when a run is within tolerance."""
    if any(abs(r["sparsity"] - target) <= tolerance for r in runs):
        return None
    below = [r for r in runs if r["sparsity"] < target]
    above = [r for r in runs if r["sparsity"] > target]
    if not below or not above:  # no bracket yet: step out along the secant
        side = above or below
        nearest = sorted(side, key=lambda r: abs(_logit(r["sparsity"]) - _logit(target)))[:2]
        factor = 0.5 if above else 2.0
        if len(nearest) == 2 and nearest[0]["lambda"] != nearest[1]["lambda"]:
            a, b = nearest
            slope = ((_logit(a["sparsity"]) - _logit(b["sparsity"]))
                     / (math.log(a["lambda"]) - math.log(b["lambda"])))
            if slope > 0:  # sparsity grows with λ, as it should
                step = (_logit(target) - _logit(a["sparsity"])) / slope
                factor = math.exp(min(max(step, -math.log(16)), math.log(16)))
                factor = min(factor, 0.5) if above else max(factor, 2.0)
        return nearest[0]["lambda"] * factor
    lo = max(below, key=lambda r: r["lambda"])
    hi = min(above, key=lambda r: r["lambda"])
    a, b = math.log(lo["lambda"]), math.log(hi["lambda"])
    if not a < b:  # sparsity not monotone in λ at this resolution: bisect
        return math.exp((a + b) / 2)
    share = ((_logit(target) - _logit(lo["sparsity"]))
             / (_logit(hi["sparsity"]) - _logit(lo["sparsity"])))
    return math.exp(a + min(max(share, 0.25), 0.75) * (b - a))


def _logit(s):
    return math.log(max(s, 1e-6) / max(1 - s, 1e-6))


def plot(rmda_runs, gmp_runs, path, settings):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for runs, label, marker in ((rmda_runs, "RMDA + L1 (each λ run)", "o"),
                                (gmp_runs["gmp"], "GMP, every kernel to the target", "s"),
                                (gmp_runs["gmp_global"], "GMP, one global threshold", "^")):
        runs = sorted(runs, key=lambda r: r["sparsity"])
        ax.plot([100 * r["sparsity"] for r in runs], [100 * r["accuracy"] for r in runs],
                marker=marker, label=label)
    for target in TARGETS:
        ax.axvline(100 * target, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel("kernel sparsity of the final model (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"LeNet-5 / MNIST, {settings['epochs']} epochs, milestones "
                 f"{list(settings['milestones'])}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 12,000 / 2,000 images, 4 epochs, 2 runs per target")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--first-lambda", type=float, default=5e-3)
    parser.add_argument("--max-runs", type=int, default=6, help="RMDA runs per target, at most")
    parser.add_argument("--tolerance", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="unstructured", help="results file name")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the runs already in the results file (same settings)")
    args = parser.parse_args(argv)
    limits = (12_000, 2_000) if args.quick else (None, None)
    epochs = 4 if args.quick else args.epochs
    settings = dict(epochs=epochs, milestones=(epochs // 2, (3 * epochs) // 4),
                    seed=args.seed, limit_train=limits[0], limit_test=limits[1],
                    tolerance=args.tolerance)
    max_runs = 2 if args.quick else args.max_runs
    train_data = datasets.load("mnist", "train", 128, data_dir=args.data_dir, seed=args.seed,
                               epochs=epochs, limit=limits[0])
    test_data = datasets.load("mnist", "test", 1000, data_dir=args.data_dir, limit=limits[1])
    steps = datasets.steps_per_epoch(train_data, epochs)
    data = (train_data, test_data, steps)
    print(f"unstructured: LeNet-5 / MNIST, {steps} steps an epoch, {epochs} epochs", flush=True)

    rows = []
    if args.reuse and os.path.exists(record.path(args.name)):
        with open(record.path(args.name)) as f:
            previous = json.load(f)
        if previous["settings"] == json.loads(json.dumps(settings)):
            rows = previous["rows"]
            print(f"reusing {len(rows)} runs of {record.path(args.name)}", flush=True)

    def save(summary=None):
        record.write(args.name, rows, summary, settings)

    gmp_runs = {}
    for method, scope in GMP_VARIANTS.items():
        gmp_runs[method] = [r for r in rows if r["method"] == method]
        for target in TARGETS[len(gmp_runs[method]):]:
            schedule = pruning.GradualMagnitudePruning(
                target, begin_step=steps, end_step=settings["milestones"][0] * steps,
                frequency=max(1, steps // 4), scope=scope)
            accuracy, sparsity = train(keras.optimizers.SGD(0.03, momentum=0.9), data,
                                       settings, [schedule])
            gmp_runs[method].append(dict(method=method, target=target, accuracy=accuracy,
                                         sparsity=sparsity))
            rows.append(gmp_runs[method][-1])
            print(f"{method} target {target:.2f}: accuracy {accuracy:.4f} "
                  f"sparsity {sparsity:.4f}", flush=True)
            save()

    rmda_runs = [r for r in rows if r["method"] == "rmda_l1"]
    for target in TARGETS:
        strength = (next_lambda(rmda_runs, target, args.tolerance) if rmda_runs
                    else args.first_lambda)
        tried = sum(1 for r in rmda_runs if r["target"] == target)
        while strength is not None and tried < max_runs:
            optimizer = kr.RMDA(0.1, momentum=0.1, regularizer=kr.L1(strength))
            accuracy, sparsity = train(optimizer, data, settings)
            rmda_runs.append(dict(method="rmda_l1", target=target, **{"lambda": strength},
                                  accuracy=accuracy, sparsity=sparsity))
            rows.append(rmda_runs[-1])
            tried += 1
            print(f"rmda (for {target:.2f}) λ={strength:.5g}: accuracy {accuracy:.4f} "
                  f"sparsity {sparsity:.4f}", flush=True)
            save()
            strength = next_lambda(rmda_runs, target, args.tolerance)

    print(f"\nLeNet-5 small, MNIST {'subset' if args.quick else 'full'}, {epochs} epochs: test "
          f"accuracy at kernel sparsity within ±{100 * args.tolerance:.1f} point of the target")
    print(f"{'target':>7} {'RMDA+L1 acc':>12} {'λ':>9} {'sparsity':>9} {'GMP acc':>8} "
          f"{'global GMP acc':>15}")
    at = {}
    for target, gmp, glob in zip(TARGETS, gmp_runs["gmp"], gmp_runs["gmp_global"]):
        near = [r for r in rmda_runs if abs(r["sparsity"] - target) <= args.tolerance]
        best = max(near, key=lambda r: r["accuracy"]) if near else None
        at[target] = (best["accuracy"] if best else float("nan"), gmp["accuracy"])
        rmda_text = (f"{best['accuracy']:>12.4f} {best['lambda']:>9.3g} {best['sparsity']:>9.4f}"
                     if best else f"{'nan':>12} {'-':>9} {'not reached':>9}")
        print(f"{target:>7.2f} {rmda_text} {gmp['accuracy']:>8.4f} {glob['accuracy']:>15.4f}")
    plot(rmda_runs, gmp_runs, record.path(args.name, ".png"), settings)
    summary = (f"unstructured rmda_acc_at_95 {at[0.95][0]:.4f} gmp_acc_at_95 {at[0.95][1]:.4f} "
               f"gmp_global_acc_at_95 {gmp_runs['gmp_global'][1]['accuracy']:.4f}")
    save(summary)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
