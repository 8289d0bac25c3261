"""``curves.png``: loss and accuracy per epoch, train and test, and the learning rate (only where
matplotlib is installed)."""
from .figures import pyplot, save_png


def plot_curves(path, history):
    """Draw the loss, accuracy and learning-rate curves of ``history`` (metrics rows) into ``path``.

    Returns False, and writes nothing, when matplotlib is not installed."""
    plt = pyplot()
    if plt is None:
        return False
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
    # Markers, so that a run of one epoch shows its points instead of empty axes.
    style = dict(marker="o", markersize=3)
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train", **style)
    if "val_loss" in history[0]:
        ax1.plot(epochs, [h["val_loss"] for h in history], label="validation", **style)
        ax2.plot(epochs, [100 * h["val_acc"] for h in history], label="validation", **style)
    ax1.plot(epochs, [h["test_loss"] for h in history], label="test", **style)
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend()
    # Accuracy, as the epoch log prints it.
    ax2.plot(epochs, [100 * h["train_acc"] for h in history], label="train", **style)
    ax2.plot(epochs, [100 * h["test_acc"] for h in history], label="test", **style)
    ax2.set_xlabel("epoch"), ax2.set_ylabel("accuracy (%)"), ax2.legend()
    ax3.plot(epochs, [h["lr"] for h in history], color="tab:green", **style)
    ax3.set_xlabel("epoch"), ax3.set_ylabel("learning rate (at the epoch's end)")
    fig.tight_layout()
    save_png(fig, path)
    return True
