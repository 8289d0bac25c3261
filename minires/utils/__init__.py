"""Helpers shared across minires: convolution geometry (``conv``), file I/O (``io``) and the
check for nan and inf (``finite``)."""
