"""The per-batch progress bar of an epoch: tqdm, on stderr, gone when the epoch ends."""
from tqdm import tqdm


def progress_bar(total, desc, enabled=True):
    """A tqdm bar of ``total`` batches; with ``enabled`` False it shows nothing (and costs nothing)."""
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=not enabled)
