"""What the pictures of a run (curves.png, confusion.png) share: matplotlib where it is
installed, without a display, and a PNG written atomically."""
from ..utils.io import atomic_write


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), or None when not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_png(fig, path):
    """Write ``fig`` to ``path`` as a PNG (temporary file + rename) and close it."""
    import matplotlib.pyplot as plt
    try:
        with atomic_write(path) as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)
