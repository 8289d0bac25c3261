"""Helpers shared across minires: convolution geometry (``conv``) and file I/O (``io``)."""
