"""Shape changes between layers."""
from ..autograd import as_tensor


def flatten(x):
    """(N, ...) -> (N, prod(...)): the feature maps as one vector per image, for a linear layer."""
    x = as_tensor(x)
    return x.reshape(x.shape[0], -1)
