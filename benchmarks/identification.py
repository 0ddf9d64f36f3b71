"""The planted-structure identification study: RMDA vs the baselines.

    python benchmarks/identification.py [--epochs 30] [--seeds 0 1 2] [--out PATH]

Trains every method with the group LASSO on `keras_rmda.experiments.planted`
problems (one per seed), λ chosen per method by the tuning rule of
`run_identification` (largest λ within 3 accuracy points of the method's
best, on seed 0), prints a table, saves a PNG of first-layer group flips and
group sparsity per epoch (seed 0, one line per method) and prints as its
last line

    identification rmda_f1 <x> proxsgd_f1 <y> rmda_last_flip_epoch <e> proxsgd_last_flip_epoch <f> epochs <n>

(medians over seeds; last flip epoch 1-based, 0 = never changed). CPU, a
few minutes.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_rmda.experiments import planted  # noqa: E402

import record  # noqa: E402


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (flips_axis, sparsity_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for method, summary in results.items():
        records = summary["runs"][0]["records"]
        epochs = [r["epoch"] for r in records]
        label = f"{method} (λ={summary['strength']:g})"
        flips_axis.plot(epochs, [r["flips"] for r in records], label=label)
        sparsity_axis.plot(epochs, [r["group_sparsity"] for r in records], label=label)
    flips_axis.set(xlabel="epoch", ylabel="first-layer group flips", title="flips per epoch (seed 0)")
    sparsity_axis.set(xlabel="epoch", ylabel="group sparsity", title="first-layer group sparsity (seed 0)")
    sparsity_axis.legend()
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(planted.METHODS))
    parser.add_argument("--out", default=record.path("identification", ".png"))
    args = parser.parse_args(argv)
    results = planted.run_identification(methods=args.methods, epochs=args.epochs,
                                         seeds=tuple(args.seeds), log=print)
    print(f"\n{'method':<9} {'λ':>7} {'val acc':>8} {'precision':>9} {'recall':>7} "
          f"{'F1':>6} {'last flip epoch':>15}   (medians over seeds {args.seeds})")
    for method, s in results.items():
        print(f"{method:<9} {s['strength']:>7g} {s['median_val_accuracy']:>8.3f} "
              f"{s['median_precision']:>9.3f} {s['median_recall']:>7.3f} {s['median_f1']:>6.3f} "
              f"{s['median_last_flip_epoch']:>15g}")
    plot(results, args.out)
    print(f"plot: {args.out}")
    get = lambda m, k: results[m][k] if m in results else float("nan")  # noqa: E731
    summary = (f"identification rmda_f1 {get('rmda', 'median_f1'):.3f} "
               f"proxsgd_f1 {get('proxsgd', 'median_f1'):.3f} "
               f"rmda_last_flip_epoch {get('rmda', 'median_last_flip_epoch'):g} "
               f"proxsgd_last_flip_epoch {get('proxsgd', 'median_last_flip_epoch'):g} "
               f"epochs {args.epochs}")
    rows = [{"method": method, **{k: v for k, v in s.items() if k != "runs"}}
            for method, s in results.items()]
    record.write("identification", rows, summary, vars(args))
    print(summary)


if __name__ == "__main__":
    main()
