"""minires: a from-scratch deep-learning framework on NumPy (and CuPy) that builds and trains ResNets.

Read it in this order: ``backend`` (NumPy or CuPy behind one ``xp``), ``autograd`` (Tensor,
Function, backward), ``functional`` (the ops: im2col convolution, batch norm, pooling, loss),
``nn`` (Module and layers), ``models`` (the ResNets), ``optim``, ``data`` and ``train``.
"""
from . import backend
from .autograd import Function, Tensor, is_grad_enabled, no_grad
from .backend import get_array_module, get_backend, set_backend, to_numpy
from .gradcheck import GradcheckError, gradcheck
from .nn.init import manual_seed
from . import models, profiler
from .interop import load_torch_state_dict
from .serialization import load, save
from .summary import summary
from .utils.threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = ["Tensor", "Function", "no_grad", "is_grad_enabled", "set_backend", "get_backend",
           "get_array_module", "to_numpy", "gradcheck", "GradcheckError", "manual_seed", "backend",
           "models", "profiler", "save", "load", "summary", "load_torch_state_dict", "set_num_threads",
           "get_num_threads"]
