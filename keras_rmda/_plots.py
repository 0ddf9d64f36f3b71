"""The curves `keras-rmda train` draws into its run directory."""

import os

# metrics key -> legend label; each says which model the figure describes.
_CURVES = {
    "accuracy": (
        ("accuracy", "train (iterates W, running mean)"),
        ("iterate_val_accuracy", "validation, iterate W"),
        ("val_accuracy", "validation, saved model W̃"),
    ),
    "sparsity": (
        ("group_sparsity", "group sparsity (W̃)"),
        ("weighted_group_sparsity", "weighted group sparsity (W̃)"),
    ),
}


def plot_curves(rows, out, title=None):
    """accuracy.png and sparsity.png vs epoch (skipped without matplotlib).

    `rows`: metrics rows (dicts with "epoch"); `title`: e.g. the optimizer,
    λ and milestones of the run.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib).")
        return
    epochs = [r["epoch"] for r in rows]
    for name, curves in _CURVES.items():
        figure, axis = plt.subplots(figsize=(6, 4))
        for key, label in curves:
            if any(key in r for r in rows):
                axis.plot(epochs, [r.get(key, float("nan")) for r in rows], marker=".",
                          label=label)
        axis.set_xlabel("epoch")
        axis.set_ylabel(name)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small")
        if title:
            axis.set_title(title, fontsize="medium")
        figure.tight_layout()
        figure.savefig(os.path.join(out, f"{name}.png"), dpi=100)
        plt.close(figure)
