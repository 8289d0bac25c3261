"""Image statistics, normalisation and the paper's crop-and-flip augmentation.

All functions take NCHW batches and run on the batch's own backend (NumPy or CuPy). Statistics
are on the 0..255 pixel scale, as CIFAR-10 papers quote them.

Normalisation scale (our choice): ``normalize`` first maps pixels to [0, 1] (divides by 255),
then subtracts ``mean / 255`` and, when a std is given, divides by ``std / 255``.

- With a std this is exactly ``(x - mean) / std``: the scale cancels.
- Without one (the paper's per-pixel mean subtraction) the result is ``(x - mean) / 255``,
  roughly in [-0.5, 0.5]. The paper subtracts the mean on the 0..255 scale, which differs only
  by a constant factor of 255 that the first BatchNorm absorbs; the [0, 1] scale keeps the
  first convolution's inputs of order one.
"""
import numpy

from ..backend import ElementwiseKernel, get_array_module, to_numpy

__all__ = ["channel_stats", "pixel_mean", "normalize", "unit_scale_stats", "preprocessing_entry",
           "check_preprocessing", "crop_flip", "crop_flip_at", "normalize_crop_flip", "draw_crop_flip",
           "random_crop_flip"]

NORMALIZATIONS = ("pixel_mean", "channel", "none")


def _check_images(x, name="x"):
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"{name} must be a batch of images of shape (N, C, H, W), "
                         f"found shape {getattr(x, 'shape', None)}")


def channel_stats(x, chunk=2048):
    """Per-channel mean and standard deviation of images x (N, C, H, W) on the 0..255 scale.

    Returns two float64 arrays of shape (C,) on x's backend (population std, ddof=0). Works in
    chunks of images so a float64 copy of the whole data set is never made.
    """
    _check_images(x)
    xp = get_array_module(x)
    n = x.shape[0] * x.shape[2] * x.shape[3]
    if n == 0:
        raise ValueError("channel_stats needs at least one image")
    total = xp.zeros(x.shape[1], dtype=xp.float64)
    total_sq = xp.zeros(x.shape[1], dtype=xp.float64)
    for i in range(0, x.shape[0], chunk):
        part = x[i:i + chunk].astype(xp.float64)
        total += part.sum(axis=(0, 2, 3))
        total_sq += (part * part).sum(axis=(0, 2, 3))
    mean = total / n
    # E[x^2] - E[x]^2 is exact here: pixel sums are integers far below 2**53.
    var = xp.maximum(total_sq / n - mean * mean, 0.0)
    return mean, xp.sqrt(var)


def pixel_mean(x):
    """The mean image of x (N, C, H, W): float64 of shape (C, H, W), on the 0..255 scale."""
    _check_images(x)
    if x.shape[0] == 0:
        raise ValueError("pixel_mean needs at least one image")
    return x.mean(axis=0, dtype=get_array_module(x).float64)


def _as_stat(xp, s, c, name, dtype):
    """A mean/std given as (C,) or (C, H, W) -> an array that broadcasts against (N, C, H, W)."""
    s = xp.asarray(s, dtype=dtype)
    if s.ndim == 0:
        return s
    if s.ndim == 1 and s.shape[0] == c:
        return s.reshape(c, 1, 1)
    if s.ndim == 3 and s.shape[0] == c:
        return s
    raise ValueError(f"{name} must have shape ({c},) (per channel) or ({c}, H, W) (per pixel), "
                     f"found {s.shape}")


def unit_scale_stats(mean, std, c, dtype="float32", xp=numpy):
    """``(mean / 255, std / 255)`` in ``dtype``, shaped to broadcast against (N, C, H, W) images
    on the [0, 1] scale (None stays None): ``normalize`` is ``(x / 255 - mean') / std'`` with
    them, and so is the preprocessing an ONNX export puts in front of the network."""
    mean = None if mean is None else _as_stat(xp, mean, c, "mean", dtype) / 255.0
    std = None if std is None else _as_stat(xp, std, c, "std", dtype) / 255.0
    return mean, std


def preprocessing_entry(mean=None, std=None):
    """The input normalisation as a checkpoint stores it: ``{"normalization": kind, "mean":
    array or None, "std": array or None}``, statistics as float64 NumPy arrays on the 0..255
    scale. kind is "pixel_mean" (a (C, H, W) mean image, no std), "channel" ((C,) mean and std),
    "none" (neither: pixels scaled to [0, 1]) or "custom" (another combination)."""
    mean = None if mean is None else numpy.asarray(to_numpy(mean), dtype=numpy.float64)
    std = None if std is None else numpy.asarray(to_numpy(std), dtype=numpy.float64)
    if mean is None and std is None:
        kind = "none"
    elif std is None and mean.ndim == 3:
        kind = "pixel_mean"
    elif mean is not None and std is not None and mean.ndim == std.ndim == 1:
        kind = "channel"
    else:
        kind = "custom"
    return {"normalization": kind, "mean": mean, "std": std}


