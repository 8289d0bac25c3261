"""Models by name: ``create("resnet20")``, ``create("resnet18", stem="imagenet")``, ``names()``."""
from .cifar import (cifar_resnet, resnet20, resnet32, resnet44, resnet56, resnet110, resnet1202)
from .preact import preact_resnet, resnet56v2, resnet110v2, resnet164v2, resnet1001v2
from .resnet import resnet18, resnet34, resnet50, resnet101, resnet152

# The named models, in the order of the reference tables: CIFAR v1, CIFAR v2, ImageNet family.
MODELS = {
    "resnet20": resnet20, "resnet32": resnet32, "resnet44": resnet44, "resnet56": resnet56,
    "resnet110": resnet110, "resnet1202": resnet1202,
    "resnet56v2": resnet56v2, "resnet110v2": resnet110v2, "resnet164v2": resnet164v2,
    "resnet1001v2": resnet1001v2,
    "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101,
    "resnet152": resnet152,
}

# Families of any depth, built with create(name, depth=...).
BUILDERS = {"cifar_resnet": cifar_resnet, "preact_resnet": preact_resnet}


def names():
    """The names ``create`` accepts without a ``depth``, in table order."""
    return list(MODELS)


def create(name, **kwargs):
    """Build model ``name`` with keyword arguments passed to its function.

    ``name`` is one of ``names()``, or "cifar_resnet" / "preact_resnet" with ``depth=``
    (6n+2 / 9n+2). An unknown name raises ValueError listing the valid ones.
    """
    key = str(name).lower()
    if key in MODELS:
        return MODELS[key](**kwargs)
    if key in BUILDERS:
        if "depth" not in kwargs:
            raise ValueError(f"create({name!r}) needs depth=..., e.g. create({name!r}, depth=20)")
        return BUILDERS[key](**kwargs)
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(names())}; "
                     f"or cifar_resnet (depth=6n+2) and preact_resnet (depth=9n+2) with depth=...")
