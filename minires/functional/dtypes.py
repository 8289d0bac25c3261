"""The dtypes the ops compute in.

Ops that compute (convolution, linear, batch norm, ReLU, pooling, the residual add, the loss)
take floating-point arrays: on integers they would wrap around or truncate (a uint8 convolution
of 200s with a 3x3 kernel of ones gives 8, not 1800) and complex numbers have no order for ReLU
or max. Ops that only move values (flatten, reshape, the option-A shortcut, max pooling, which
starts from the dtype's minimum) take any real dtype.
"""


def check_floating(op, *arrays, kinds="f"):
    """Raise TypeError unless every array or Tensor in ``arrays`` (None skipped) has a dtype of
    ``kinds`` (NumPy dtype kinds: "f" floating, "i"/"u" integers). A dtype test only: it reads
    no data, so it costs nothing on the GPU. Python numbers and lists have no dtype and pass (a
    Tensor makes them float32)."""
    for x in arrays:
        dtype = getattr(x, "dtype", None)
        if dtype is not None and dtype.kind not in kinds:
            raise TypeError(f"{op}: got a {dtype} array, which it cannot compute with; use float32 or "
                            f"float64: convert first, e.g. x.astype('float32') / 255 for 8-bit images")
