"""Ctrl-C during training, turned into a request to stop where a checkpoint can be written."""
import signal
import sys
import threading


class StopRequest:
    """``with StopRequest() as stop:``: the first Ctrl-C only sets ``stop.requested``.

    A KeyboardInterrupt can strike between any two bytecodes, e.g. when the optimizer has
    updated half of the weights, and a checkpoint of that state would not continue the run it
    came from. So the training loop looks at ``stop.requested`` before every batch and after
    every epoch, where the state is whole. A second Ctrl-C raises KeyboardInterrupt at once, for
    when that wait is too long. ``announce``: print what the first Ctrl-C does (one process of
    a distributed run says it for all).
    """

    def __init__(self, announce=True):
        self.requested = False
        self.installed = False
        self.announce = announce

    def __enter__(self):
        # Only where Ctrl-C would raise KeyboardInterrupt: in the main thread (the only one that
        # may set signal handlers), and not where SIGINT is ignored (a job started in the
        # background by a script) or handled by someone else.
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            signal.signal(signal.SIGINT, self._on_ctrl_c)
            self.installed = True
        return self

    def __exit__(self, *exc_info):
        if self.installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.installed = False

    def _on_ctrl_c(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            print("\nCtrl-C: stopping after this batch (or this evaluation) to save a checkpoint; "
                  "Ctrl-C again stops at once, without saving", file=sys.stderr, flush=True)
