"""The ResNet family, built from ``minires.nn`` layers (so ``model.to("cupy")`` moves them).

- ``cifar``: ResNet v1 for CIFAR (He et al. 2015), depth 6n+2, shortcut option A or B:
  ``resnet20`` ... ``resnet1202``, ``cifar_resnet(depth)``.
- ``preact``: pre-activation bottleneck ResNet v2 for CIFAR (He et al. 2016), depth 9n+2:
  ``resnet56v2`` ... ``resnet1001v2``, ``preact_resnet(depth)``.
- ``resnet``: ResNet-18/34 (basic block) and 50/101/152 (bottleneck), ``stem="cifar"`` or
  ``"imagenet"``, with torchvision's state-dict names.
- ``blocks``: the residual blocks they share (``BasicBlock``, ``Bottleneck``, ``projection``).
- ``registry``: ``create(name, **kwargs)``, ``names()``, and ``@register_model(name)``, with which
  each model function registers itself where it is defined.

The import order below is the order of ``names()``.
"""
from .blocks import BasicBlock, Bottleneck
from .cifar import (CifarResNet, PadShortcut, cifar_resnet, resnet20, resnet32, resnet44, resnet56,
                    resnet110, resnet1202)
from .preact import (PreActBottleneck, PreActResNet, preact_resnet, resnet56v2, resnet110v2,
                     resnet164v2, resnet1001v2)
from .registry import create, names, register_model
from .resnet import ResNet, resnet18, resnet34, resnet50, resnet101, resnet152

__all__ = [
    "create", "names", "register_model",
    "CifarResNet", "PadShortcut", "cifar_resnet", "resnet20", "resnet32", "resnet44", "resnet56",
    "resnet110", "resnet1202",
    "PreActBottleneck", "PreActResNet", "preact_resnet", "resnet56v2", "resnet110v2", "resnet164v2",
    "resnet1001v2",
    "BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
]
