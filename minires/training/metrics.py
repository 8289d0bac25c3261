"""``metrics.csv``: one row per finished epoch, rewritten whole (and atomically) after each one."""
import csv
import json

from ..utils.io import atomic_write


def write_metrics(path, history):
    """The rows of ``history`` (dicts with the same keys, in order) as a CSV file at ``path``."""
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def write_config(path, config):
    """The run's configuration (a dict of JSON values) as indented JSON at ``path``."""
    with atomic_write(path, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


def epoch_row(epoch, sums, seconds, lr, test_loss, test_acc):
    """The metrics of a finished epoch: ``sums`` = (loss sum, correct, seen) over its batches."""
    loss_sum, correct, seen = sums
    return {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen,
            "test_loss": test_loss, "test_acc": test_acc, "lr": lr, "seconds": seconds,
            "images_per_s": seen / seconds if seconds > 0 else 0.0}


def format_row(row, epochs):
    """The one line printed at the end of an epoch."""
    return (f"epoch {row['epoch']:3d}/{epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%  "
            f"test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:.2f}%  lr {row['lr']:.4g}  "
            f"{row['seconds']:.1f}s ({row['images_per_s']:.0f} img/s)")
