"""minires: a from-scratch deep-learning framework on NumPy (and CuPy) that builds and trains ResNets.

Read it in this order: ``backend`` (NumPy or CuPy behind one ``xp``), ``autograd`` (Tensor,
Function, backward), ``functional`` (the ops: im2col convolution, batch norm, pooling, loss),
``nn`` (Module and layers), ``models`` (the ResNets), ``optim``, ``data`` and ``train``;
``minires.predict(model, images)`` classifies image files with a trained model.

``import minires`` makes the subpackages reachable as attributes, as PyTorch's do
(``minires.nn.Conv2d``, ``minires.optim.SGD``, ``minires.data.load_cifar10``); it imports NumPy
only: CuPy is imported when the cupy backend is asked for, the command line (``minires.train``)
when it is run.
"""
from . import backend
from .autograd import Function, FunctionHook, Tensor, is_grad_enabled, no_grad
from .backend import get_array_module, get_backend, set_backend, to_numpy
from .gradcheck import GradcheckError, gradcheck
from .rng import manual_seed
from . import autograd, data, functional, models, nn, optim, profiler, utils
from .interop import load_torch_state_dict
from .inference import predict
from .serialization import load, save
from .model_summary import summary
from .utils.threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = ["Tensor", "Function", "FunctionHook", "no_grad", "is_grad_enabled", "set_backend", "get_backend",
           "get_array_module", "to_numpy", "gradcheck", "GradcheckError", "manual_seed", "autograd", "backend",
           "data", "functional", "models", "nn", "optim", "profiler", "utils", "save", "load", "summary",
           "load_torch_state_dict", "set_num_threads", "get_num_threads", "predict"]
