"""Per-class accuracy and ``confusion.png`` from a confusion matrix (what ``--eval-only`` reports).

The matrix is (K, K) counts, rows the true class and columns the predicted one, as
``evaluate(..., confusion=...)`` fills it.
"""
import numpy

from .figures import pyplot, save_png


def class_table(confusion, classes):
    """Lines of a table: each class's name, accuracy (its diagonal count / its row sum) and
    number of images, then the class it is most often mistaken for."""
    confusion = numpy.asarray(confusion)
    width = max(len("class"), *(len(c) for c in classes))
    lines = [f"{'class':{width}s}  accuracy  images  most often taken for"]
    for k, name in enumerate(classes):
        row = confusion[k]
        total = int(row.sum())
        accuracy = f"{100 * row[k] / total:7.2f}%" if total else "       -"
        wrong = row.copy()
        wrong[k] = 0
        mistaken = f"{classes[int(wrong.argmax())]} ({int(wrong.max())})" if wrong.any() else "-"
        lines.append(f"{name:{width}s}  {accuracy}  {total:6d}  {mistaken}")
    return lines


def plot_confusion(path, confusion, classes):
    """Draw ``confusion`` as a picture into ``path``: each row as fractions of its class's
    images (colour) with the counts written in the cells.

    Returns False, and writes nothing, when matplotlib is not installed."""
    plt = pyplot()
    if plt is None:
        return False
    confusion = numpy.asarray(confusion)
    k = len(classes)
    rows = numpy.maximum(confusion.sum(axis=1, keepdims=True), 1)  # (K, 1): a class without images stays 0
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * k, 0.8 + 0.6 * k))
    image = ax.imshow(confusion / rows, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if confusion[i, j] > 0.5 * rows[i, 0] else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    save_png(fig, path)
    return True