def check_preprocessing(entry, where="preprocessing"):
    """Raise ValueError naming ``where`` unless ``entry`` is what ``preprocessing_entry`` makes:
    statistics of shape (C,) or (C, H, W), finite, the std positive."""
    if not isinstance(entry, dict) or not {"normalization", "mean", "std"} <= set(entry):
        raise ValueError(f"{where} must be a dict with 'normalization', 'mean' and 'std'")
    for name in ("mean", "std"):
        s = entry[name]
        if s is None:
            continue
        if not isinstance(s, numpy.ndarray) or s.dtype.kind not in "fiu" or s.ndim not in (1, 3):
            raise ValueError(f"{where}/{name} must be an array of shape (C,) or (C, H, W), "
                             f"found {getattr(s, 'shape', type(s).__name__)}")
        if not numpy.isfinite(s).all() or (name == "std" and not (s > 0).all()):
            raise ValueError(f"{where}/{name} must hold finite numbers{', all positive' if name == 'std' else ''}")
    return entry


def normalize(x, mean=None, std=None, dtype="float32"):
    """Normalise uint8 images x (N, C, H, W) to ``dtype``: ``(x/255 - mean/255) / (std/255)``.

    ``mean`` and ``std`` are on the 0..255 scale, shaped (C,) (per channel, e.g. from
    ``channel_stats``) or (C, H, W) (per pixel, e.g. from ``pixel_mean``). ``std=None`` subtracts
    the mean only (the paper's per-pixel mean subtraction, giving ``(x - mean) / 255``);
    ``mean=None`` only scales to [0, 1]. Returns a new array on x's backend.
    """
    _check_images(x)
    mean, std = unit_scale_stats(mean, std, x.shape[1], dtype, get_array_module(x))
    out = x.astype(dtype)
    out /= 255.0
    if mean is not None:
        out -= mean
    if std is not None:
        out /= std
    return out


def crop_flip(x, offsets, flips, pad=4):
    """Crop every image out of a zero-padded copy at its own offset, mirroring the flagged ones.

    x: (N, C, H, W); offsets: (N, 2) ints (top, left) into the padded image, each in
    [0, 2*pad] (``pad, pad`` is the uncropped image); flips: (N,) bools, True mirrors the image
    left-right. Returns a new (N, C, H, W) array on x's backend; padding is 0 in x's units.
    No Python loop over images: one gather from a strided view of all crop windows.
    """
    _check_images(x)
    xp = get_array_module(x)
    n, c, h, w = x.shape
    offsets = numpy.asarray(offsets)
    flips = numpy.asarray(flips, dtype=bool)
    if offsets.shape != (n, 2) or flips.shape != (n,):
        raise ValueError(f"for {n} images offsets must have shape ({n}, 2) and flips ({n},); "
                         f"found {offsets.shape} and {flips.shape}")
    if offsets.size and (offsets.min() < 0 or offsets.max() > 2 * pad):
        raise ValueError(f"offsets must lie in [0, {2 * pad}] for pad={pad}")

    return crop_flip_at(x, xp.asarray(offsets[:, 0]), xp.asarray(offsets[:, 1]), xp.asarray(numpy.flatnonzero(flips)),
                        pad)


