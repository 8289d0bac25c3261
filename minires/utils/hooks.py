"""``RemovableHandle``: what registering a hook returns (as ``torch.utils.hooks``)."""
import itertools

_ids = itertools.count()


class RemovableHandle:
    """``handle.remove()`` unregisters the hook it was returned for (a second call does nothing);
    ``with module.register_forward_hook(f): ...`` keeps the hook for the block only."""

    def __init__(self, hooks):
        self.hooks = hooks  # the dict the hook was stored in, under self.id
        self.id = next(_ids)

    def remove(self):
        self.hooks.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.remove()
