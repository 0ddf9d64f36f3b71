"""LeNet-5 on MNIST with the group LASSO: RMDA against the baselines.

    python benchmarks/paper_mnist.py            # ~30 min on 2 CPU cores
    python benchmarks/paper_mnist.py --quick    # ~3 min smoke run

The paper's comparison in small: MSGD (no regulariser, the accuracy ceiling),
RMDA and whichever of RAMDA, ProxSGD, ProxGen, ProxSSI this installation has,
on LeNet-5 (small) with channel- / input-wise groups. Settings are the
`lenet5-mnist` presets (`keras_rmda.presets`) with a short budget:

- full: 20 epochs on all 60,000 training images, milestones 10 and 15
  (γ = 0.1), batch 128, the 10,000 test images as validation;
- `--quick`: 5 epochs on 20,000 training / 2,000 test images, milestones
  3 and 4, one λ per method (the first of its sweep).

λ per method comes from a stated sweep (`SWEEP`, two values a method in the
full run): the chosen λ is the one with the highest group sparsity among
those whose final validation accuracy is within 1 point of MSGD's (else the
most accurate). Every run is in the table; `*` marks the chosen ones. The
last line reads `paper_mnist` then `<method>_acc <fraction> <method>_gsp
<fraction>` pairs for the chosen runs.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

import keras_rmda as kr  # noqa: E402
from keras_rmda import datasets  # noqa: E402
from keras_rmda import models  # noqa: E402
from keras_rmda import presets  # noqa: E402

# λ sweep per method (the first value is the one --quick runs).
SWEEP = {
    "rmda": (5e-4, 2e-3),
    "ramda": (1e-5, 3e-5),
    "proxsgd": (5e-4, 2e-3),
    "proxgen": (1e-5, 3e-5),
    "proxssi": (1e-5, 3e-5),
}
DEFAULT_DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "shared", "data", "tensorflow_datasets")


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR if os.path.isdir(
        DEFAULT_DATA_DIR) else None, help="TFDS data dir holding mnist")
    parser.add_argument("--quick", action="store_true", help="~3 minute smoke run")
    parser.add_argument("--epochs", type=int, help="override the epoch budget")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


class _Timer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def run_one(method, strength, data, settings, seed):
    """Train one (method, λ); returns its row of the table."""
    train, val, steps = data
    preset = presets.get_preset("lenet5-mnist", method).replace(
        epochs=settings["epochs"], milestones=settings["milestones"])
    if method != "msgd":
        preset = preset.replace(strength=strength)
    keras.utils.set_random_seed(seed)
    model = models.lenet5(10, (28, 28, 1))
    model.compile(optimizer=presets.make_optimizer(preset),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    monitor, timer = kr.callbacks.StructureMonitor(), _Timer()
    schedule = kr.callbacks.StageSchedule(
        preset.milestones, momentum_rule=preset.momentum_rule,
        learning_rate=preset.learning_rate,
        momentum=None if method == "msgd" else preset.momentum)
    history = model.fit(train, epochs=preset.epochs, steps_per_epoch=steps,
                        validation_data=val, verbose=0, shuffle=False,
                        callbacks=[schedule, monitor, timer])
    report = kr.structure_report(model)  # at the prox point, as the paper reports
    # The first epoch includes tracing: leave it out of the time when possible.
    seconds = timer.seconds[1:] or timer.seconds
    return {
        "method": method, "lambda": strength if method != "msgd" else 0.0,
        "acc": history.history["val_accuracy"][-1],
        "gsp": report.total["group_sparsity"],
        "wgsp": report.total["weighted_group_sparsity"],
        "ident": monitor.identified_epoch,
        "sec": sum(seconds) / len(seconds),
    }


def choose(rows, ceiling):
    """Per method: the sparsest run within 1 point of MSGD's accuracy, else the best."""
    chosen = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        runs = [r for r in rows if r["method"] == method]
        good = [r for r in runs if r["acc"] >= ceiling - 0.01]
        chosen[method] = (max(good, key=lambda r: (r["gsp"], r["acc"])) if good
                          else max(runs, key=lambda r: r["acc"]))
    return chosen


def main(argv=None):
    args = _parse(argv)
    if args.quick:
        settings = dict(epochs=5, milestones=(3, 4), limit_train=20_000, limit_val=2_000)
    else:
        settings = dict(epochs=20, milestones=(10, 15), limit_train=None, limit_val=None)
    if args.epochs:
        settings["epochs"] = args.epochs
        settings["milestones"] = tuple(m for m in settings["milestones"] if m < args.epochs)
    methods = [m for m in presets.available_optimizers() if m in SWEEP]
    print(f"paper_mnist: LeNet-5 / MNIST, group LASSO, {settings['epochs']} epochs, "
          f"milestones {list(settings['milestones'])}, methods msgd {' '.join(methods)}",
          flush=True)
    started = time.perf_counter()
    train = datasets.load("mnist", "train", 128, data_dir=args.data_dir, seed=args.seed,
                          epochs=settings["epochs"], limit=settings["limit_train"])
    val = datasets.load("mnist", "test", 1000, data_dir=args.data_dir,
                        limit=settings["limit_val"])
    data = (train, val, datasets.steps_per_epoch(train, settings["epochs"]))

    rows = [run_one("msgd", 0.0, data, settings, args.seed)]
    _print_row(rows[-1])
    for method in methods:
        for strength in SWEEP[method][:1] if args.quick else SWEEP[method]:
            rows.append(run_one(method, strength, data, settings, args.seed))
            _print_row(rows[-1])
    chosen = choose(rows, rows[0]["acc"])

    print(f"\n{'method':8} {'lambda':>8} {'val_acc':>8} {'group_sp':>9} {'w_group_sp':>11} "
          f"{'ident_ep':>9} {'s/epoch':>8}")
    for r in rows:
        mark = "*" if chosen[r["method"]] is r else " "
        print(f"{r['method']:8} {r['lambda']:8.1e} {r['acc']:8.4f} {r['gsp']:9.4f} "
              f"{r['wgsp']:11.4f} {r['ident']:9d} {r['sec']:8.2f} {mark}")
    print(f"total {time.perf_counter() - started:.0f} s")
    pairs = " ".join(f"{m}_acc {r['acc']:.4f} {m}_gsp {r['gsp']:.4f}" for m, r in chosen.items())
    print(f"paper_mnist {pairs}")
    return 0


def _print_row(r):
    print(f"  done {r['method']} λ={r['lambda']:.1e}: val_acc {r['acc']:.4f}, "
          f"group sparsity {r['gsp']:.4f}, {r['sec']:.1f} s/epoch", flush=True)


if __name__ == "__main__":
    sys.exit(main())
