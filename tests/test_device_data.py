"""The loader makes its batches on the backend's device (issue 17, section 1): the images sit
there whole, as uint8; the epoch's plan (order, crop offsets, flips), drawn on the host, is
uploaded once per epoch; and a batch is gathered, normalised, cropped and flipped there without
reading anything back. On NumPy the batches are bit for bit those of the pipeline before it
(normalise the gathered images, then ``crop_flip`` with the plan's host arrays)."""
import numpy as np
import pytest

from minires.data import crop_flip, crop_flip_at, normalize
from minires.data.loader import ArrayLoader, shard_bounds, training_stats


def images(n=70, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(n, 3, 8, 8), dtype=np.uint8),
            rng.integers(0, 10, size=n).astype(np.uint8))


def reference_batches(loader, x, y, epoch):
    """The batches of ``loader``'s epoch as the pipeline before the device path made them: each
    batch gathered on the host, normalised, then cropped and flipped with the plan's host arrays."""
    order, offsets, flips = loader.epoch_plan(epoch)
    for k in range(len(loader)):
        start = k * loader.batch_size
        lo, hi = shard_bounds(min(loader.batch_size, x.shape[0] - start), loader.rank, loader.world_size)
        rows = slice(start + lo, start + hi)
        idx = np.asarray(order[rows])
        xb = normalize(x[idx], loader.mean, loader.std, loader.dtype)
        if loader.augment:
            xb = crop_flip(xb, offsets[rows], flips[rows], loader.pad)
        yield xb, y[idx].astype("int64")


@pytest.mark.parametrize("normalization", ["pixel_mean", "channel", "none"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batches_equal_the_host_pipeline_bit_for_bit_over_two_epochs(normalization, dtype):
    x, y = images()
    mean, std = training_stats(x, normalization)
    loader = ArrayLoader(x, y, batch_size=16, shuffle=True, augment=True, seed=5, mean=mean, std=std, dtype=dtype)
    for epoch in range(2):
        expected = list(reference_batches(loader, x, y, epoch))
        got = list(loader)
        assert len(got) == len(expected) == 5
        assert got[-1][0].shape == (6, 3, 8, 8)  # the last batch is smaller
        for (xb, yb), (xe, ye) in zip(got, expected):
            assert xb.dtype == np.dtype(dtype) and yb.dtype == np.int64
            np.testing.assert_array_equal(xb, xe)
            np.testing.assert_array_equal(yb, ye)
    assert loader.epoch == 2


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_each_rank_gets_its_share_of_the_same_batches(rank):
    x, y = images(n=41)
    mean, std = training_stats(x, "pixel_mean")
    loader = ArrayLoader(x, y, batch_size=12, shuffle=True, augment=True, seed=2, mean=mean, std=std,
                         rank=rank, world_size=3)
    loader.load_state_dict({**loader.state_dict(), "epoch": 1, "batch": 1})  # resumed mid-epoch
    expected = list(reference_batches(loader, x, y, 1))[1:]
    got = list(loader)
    assert len(got) == len(expected) == 3
    for (xb, yb), (xe, ye) in zip(got, expected):
        np.testing.assert_array_equal(xb, xe)
        np.testing.assert_array_equal(yb, ye)


def test_crop_flip_at_takes_the_plan_as_device_arrays_and_equals_crop_flip():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(9, 2, 5, 7))
    offsets = rng.integers(0, 5, size=(9, 2))
    flips = rng.random(9) < 0.5
    out = crop_flip_at(x, offsets[:, 0], offsets[:, 1], np.flatnonzero(flips), pad=2)
    np.testing.assert_array_equal(out, crop_flip(x, offsets, flips, pad=2))
    # Checked by hand for one image: padded by 2, window at (top, left), then mirrored.
    i = int(np.flatnonzero(flips)[0])
    padded = np.pad(x[i], ((0, 0), (2, 2), (2, 2)))
    top, left = offsets[i]
    np.testing.assert_array_equal(out[i], padded[:, top:top + 5, left:left + 7][:, :, ::-1])


class Watched(np.ndarray):
    """Images whose every conversion to a host number is counted (on a GPU each would wait for
    the device)."""

    conversions = []

    def item(self, *args):
        Watched.conversions.append("item")
        return super().item(*args)

    def tolist(self):
        Watched.conversions.append("tolist")
        return super().tolist()

    def __bool__(self):
        Watched.conversions.append("bool")
        return super().__bool__()

    def __int__(self):
        Watched.conversions.append("int")
        return super().__int__()

    def __float__(self):
        Watched.conversions.append("float")
        return super().__float__()


def test_making_a_batch_reads_nothing_back_from_the_images():
    x, y = images()
    mean, std = training_stats(x, "channel")
    loader = ArrayLoader(x.view(Watched), y, batch_size=16, shuffle=True, augment=True, seed=0, mean=mean, std=std)
    Watched.conversions.clear()
    assert len(list(loader)) == 5
    assert Watched.conversions == []
