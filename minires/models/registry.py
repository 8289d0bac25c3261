"""Models by name: ``create("resnet20")``, ``create("resnet18", stem="imagenet")``, ``names()``, ``info(name)``.

A model registers itself where it is defined, with a decorator on the function that builds it
and the facts about it that its users need without building it:

    @register_model("resnet20", family="cifar_v1", depth=20, params=lambda shortcut="A", num_classes=10: ...)
    def resnet20(shortcut="A", num_classes=10): ...

so a new model needs no edit here; its file only has to be imported by ``models/__init__.py``.
Names are listed in the order they were registered (the import order there: CIFAR v1, CIFAR v2,
ImageNet family, WRN).

A family registered with ``depths="6n+2"`` (``cifar_resnet``) is built with ``depth=``, and with
``template="resnet{depth}"`` also by parametric names: ``resnet8``, ``resnet14``, ... (v1, 6n+2), ``resnet83v2``
(9n+2), ``wrn22_4`` (6n+4, width 4). A registered fixed name wins over a pattern: ``resnet50``
is torchvision's bottleneck ResNet-50 (the v1 CIFAR ResNet of depth 50 is
``create("cifar_resnet", depth=50)``).
"""
import inspect
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Optional


@dataclass(frozen=True)
class Stem:
    """What a stem takes and gives: one image (C, H, W), the default number of classes, and the
    kernel size of its first conv (which tells the stem of a state dict)."""
    input_size: tuple
    num_classes: int
    kernel_size: int


STEMS = {"cifar": Stem((3, 32, 32), 10, 3), "imagenet": Stem((3, 224, 224), 1000, 7)}


@dataclass(frozen=True)
class ModelInfo:
    """The facts about a registered model, read without building it (``info(name)``).

    family: "cifar_v1", "cifar_v2", "imagenet", "resnext", "wide_imagenet" or "wrn";
    depth: its number of layers (None for a family of any depth, built with depth=);
    depths: for such a family, the valid depths ("6n+2"), else None;
    stems: the stems it takes, the first its default; kwargs: the keyword arguments ``create``
    accepts; params: params(**kwargs) -> its number of parameters, counted from the
    architecture (so a size check of an absurd depth builds nothing).
    """
    name: str
    family: str
    depth: Optional[int]
    stems: tuple
    kwargs: tuple
    params: Callable = field(repr=False)
    depths: Optional[str] = None

    @property
    def default_stem(self):
        return self.stems[0]

    def input_size(self, stem=None):
        """One image (C, H, W) of the size ``stem`` (default: the model's) was designed for."""
        return STEMS[stem or self.default_stem].input_size

    def num_classes(self, stem=None):
        """The number of classes ``create`` gives the model with ``stem`` when not told."""
        return STEMS[stem or self.default_stem].num_classes

    def stem_of(self, kernel_size):
        """The stem whose first conv has ``kernel_size`` (from a state dict's conv1.weight), or None."""
        return next((s for s in self.stems if STEMS[s].kernel_size == kernel_size), None)

    def check_kwargs(self, kwargs):
        """ValueError (one line, naming the valid ones) for a keyword ``create(name)`` does not accept."""
        unknown = [k for k in kwargs if k not in self.kwargs]
        if unknown:
            raise ValueError(f"{self.name} takes no keyword argument {unknown[0]!r}; valid: "
                             f"{', '.join(self.kwargs) or 'none'}")

    def num_params(self, **kwargs):
        """The parameters of ``create(name, **kwargs)``, counted without building it (None for a
        model registered without ``params``)."""
        self.check_kwargs(kwargs)
        return None if self.params is None else self.params(**kwargs)


_MODELS = {}    # name -> (function building that model, its ModelInfo)
_FAMILIES = {}  # name -> (function taking depth=..., its ModelInfo, its parametric names' template or None)


