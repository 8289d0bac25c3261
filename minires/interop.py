"""Weights to and from PyTorch: ``minires.load_torch_state_dict(model, "resnet18.pth")``.

minires' state-dict keys and array layouts are torchvision's (``conv1.weight`` (O, C, kh, kw),
``layer1.0.bn1.running_mean``, ``layer2.0.downsample.0.weight``, ``fc.weight`` (out, in)), so a
state dict crosses over as it is: only the array type changes. The other direction needs no
minires code at all: ``minires.save(model.state_dict(), "r18.npz")`` writes one NumPy array per
key, which PyTorch reads with ``numpy.load`` (see README, "Exporting and exchanging weights").
"""
import os

import numpy

# Wrappers that training scripts often put around a state dict, and the prefix that
# torch.nn.DataParallel adds to every key.
WRAPPER_KEYS = ("state_dict", "model")
DATA_PARALLEL_PREFIX = "module."


def _read(path):
    """A ``torch.save``d file, loaded with ``weights_only=True``: tensors and containers only,
    never arbitrary pickled objects (a file that holds one is refused)."""
    try:
        import torch
    except ImportError:
        raise ImportError("reading a torch.save file needs PyTorch (pip install torch); "
                          "a dict of NumPy arrays loads without it") from None
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such PyTorch state dict file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError ... for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load {path!r} as a PyTorch state dict with weights_only=True: {first}") from None


def _tensor_to_numpy(key, value):
    """A torch.Tensor as a NumPy array: bfloat16 becomes float32 (which holds every bfloat16
    exactly); tensors that hold no plain numbers are refused, naming the entry."""
    import torch

    if value.is_meta:
        raise TypeError(f"state dict entry {key!r} is a meta tensor: it has a shape but no values "
                        f"(made on device='meta'); save the state dict of a model with real weights")
    if value.layout != torch.strided:
        raise TypeError(f"state dict entry {key!r} is a {value.layout} tensor; convert it with .to_dense() first")
    if value.is_quantized:
        raise TypeError(f"state dict entry {key!r} is a quantized tensor ({value.dtype}); convert it with "
                        f".dequantize() first")
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
        value = value.float()
    try:
        return value.resolve_conj().resolve_neg().numpy()
    except TypeError:  # float8 and other types NumPy has no counterpart for
        raise TypeError(f"state dict entry {key!r} is a tensor of {value.dtype}, which NumPy cannot hold; "
                        f"convert it to float32 first (with its scales, if it has any)") from None


def _as_array(key, value):
    if hasattr(value, "detach"):  # a torch.Tensor
        return _tensor_to_numpy(key, value)
    if isinstance(value, (numpy.ndarray, numpy.generic, int, float)):
        return numpy.asarray(value)
    raise TypeError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor or array")


def torch_state_to_numpy(state):
    """A PyTorch state dict (or a checkpoint dict wrapping one under "state_dict" or "model") as
    {key: NumPy array}, with DataParallel's "module." prefix removed."""
    if not isinstance(state, dict):
        raise TypeError(f"expected a state dict (a dict of tensors), got {type(state).__name__}")
    for key in WRAPPER_KEYS:
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    for key in state:
        if not isinstance(key, str):
            raise TypeError(f"state dict key {key!r} ({type(key).__name__}) is not a parameter name "
                            f"(a string such as 'conv1.weight')")
    if state and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state):
        state = {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in state.items()}
    return {k: _as_array(k, v) for k, v in state.items()}


def load_torch_state_dict(model, path_or_dict, strict=True):
    """Copy a PyTorch state dict of a torchvision-layout ResNet into ``model``; returns ``model``.

    ``path_or_dict``: a file written by ``torch.save(net.state_dict(), path)`` (read with
    ``torch.load(..., weights_only=True)``), or the state dict itself (torch tensors or NumPy
    arrays). Arrays are cast to each parameter's dtype and backend; bfloat16 tensors are read as
    float32. Keys that are not strings, and meta, sparse, quantized or float8 tensors, raise
    TypeError naming the entry. With ``strict``, missing or
    unexpected keys raise ValueError/KeyError naming them, as ``Module.load_state_dict`` does.
    """
    state = _read(os.fspath(path_or_dict)) if isinstance(path_or_dict, (str, os.PathLike)) else path_or_dict
    model.load_state_dict(torch_state_to_numpy(state), strict=strict)
    return model
