"""``python -m minires.summary --model resnet20 --graph r20.svg``: a model's layer table, and its
graph drawn. The code is ``minires.model_summary``, whose ``summary`` function is
``minires.summary``; this module is only the command's name."""
from .model_summary import main

if __name__ == "__main__":
    raise SystemExit(main())
