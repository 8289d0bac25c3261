"""Models by name: ``create("resnet20")``, ``create("resnet18", stem="imagenet")``, ``names()``.

A model registers itself where it is defined, with a decorator on the function that builds it:

    @register_model("resnet20")
    def resnet20(shortcut="A", num_classes=10): ...

so a new model needs no edit here; its file only has to be imported by ``models/__init__.py``.
Names are listed in the order they were registered (the import order there: CIFAR v1, CIFAR v2,
ImageNet family).
"""

_MODELS = {}    # name -> function building that model
_FAMILIES = {}  # name -> (function taking depth=..., description of the valid depths)


def register_model(name, depths=None):
    """Decorator: make the decorated function buildable as ``create(name, **kwargs)``.

    ``depths``: for a family of any depth, such as ``cifar_resnet``, a description of the valid
    depths ("6n+2"); it is then built with ``create(name, depth=...)`` and not listed by
    ``names()``. A name may be registered once.
    """
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"register_model: the name must be a non-empty lower-case string, got {name!r}")

    def register(fn):
        if name in _MODELS or name in _FAMILIES:
            previous = _MODELS[name] if name in _MODELS else _FAMILIES[name][0]
            raise ValueError(f"register_model: the name {name!r} is already taken by "
                             f"{previous.__module__}.{previous.__qualname__}")
        if depths is None:
            _MODELS[name] = fn
        else:
            _FAMILIES[name] = (fn, depths)
        return fn

    return register


def names():
    """The names ``create`` accepts without a ``depth``, in registration order."""
    return list(_MODELS)


def create(name, pretrained=False, **kwargs):
    """Build model ``name`` with keyword arguments passed to its function.

    ``name`` is one of ``names()``, or a family such as "cifar_resnet" / "preact_resnet" with
    ``depth=`` (6n+2 / 9n+2). An unknown name raises ValueError listing the valid ones.

    ``pretrained=True`` loads the trained weights that ship with minires (``minires.weights``,
    sha256-checked) and sets ``model.preprocessing`` and ``model.classes`` from them, for
    ``minires.predict``; a model without shipped weights raises ValueError saying so.
    """
    key = str(name).lower()
    if pretrained:
        # Imported here: minires.weights reads files, and building a model must not need it.
        from .. import weights
        manifest = weights.read_manifest(key)  # before building: a model without weights fails at once
        model = create(manifest["model"], **{**manifest.get("kwargs", {}), **kwargs})
        return weights.load_pretrained(model, key)
    if key in _MODELS:
        return _MODELS[key](**kwargs)
    if key in _FAMILIES:
        if "depth" not in kwargs:
            raise ValueError(f"create({name!r}) needs depth=..., e.g. create({name!r}, depth=20)")
        return _FAMILIES[key][0](**kwargs)
    families = " and ".join(f"{family} (depth={depths})" for family, (_, depths) in _FAMILIES.items())
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(names())}; "
                     f"or {families} with depth=...")
