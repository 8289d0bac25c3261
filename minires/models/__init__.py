"""The ResNet family, built from ``minires.nn`` layers (so ``model.to("cupy")`` moves them).

- ``cifar``: ResNet v1 for CIFAR (He et al. 2015), depth 6n+2, shortcut option A or B:
  ``resnet20`` ... ``resnet1202``, ``cifar_resnet(depth)``.
- ``preact``: pre-activation bottleneck ResNet v2 for CIFAR (He et al. 2016), depth 9n+2:
  ``resnet56v2`` ... ``resnet1001v2``, ``preact_resnet(depth)``.
- ``resnet``: ResNet-18/34 (basic block) and 50/101/152 (bottleneck), ResNeXt
  (``resnext50_32x4d``, ``resnext101_32x8d``, ``resnext101_64x4d``) and torchvision's Wide ResNet
  (``wide_resnet50_2``, ``wide_resnet101_2``), ``stem="cifar"`` or ``"imagenet"``, with
  torchvision's state-dict names.
- ``wide``: Zagoruyko & Komodakis' CIFAR Wide ResNets WRN-d-k, depth 6n+4: ``wrn16_8``,
  ``wrn28_10``, ``wrn40_4``, ``wide_resnet(depth, k)``.
- ``blocks``: the residual blocks they share (``BasicBlock``, ``Bottleneck``, ``projection``).
- ``registry``: ``create(name, **kwargs)``, ``names()``, ``info(name)`` (a ``ModelInfo``: family,
  depth, stems, input size, keyword arguments, parameter count without building), and
  ``@register_model(name, ...)``, with which each model function registers itself where it is
  defined. ``create`` also takes parametric names: ``resnet8`` (any 6n+2), ``resnet11v2`` (9n+2),
  ``wrn16_4`` (6n+4, width 4).

The import order below is the order of ``names()``.
"""
from .blocks import BasicBlock, Bottleneck
from .cifar import (CifarResNet, PadShortcut, cifar_resnet, resnet20, resnet32, resnet44, resnet56,
                    resnet110, resnet1202)
from .preact import (PreActBottleneck, PreActResNet, preact_resnet, resnet56v2, resnet110v2,
                     resnet164v2, resnet1001v2)
from .registry import ModelInfo, create, info, names, register_model
from .resnet import (ResNet, resnet18, resnet34, resnet50, resnet101, resnet152, resnext50_32x4d,
                     resnext101_32x8d, resnext101_64x4d, wide_resnet50_2, wide_resnet101_2)
from .wide import WideBasicBlock, WideResNet, wide_resnet, wrn16_8, wrn28_10, wrn40_4

__all__ = [
    "create", "info", "names", "register_model", "ModelInfo",
    "CifarResNet", "PadShortcut", "cifar_resnet", "resnet20", "resnet32", "resnet44", "resnet56",
    "resnet110", "resnet1202",
    "PreActBottleneck", "PreActResNet", "preact_resnet", "resnet56v2", "resnet110v2", "resnet164v2",
    "resnet1001v2",
    "BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
    "WideBasicBlock", "WideResNet", "wide_resnet", "wrn16_8", "wrn28_10", "wrn40_4",
]
