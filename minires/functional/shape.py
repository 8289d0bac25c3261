"""Shape changes between layers."""
import numpy

from ..autograd import as_tensor


def flatten(x, start_dim=1, end_dim=-1):
    """The dimensions start_dim..end_dim of ``x`` merged into one, as ``torch.flatten``:
    (N, C, H, W) -> (N, C*H*W) with the defaults (a vector per image, for a linear layer),
    -> (N, C, H*W) with start_dim=2, -> (N*C*H*W,) with start_dim=0."""
    x = as_tensor(x)
    ndim = max(x.ndim, 1)  # a 0-d tensor flattens to shape (1,), as in PyTorch
    start, end = start_dim, end_dim
    if not -ndim <= start < ndim or not -ndim <= end < ndim:
        raise ValueError(f"flatten: start_dim {start_dim} and end_dim {end_dim} must lie in [{-ndim}, {ndim - 1}] "
                         f"for a tensor of shape {tuple(x.shape)}")
    start, end = start % ndim, end % ndim
    if start > end:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} "
                         f"for a tensor of shape {tuple(x.shape)}")
    shape = tuple(x.shape) or (1,)
    # -1 rather than the product keeps an exported batch dimension dynamic; an empty tensor
    # needs the product (-1 is ambiguous there)
    merged = -1 if x.size else int(numpy.prod(shape[start:end + 1]))
    return x.reshape(shape[:start] + (merged,) + shape[end + 1:])
