"""The per-batch progress bar of an epoch: tqdm, on stderr, gone when the epoch ends."""
from tqdm.auto import tqdm  # a widget in notebooks, text in a terminal


def progress_bar(total, desc, enabled=True, done=0):
    """A tqdm bar of ``total`` batches of which ``done`` are behind already (a resumed epoch);
    with ``enabled`` False it shows nothing (and costs nothing)."""
    return tqdm(total=total, initial=done, desc=desc, leave=False, dynamic_ncols=True, disable=not enabled)
