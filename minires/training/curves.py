"""``curves.png``: loss and error per epoch, train and test (only where matplotlib is installed)."""
from ..utils.io import atomic_write


def plot_curves(path, history):
    """Draw the loss and error curves of ``history`` (metrics rows) into ``path``.

    Returns False, and writes nothing, when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax1.plot(epochs, [h["test_loss"] for h in history], label="test")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend()
    ax2.plot(epochs, [100 * (1 - h["train_acc"]) for h in history], label="train")
    ax2.plot(epochs, [100 * (1 - h["test_acc"]) for h in history], label="test")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("error (%)"), ax2.legend()
    fig.tight_layout()
    try:
        with atomic_write(path) as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)
    return True
