"""``python -m minires.predict IMAGE_OR_FOLDER... [--checkpoint CKPT | --pretrained resnet20] [--topk 3]``.

The command line of ``minires.inference`` (where ``minires.predict``, the function, lives).
"""
import sys

from .inference import main

if __name__ == "__main__":
    sys.exit(main())