def crop_flip_at(x, top, left, flipped, pad=4):
    """``crop_flip`` with its plan already on x's device: ``top`` and ``left`` (N,) integer
    arrays (the offsets), ``flipped`` the (sorted) indices of the images to mirror.

    It reads nothing back from the device (the values are not checked: ``crop_flip`` does that
    on the host) and copies nothing to it, so a loader can upload an epoch's plan once and give
    each batch views of it.
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    padded = xp.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    padded[:, :, pad:pad + h, pad:pad + w] = x
    # windows[i, ch, dy, dx] is the h x w crop of image i whose top-left corner is (dy, dx).
    # It is a view (no copy): the two offset axes step through the image like the pixel axes.
    sn, sc, sh, sw = padded.strides
    windows = xp.lib.stride_tricks.as_strided(
        padded, shape=(n, c, 2 * pad + 1, 2 * pad + 1, h, w), strides=(sn, sc, sh, sw, sh, sw))
    # Advanced indices on axes 0, 2, 3 pick one window per image -> (N, C, H, W).
    out = windows[xp.arange(n), :, top, left]
    # Integer indices, not a boolean mask: CuPy would read a mask's count back from the device.
    out[flipped] = out[flipped, :, :, ::-1]
    return out


# normalize_crop_flip on CuPy: one thread per output element (b, ch, yy, xx) reads its own source
# pixel, x[idx[b], ch, sy, sx], or writes the padding's 0. The statistics are indexed with
# element strides (ms_c, ms_y, ms_x), 0 along the axes they are broadcast on: (C,) per channel,
# (C, H, W) per pixel. The arithmetic is normalize's, in T: x / 255, - mean, / std.
_NORMALIZE_CROP_FLIP = ElementwiseKernel(
    "raw X x, raw int64 idx, raw int64 top, raw int64 left, raw bool flip, raw T mean, raw T std, "
    "int32 c, int32 h, int32 w, int32 pad, int32 has_mean, int32 ms_c, int32 ms_y, int32 ms_x, "
    "int32 has_std, int32 ss_c, int32 ss_y, int32 ss_x",
    "T y",
    """
    int xx = i % w;
    int yy = (i / w) % h;
    int ch = (i / (w * h)) % c;
    long long b = i / ((long long)w * h * c);
    int col = flip[b] ? w - 1 - xx : xx;  // mirrored after the crop
    int sy = yy + (int)top[b] - pad;
    int sx = col + (int)left[b] - pad;
    if (sy < 0 || sy >= h || sx < 0 || sx >= w) {
        y = (T)0;
    } else {
        T v = (T)x[((idx[b] * c + ch) * h + sy) * w + sx] / (T)255;
        if (has_mean) v -= mean[ch * ms_c + sy * ms_y + sx * ms_x];
        if (has_std) v /= std[ch * ss_c + sy * ss_y + sx * ss_x];
        y = v;
    }
    """,
    "minires_normalize_crop_flip")


def normalize_crop_flip(x, idx, top, left, flip, mean=None, std=None, dtype="float32", pad=4):
    """The augmented batch of images ``idx`` of x (M, C, H, W): ``normalize`` them, then
    ``crop_flip`` them, image b at offsets (top[b], left[b]) and mirrored where flip[b].

    idx, top, left (N,) int64 and flip (N,) bool arrays on x's device (views of an epoch's plan
    uploaded once). Nothing is read back from the device or copied to it. NumPy: the gather,
    ``normalize`` and ``crop_flip_at``; CuPy: one kernel (``minires_normalize_crop_flip``) that
    does all three with the same arithmetic. Returns (N, C, H, W) of ``dtype``.
    """
    xp = get_array_module(x)
    if xp is numpy:
        return crop_flip_at(normalize(x[idx], mean, std, dtype), top, left, numpy.flatnonzero(flip), pad)
    _check_images(x)
    args = normalize_crop_flip_args(xp, x, idx, top, left, flip, mean, std, dtype, pad)
    _NORMALIZE_CROP_FLIP(*args)
    return args[-1]


def normalize_crop_flip_args(xp, x, idx, top, left, flip, mean, std, dtype, pad):
    """The arguments of ``minires_normalize_crop_flip`` for these images and plan, the new
    output y (N, C, H, W) last. Each statistic is passed with a flag (0 when there is none) and its
    (C, H, W) element strides, 0 along the axes it is broadcast on."""
    _, c, h, w = x.shape
    dtype = numpy.dtype(dtype)
    i32 = numpy.int32
    stats = []
    for s in unit_scale_stats(mean, std, c, dtype, xp):
        if s is None:
            stats.append((xp.zeros(1, dtype), [i32(0)] * 4))
        else:
            s = xp.ascontiguousarray(s)
            strides = [i32(st // s.itemsize) for st in xp.broadcast_to(s, (c, h, w)).strides]
            stats.append((s, [i32(1)] + strides))
    (m, m_ints), (sd, s_ints) = stats
    y = xp.empty((len(idx), c, h, w), dtype)
    return (x, idx, top, left, flip, m, sd, i32(c), i32(h), i32(w), i32(pad), *m_ints, *s_ints, y)


def draw_crop_flip(n, pad=4, rng=None):
    """Random offsets (n, 2) in [0, 2*pad] and flips (n,) with p = 0.5, as NumPy arrays.

    Drawn on the host from the ``numpy.random.Generator`` ``rng`` (a fresh unseeded one when
    None), so a seed gives the same augmentation on NumPy and CuPy.
    """
    rng = numpy.random.default_rng() if rng is None else rng
    offsets = rng.integers(0, 2 * pad + 1, size=(n, 2))
    flips = rng.random(n) < 0.5
    return offsets, flips


def random_crop_flip(x, pad=4, rng=None):
    """The paper's augmentation for a batch x (N, C, H, W): zero-pad ``pad`` pixels on each
    side, take a random H x W crop and mirror it left-right with probability 0.5, per image.

    ``rng`` is a ``numpy.random.Generator``; see ``draw_crop_flip`` and ``crop_flip``.
    """
    _check_images(x)
    offsets, flips = draw_crop_flip(x.shape[0], pad, rng)
    return crop_flip(x, offsets, flips, pad)