def register_model(name, depths=None, family=None, depth=None, stems=("cifar",), params=None, template=None):
    """Decorator: make the decorated function buildable as ``create(name, **kwargs)`` and
    describe it (``ModelInfo``): its ``family``, ``depth``, ``stems`` (the default first) and a
    ``params(**kwargs)`` that counts its parameters without building it. The keyword arguments
    it accepts are those of the function.

    ``depths``: for a family of any depth, such as ``cifar_resnet``, a description of the valid
    depths ("6n+2"); it is then built with ``create(name, depth=...)`` and not listed by
    ``names()``. ``template``: the family's parametric names, such as "resnet{depth}" or
    "wrn{depth}_{k}", whose fields (integers) are keyword arguments of the family's function.
    A name may be registered once.
    """
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"register_model: the name must be a non-empty lower-case string, got {name!r}")

    def register(fn):
        if name in _MODELS or name in _FAMILIES:
            previous = (_MODELS.get(name) or _FAMILIES[name])[0]
            raise ValueError(f"register_model: the name {name!r} is already taken by "
                             f"{previous.__module__}.{previous.__qualname__}")
        info = ModelInfo(name, family, depth, tuple(stems), tuple(inspect.signature(fn).parameters), params, depths)
        if depths is None:
            _MODELS[name] = (fn, info)
        else:
            _FAMILIES[name] = (fn, info, template)
        return fn

    return register


def names():
    """The names ``create`` accepts without a ``depth``, in registration order."""
    return list(_MODELS)


def _valid_depth(depths, depth):
    """Whether ``depth`` has the form ``depths`` ("6n+2": 8, 14, 20, ...)."""
    step, offset = map(int, re.fullmatch(r"(\d+)n\+(\d+)", depths).groups())
    return depth >= step + offset and (depth - offset) % step == 0


def _match(template, name):
    """The fields of ``template`` ("wrn{depth}_{k}") in ``name`` ("wrn16_4": {"depth": 16, "k": 4}), or None."""
    regex = template.replace("{depth}", r"(?P<depth>\d+)").replace("{k}", r"(?P<k>\d+)")
    match = re.fullmatch(regex, name)
    return None if match is None else {k: int(v) for k, v in match.groupdict().items()}


def _unknown(name):
    forms = [template.replace("{depth}", f"<{info.depths}>").replace("{k}", "<k>")
             for _, info, template in _FAMILIES.values() if template is not None]
    families = " and ".join(f"{family} (depth={info.depths})" for family, (_, info, _) in _FAMILIES.items())
    return ValueError(f"unknown model {name!r}; valid names: {', '.join(names())}; "
                      f"parametric names: {', '.join(forms)}; or {families} with depth=...")


def _resolve(name):
    """(function, ModelInfo, keyword arguments the name fixes) for a registered or parametric name."""
    key = str(name).lower()
    if key in _MODELS:
        return _MODELS[key] + ({},)
    if key in _FAMILIES:
        return _FAMILIES[key][:2] + ({},)
    for fn, family, template in _FAMILIES.values():
        fixed = _match(template, key) if template is not None else None
        if fixed is not None:
            if not _valid_depth(family.depths, fixed["depth"]):
                break  # "resnet21": the form of a name, not of a depth
            info = replace(family, name=key, depth=fixed["depth"], depths=None,
                           kwargs=tuple(k for k in family.kwargs if k not in fixed),
                           params=lambda fixed=fixed, count=family.params, **kwargs: count(**fixed, **kwargs))
            return fn, info, fixed
    raise _unknown(name)


def info(name):
    """The ``ModelInfo`` of ``name``: one of ``names()``, a parametric name ("resnet8",
    "resnet11v2", "wrn16_4") or a family ("cifar_resnet"). ValueError listing the valid names."""
    return _resolve(name)[1]


def create(name, pretrained=False, **kwargs):
    """Build model ``name`` with keyword arguments passed to its function.

    ``name`` is one of ``names()``, a parametric name ("resnet8", "resnet11v2", "wrn16_4"), or a
    family such as "cifar_resnet" / "preact_resnet" with ``depth=`` (6n+2 / 9n+2). An unknown
    name, or a keyword the model does not take, raises ValueError listing the valid ones.

    ``pretrained=True`` loads the trained weights that ship with minires (``minires.weights``,
    sha256-checked) and sets ``model.preprocessing`` and ``model.classes`` from them, for
    ``minires.predict``; a model without shipped weights raises ValueError saying so.
    """
    fn, model_info, fixed = _resolve(name)
    if pretrained:
        # Imported here: minires.weights reads files, and building a model must not need it.
        from .. import weights
        manifest = weights.read_manifest(model_info.name)  # before building: a model without weights fails at once
        model = create(manifest["model"], **{**manifest.get("kwargs", {}), **kwargs})
        return weights.load_pretrained(model, model_info.name)
    model_info.check_kwargs(kwargs)
    if model_info.depths is not None and "depth" not in kwargs:
        raise ValueError(f"create({name!r}) needs depth=..., e.g. create({name!r}, depth=20)")
    return fn(**fixed, **kwargs)
