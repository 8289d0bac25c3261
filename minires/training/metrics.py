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


def epoch_row(epoch, sums, seconds, lr, test_loss, test_acc, val=None):
    """The metrics of a finished epoch: ``sums`` = (loss sum, correct, seen) over its batches;
    ``val``: (loss, accuracy) on the validation images, if any."""
    loss_sum, correct, seen = sums
    row = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen}
    if val is not None:
        row.update(val_loss=val[0], val_acc=val[1])
    row.update(test_loss=test_loss, test_acc=test_acc, lr=lr, seconds=seconds,
               images_per_s=seen / seconds if seconds > 0 else 0.0)
    return row


def format_row(row, epochs):
    """The one line printed at the end of an epoch."""
    val = f"val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%  " if "val_loss" in row else ""
    return (f"epoch {row['epoch']:3d}/{epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%  "
            f"{val}test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:.2f}%  lr {row['lr']:.4g}  "
            f"{row['seconds']:.1f}s ({row['images_per_s']:.0f} img/s)")
