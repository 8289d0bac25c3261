"""Models with non-trivial batch norms for the conv + batch norm folding tests
(test_fusion.py, test_fuse_transform.py)."""
import numpy as np

import minires
from minires import models, nn
from minires.models.resnet import Bottleneck, projection
from minires.models.wide import WideBasicBlock


def randomise_bn(model, seed):
    """Give every batch norm non-trivial gamma, beta and running statistics."""
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data[...] = rng.uniform(0.5, 1.5, c)
            m.bias.data[...] = rng.uniform(-0.5, 0.5, c)
            m.running_mean[...] = rng.uniform(-0.3, 0.3, c)
            m.running_var[...] = rng.uniform(0.5, 2.0, c)
    return model


class BlockNet(nn.Module):
    """One block on 8 input channels."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        return self.block(x)


BUILDERS = {
    "cifar option A": lambda: models.create("cifar_resnet", depth=8),
    "cifar option B": lambda: models.create("cifar_resnet", depth=8, shortcut="B"),
    "preact": lambda: models.create("preact_resnet", depth=11),
    # three pairs + one in the projection's Sequential
    "bottleneck": lambda: BlockNet(Bottleneck(8, 4, stride=2, downsample=projection(8, 16, 2))),
    # ResNeXt's bottleneck: the 3x3 conv has 4 groups of 4 channels
    "resnext bottleneck": lambda: BlockNet(Bottleneck(8, 4, stride=2, downsample=projection(8, 16, 2),
                                                      groups=4, base_width=16)),
    # pre-activation: only conv1 -> bn2 is a pair (bn1 comes before a conv)
    "wide block": lambda: BlockNet(WideBasicBlock(8, 16, stride=2)),
    "resnet18 imagenet stem": lambda: models.create("resnet18", stem="imagenet", num_classes=10),
}


def build(name="cifar option A", seed=1):
    """BUILDERS[name] in float64 with its batch norms randomised from ``seed``, in eval mode: the
    same model on every call."""
    minires.manual_seed(0)
    return randomise_bn(BUILDERS[name]().astype(np.float64), seed).eval()
