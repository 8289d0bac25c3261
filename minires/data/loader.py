"""Mini-batches from in-memory arrays: shuffled, normalised and augmented on the backend's device.

Every random choice of an epoch (the order of the samples and each sample's crop and flip) is
drawn from ``numpy.random.default_rng([seed, epoch])``. The batches are therefore a pure
function of (seed, epoch, batch index), and the loader's whole state is three integers, which
is what makes an interrupted run resume with exactly the batches it would have seen. The plan is
drawn on the host (the same numbers on every backend) and uploaded once per epoch.

Data-parallel training (``rank``, ``world_size``): every rank draws the same plan and takes its
own slice of every batch (``shard_bounds``), so the ranks' shards are disjoint, cover the epoch,
and together form exactly the batches one process would see; the loader's position still
counts whole batches, so a checkpoint moves between runs with different numbers of ranks.
"""

import numpy

from ..backend import get_backend, get_module, to_backend
from .cifar import TEST_FILE, load_batch, load_cifar10, load_class_names, find_cifar10
from .transforms import (NORMALIZATIONS, channel_stats, draw_crop_flip, normalize, normalize_crop_flip,
                         pixel_mean, preprocessing_entry)

__all__ = ["ArrayLoader", "make_cifar10_loaders", "make_cifar10_test_loader", "shard_bounds", "training_stats"]


