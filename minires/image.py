"""Images from files for a CIFAR-10 model: any PNG or JPEG -> uint8 (N, 3, 32, 32), one definition.

``minires.predict`` reads its images with ``load_images``, and an ONNX export with
``--with-preprocessing`` takes ``to_unit(load_images(files))`` as its input, so both see the
same pixels. Each image is

1. turned upright as its EXIF orientation says (phone photos are often stored sideways);
2. converted to 8-bit RGB: grey, palette and CMYK as Pillow converts them; 16-bit (and 32-bit
   integer) grey scaled from 0..65535 to 0..255; transparency composited over white, as a page
   shows it;
3. centre-cropped to a square (the largest one: CIFAR-10's objects fill their square frames);
4. resized to 32x32 with antialiasing (Lanczos, after a box reduction for large images), so a
   large photo is averaged down rather than sampled.

Reading files needs Pillow (``pip install "minires[image]"``); uint8 (32, 32, 3) arrays do not.
"""
from pathlib import Path

import numpy

IMAGE_SIZE = 32
# What a folder given to ``image_files`` is searched for; a file named on its own may be any
# format Pillow reads.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _pillow():
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ImportError('reading image files needs Pillow: pip install "minires[image]" (or pip install Pillow)') \
            from None
    return Image, ImageOps


def open_image(path):
    """The image in the file at ``path`` (read in full); ValueError naming the file when
    Pillow cannot read it, FileNotFoundError when it is not there."""
    Image, _ = _pillow()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


def to_rgb(image):
    """``image`` (a PIL image of any mode) upright and as 8-bit RGB (steps 1 and 2 above)."""
    Image, ImageOps = _pillow()
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        x = numpy.asarray(image, dtype=numpy.float64)
        if image.mode != "F":  # integers from a 16-bit file: 65535 is white
            x = x / 257.0
        image = Image.fromarray(numpy.clip(numpy.rint(x), 0, 255).astype(numpy.uint8), "L")
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def crop_resize(image, size=IMAGE_SIZE):
    """The centre square of ``image`` resized to ``size`` x ``size`` with antialiasing (steps 3, 4)."""
    Image, _ = _pillow()
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return image.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + s, top + s),
                        reducing_gap=3.0)


def to_array(image, size=IMAGE_SIZE):
    """One image as uint8 (3, size, size): a file path, a PIL image, or a uint8 (H, W, 3) RGB array."""
    if isinstance(image, numpy.ndarray):
        if image.dtype != numpy.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"an image array must be uint8 of shape (H, W, 3) (RGB), found {image.dtype} "
                             f"of shape {image.shape}")
        if image.shape[:2] != (size, size):
            Image, _ = _pillow()
            image = crop_resize(Image.fromarray(image, "RGB"), size)
        return numpy.ascontiguousarray(numpy.asarray(image).transpose(2, 0, 1))  # (H, W, 3) -> (3, H, W)
    if isinstance(image, (str, Path)):
        image = open_image(image)
    if not hasattr(image, "convert"):
        raise TypeError(f"an image must be a file path, a PIL image or a uint8 (H, W, 3) array, "
                        f"found {type(image).__name__}")
    rgb = crop_resize(to_rgb(image), size)
    return numpy.asarray(rgb, dtype=numpy.uint8).transpose(2, 0, 1).copy()  # (H, W, 3) -> (3, H, W)


def load_images(images, size=IMAGE_SIZE):
    """Images as one uint8 batch (N, 3, size, size), RGB, what the CIFAR-10 loaders yield before
    normalising. ``images``: a list of file paths, PIL images and uint8 (H, W, 3) arrays."""
    return numpy.stack([to_array(image, size) for image in images]) if len(images) else \
        numpy.zeros((0, 3, size, size), numpy.uint8)


def to_unit(x):
    """uint8 images (N, 3, H, W) as float32 in [0, 1]: the input of an ONNX export with preprocessing."""
    return x.astype(numpy.float32) / numpy.float32(255.0)


def image_files(paths):
    """The files named in ``paths``, each folder replaced by its images (``IMAGE_SUFFIXES``,
    sorted by name, not recursing). FileNotFoundError for a path that does not exist, ValueError
    for a folder without images."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"image not found: {path}")
    return files
