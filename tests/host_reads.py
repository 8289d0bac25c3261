"""``HostReads``: a NumPy array that reports every conversion to a host number.

On a GPU each ``.item()``, ``float()``, ``int()``, ``bool()`` or ``tolist()`` of a device array
makes the host wait for the device. NumPy cannot show the waiting, so the no-synchronisation
tests (tests/test_loop_nosync.py, tests/test_nosync_more.py) run minires on arrays of a subclass
whose ``record(what)`` notes each conversion.
"""
import numpy


class HostReads(numpy.ndarray):
    def record(self, what):
        raise NotImplementedError

    def item(self, *args):
        self.record("item")
        return super().item(*args)

    def tolist(self):
        self.record("tolist")
        return super().tolist()

    def __float__(self):
        self.record("float")
        return super().__float__()

    def __int__(self):
        self.record("int")
        return super().__int__()

    def __index__(self):
        self.record("index")
        return super().__index__()

    def __bool__(self):
        self.record("bool")
        return super().__bool__()