def shard_bounds(n, rank, world_size):
    """Rows [lo, hi) of a batch of n rows that rank ``rank`` of ``world_size`` takes.

    Consecutive, as equal as can be (sizes differ by at most one, the larger ones first), and
    together exactly the n rows: 128 rows on 2 ranks are 0-63 and 64-127; 80 on 3 are 0-26,
    27-53, 54-79. Fewer rows than ranks leave the last ranks none (1 row on 2 ranks: 0-0 and
    none), so rank 0, whose BatchNorm statistics every rank takes over, always has some.
    """
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class ArrayLoader:
    """Iterate ``(x_batch, y_batch)`` over images x (N, C, H, W) uint8 and labels y (N,).

    Each batch is normalised with ``normalize(x, mean, std, dtype)`` (statistics on the
    0..255 scale, see ``transforms``), then, when ``augment`` is true, padded by ``pad`` and
    randomly cropped and flipped (after normalising, so the padding is 0 = the mean image, as in
    the paper). Batches are arrays of the ``backend`` (None: ``minires.backend.get_backend()``);
    labels are int64. x and y may live on the host or already on that backend; they are moved
    to it once, whole (CIFAR-10's 50,000 training images are 150 MB as uint8), and every batch is
    gathered, normalised, cropped and flipped there. The epoch's plan (order, offsets, flips) is
    drawn on the host and uploaded once per epoch, so a seed gives the same batches on every
    backend, and making a batch copies nothing between host and device.

    One pass over the loader is one epoch; ``len(loader)`` is the number of batches. The last
    partial batch is kept unless ``drop_last``, on any number of ranks: a rank whose share of
    it is empty gets an empty batch, (0, C, H, W) images and (0,) labels, so the batches, and
    the images seen, do not depend on the number of ranks. ``state_dict()`` /
    ``load_state_dict()`` save and restore the position (seed, epoch, batch), also in the middle
    of an epoch.

    ``rank`` of ``world_size`` (data-parallel training): each batch of ``batch_size`` rows is
    split with ``shard_bounds`` and this loader yields rank ``rank``'s part of it only.
    ``batch_total`` is the number of rows of the whole batch last yielded (all ranks' parts),
    known on every rank without asking the others.

    ``classes``: the names of the labels, if known. ``preprocessing()`` and ``classes`` are what
    a checkpoint of a model trained on this loader stores, so that it is used without the data.
    """

    def __init__(self, x, y, batch_size, shuffle=False, drop_last=False, augment=False, seed=0,
                 mean=None, std=None, dtype="float32", backend=None, pad=4, rank=0, world_size=1,
                 classes=None):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"x must be images of shape (N, C, H, W), found shape {getattr(x, 'shape', None)}")
        if getattr(y, "shape", None) != (x.shape[0],):
            raise ValueError(f"y must have shape ({x.shape[0]},) to match x, found {getattr(y, 'shape', None)}")
        if not isinstance(batch_size, (int, numpy.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, found {batch_size!r}")
        if not isinstance(seed, (int, numpy.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, found {seed!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), found {rank!r}")
        if batch_size < world_size:
            raise ValueError(f"batch_size {batch_size} is smaller than the {world_size} ranks sharing it")
        if x.shape[0] == 0 or (drop_last and x.shape[0] < batch_size):
            raise ValueError(f"{x.shape[0]} samples give no batch of size {batch_size}"
                             + (" with drop_last" if drop_last else ""))
        self.backend = backend or get_backend()
        self.x, self.y = to_backend(x, self.backend), to_backend(y, self.backend)
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last, self.augment = shuffle, drop_last, augment
        self.seed, self.pad = int(seed), pad
        self.rank, self.world_size = int(rank), int(world_size)
        self.dtype = numpy.dtype(dtype)
        xp = get_module(self.backend)
        self.classes = None if classes is None else tuple(classes)
        self._preprocessing = preprocessing_entry(mean, std)  # float64, before the cast to dtype
        # Statistics go to the device once, not with every batch.
        self.mean = None if mean is None else xp.asarray(mean, dtype=self.dtype)
        self.std = None if std is None else xp.asarray(std, dtype=self.dtype)
        self.epoch = 0  # the epoch the next iteration produces
        self.batch = 0  # the batch of that epoch it starts at
        self.batch_total = None  # the rows of the last batch yielded, over all ranks

    def __len__(self):
        n = self.x.shape[0]
        return n // self.batch_size + (1 if n % self.batch_size and not self.drop_last else 0)

    def epoch_plan(self, epoch):
        """Sample order (N,) and crop offsets (N, 2) / flips (N,) (None without augment) of an epoch."""
        n = self.x.shape[0]
        rng = numpy.random.default_rng([self.seed, epoch])
        order = rng.permutation(n) if self.shuffle else numpy.arange(n)
        offsets, flips = draw_crop_flip(n, self.pad, rng) if self.augment else (None, None)
        return order, offsets, flips

    def __iter__(self):
        epoch, start = self.epoch, self.batch
        order, offsets, flips = self.epoch_plan(epoch)
        xp = get_module(self.backend)
        # The plan goes to the device once per epoch; each batch takes views of it.
        order_d = xp.asarray(order)
        if self.augment:
            top, left, flips = xp.asarray(offsets[:, 0]), xp.asarray(offsets[:, 1]), xp.asarray(flips)
        for k in range(start, len(self)):
            start = k * self.batch_size
            total = min(self.batch_size, self.x.shape[0] - start)
            lo, hi = shard_bounds(total, self.rank, self.world_size)
            rows = slice(start + lo, start + hi)
            idx = order_d[rows]
            if self.augment:
                xb = normalize_crop_flip(self.x, idx, top[rows], left[rows], flips[rows], self.mean, self.std,
                                         self.dtype, self.pad)
            else:
                xb = normalize(self.x[idx], self.mean, self.std, self.dtype)
            yb = self.y[idx].astype("int64", copy=False)
            # Advance before yielding: a state_dict taken while this batch is in use resumes
            # with the next one.
            if k + 1 == len(self):
                self.epoch, self.batch = epoch + 1, 0
            else:
                self.batch = k + 1
            self.batch_total = total
            yield xb, yb

    def preprocessing(self):
        """The normalisation of the batches, as a checkpoint stores it (``preprocessing_entry``)."""
        return dict(self._preprocessing)

    def state_dict(self):
        """The position as plain ints: ``{"seed", "epoch", "batch"}``."""
        return {"seed": self.seed, "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state):
        """Restore a position saved by ``state_dict``; the next iteration continues from it."""
        try:
            seed, epoch, batch = int(state["seed"]), int(state["epoch"]), int(state["batch"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"loader state must hold integer 'seed', 'epoch' and 'batch': {e!r}") from None
        if seed < 0 or epoch < 0 or not 0 <= batch < len(self):
            raise ValueError(f"invalid loader state seed={seed} epoch={epoch} batch={batch} "
                             f"for a loader of {len(self)} batches")
        self.seed, self.epoch, self.batch = seed, epoch, batch


def make_cifar10_loaders(data_dir=None, batch_size=128, seed=0, limit_train=None,
                         normalization="pixel_mean", backend=None, dtype="float32",
                         download=False, limit_test=None, augment=True, rank=0, world_size=1, val_split=0):
    """CIFAR-10 train and test loaders with the paper's preprocessing.

    Train: shuffled, augmented (pad 4, crop, flip), partial last batch kept. Test: in order, no
    augmentation. ``normalization`` is "pixel_mean" (the paper: subtract the per-pixel mean
    image), "channel" (per-channel mean and std) or "none" (scale to [0, 1]); statistics come
    from the training images in use (the first ``limit_train`` when given). ``limit_test`` keeps
    the first test images only. ``rank`` of ``world_size``: both loaders yield that rank's
    slice of every batch (data-parallel training; see ``ArrayLoader``).

    ``val_split``: hold this many of the (first ``limit_train``) training images out for
    validation, chosen by a permutation drawn from ``seed`` (the paper chose its schedule on
    45k/5k); the statistics then come from the rest, and ``info["val_loader"]`` evaluates them
    as the test loader does.

    Returns ``(train_loader, test_loader, info)``; info holds "data_dir", "classes",
    "normalization", "mean", "std" (NumPy float64, 0..255 scale, or None), "n_train", "n_test",
    and with a split "n_val" and "val_loader".
    """
    folder = find_cifar10(data_dir, download=download)
    x_train, y_train, x_test, y_test = load_cifar10(folder)
    if limit_train is not None:
        x_train, y_train = x_train[:limit_train], y_train[:limit_train]
    if limit_test is not None:
        x_test, y_test = x_test[:limit_test], y_test[:limit_test]
    if not 0 <= val_split < len(x_train):
        raise ValueError(f"val_split must lie in [0, {len(x_train)}) (the training images), found {val_split}")
    if val_split:
        order = numpy.random.default_rng(seed).permutation(len(x_train))
        held, kept = numpy.sort(order[:val_split]), numpy.sort(order[val_split:])
        x_val, y_val, x_train, y_train = x_train[held], y_train[held], x_train[kept], y_train[kept]
    mean, std = training_stats(x_train, normalization)

    classes = load_class_names(folder)
    common = dict(mean=mean, std=std, dtype=dtype, backend=backend, rank=rank, world_size=world_size,
                  classes=classes)
    train = ArrayLoader(x_train, y_train, batch_size, shuffle=True, augment=augment, seed=seed, **common)
    test = ArrayLoader(x_test, y_test, batch_size, **common)
    info = {"data_dir": str(folder), "classes": classes,
            "normalization": normalization, "mean": mean, "std": std,
            "n_train": int(x_train.shape[0]), "n_test": int(x_test.shape[0])}
    if val_split:
        info.update(n_val=int(x_val.shape[0]), val_loader=ArrayLoader(x_val, y_val, batch_size, **common))
    return train, test, info


def training_stats(x_train, normalization):
    """(mean, std) of ``normalization`` over the training images x_train (N, C, H, W) uint8:
    the mean image and None ("pixel_mean"), per-channel mean and std ("channel"), or None, None."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be 'pixel_mean', 'channel' or 'none', found {normalization!r}")
    if normalization == "pixel_mean":
        return pixel_mean(x_train), None
    if normalization == "channel":
        return channel_stats(x_train)
    return None, None


def make_cifar10_test_loader(preprocessing, data_dir=None, batch_size=128, backend=None, dtype="float32",
                             download=False, limit_test=None, rank=0, world_size=1):
    """The CIFAR-10 test loader of a trained model, normalised with its stored ``preprocessing``
    (a ``preprocessing_entry``, as checkpoints hold it): only the test batch is read.

    Returns ``(test_loader, info)``; info holds "data_dir", "classes" and "n_test".
    """
    folder = find_cifar10(data_dir, download=download)
    x_test, y_test = load_batch(folder / TEST_FILE)
    if limit_test is not None:
        x_test, y_test = x_test[:limit_test], y_test[:limit_test]
    classes = load_class_names(folder)
    test = ArrayLoader(x_test, y_test, batch_size, mean=preprocessing["mean"], std=preprocessing["std"],
                       dtype=dtype, backend=backend, rank=rank, world_size=world_size, classes=classes)
    return test, {"data_dir": str(folder), "classes": classes, "n_test": int(x_test.shape[0])}
