"""``python -m minires.predict IMAGE_OR_FOLDER... [--checkpoint CKPT | --pretrained resnet20] [--topk 3]``.

The command line of ``minires.inference`` (where ``minires.predict``, the function, lives).
"""
import sys
import types

from .inference import main, predict


class _CallableModule(types.ModuleType):
    """Importing this module binds ``minires.predict`` to it, hiding the function of that name;
    being callable as the function keeps ``minires.predict(model, images)`` working after
    ``import minires.predict`` (Python's documented way: a module's ``__class__`` may be a subclass)."""

    __call__ = staticmethod(predict)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
