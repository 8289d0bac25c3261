"""Pre-activation ResNet v2 for CIFAR (He et al. 2016, "Identity Mappings"), depth 9n+2.

Each unit computes BN-ReLU *before* each conv, and nothing follows the addition, so the
shortcut path from input to output is a chain of pure identities:
    y = x + conv3(relu(bn3(conv2(relu(bn2(conv1(relu(bn1(x)))))))))
Units are bottlenecks: 1x1 (width w) -> 3x3 (w) -> 1x1 (out). Three stages of n units:

    stage   in/out channels   w     maps
    1       16 / 64           16    32x32
    2       64 / 128          64    16x16
    3       128 / 256         128   8x8

The network is the one of the Keras CIFAR example (``resnet_v2``), whose parameter counts the
project's reference lists (resnet56v2 1,663,338 ... resnet1001v2 30,347,658):
- the stem is conv3x3 (16) - BN - ReLU;
- every conv has a bias;
- the first unit of stage 1 skips its BN-ReLU (the stem has just applied one);
- the first unit of each stage has a 1x1 projection shortcut (conv with bias, no BN) applied to
  the unit's raw input; in stages 2 and 3 the stride 2 sits on that projection and on the
  unit's first 1x1 conv;
- after the last stage a final BN-ReLU, global average pooling and the fc layer.
(The paper's own code feeds the projection the pre-activated input and puts the stride on the
3x3 conv; the parameter count is the same.)
"""
from .. import functional as F
from .. import nn
from .blocks import check_num_classes
from .cifar import check_depth, conv_params
from .registry import register_model


class PreActBottleneck(nn.Module):
    """x (N, in_channels, H, W) -> (N, out_channels, H / stride, W / stride).

    ``preact=False`` drops the leading BN-ReLU (``bn1`` is then None). A 1x1 projection
    ``downsample`` (a Sequential of one conv) replaces the identity shortcut where the shape changes.
    """

    conv_bn_pairs = (("conv1", "bn2"), ("conv2", "bn3"))  # each conv's output goes straight into a BN

    def __init__(self, in_channels, width, out_channels, stride=1, preact=True):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels) if preact else None
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride=stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride))

    def forward(self, x):
        out = x if self.bn1 is None else self.relu(self.bn1(x))
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.add(out, shortcut)


class PreActResNet(nn.Module):
    """ResNet v2 for 32x32 images: x (N, 3, 32, 32) -> logits (N, num_classes), ``n`` units per stage."""

    conv_bn_pairs = (("conv1", "bn1"),)

    def __init__(self, n, num_classes=10):
        super().__init__()
        check_num_classes(num_classes)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(16, 16, 64, n, stride=1, preact_first=False)
        self.layer2 = self._make_layer(64, 64, 128, n, stride=2)
        self.layer3 = self._make_layer(128, 128, 256, n, stride=2)
        self.bn_final = nn.BatchNorm2d(256)
        self.avgpool = nn.GlobalAvgPool2d()
        self.fc = nn.Linear(256, num_classes)

    @staticmethod
    def _make_layer(in_channels, width, out_channels, units, stride, preact_first=True):
        stage = [PreActBottleneck(in_channels, width, out_channels, stride, preact=preact_first)]
        for _ in range(1, units):
            stage.append(PreActBottleneck(out_channels, width, out_channels))
        return nn.Sequential(*stage)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu(self.bn_final(x))
        return self.fc(self.avgpool(x))


def preact_resnet_params(depth, num_classes=10):
    """The parameters of ``preact_resnet(depth, num_classes)``, counted without building it."""
    n = check_depth(depth, 9, "preact_resnet")
    total = conv_params(3, 16, 3, bias=True) + 2 * 16 + 2 * 256 + 256 * num_classes + num_classes  # stem, bn_final, fc
    for in_channels, width, out_channels in ((16, 16, 64), (64, 64, 128), (128, 128, 256)):
        # bn2, conv2, bn3, conv3: the same in every unit of the stage
        inner = 4 * width + conv_params(width, width, 3, bias=True) + conv_params(width, out_channels, 1, bias=True)
        first = (conv_params(in_channels, width, 1, bias=True) + inner
                 + conv_params(in_channels, out_channels, 1, bias=True))  # conv1, ..., the projection
        if in_channels != 16:  # the first unit of stage 1 has no bn1
            first += 2 * in_channels
        total += first + (n - 1) * (2 * out_channels + conv_params(out_channels, width, 1, bias=True) + inner)
    return total


@register_model("preact_resnet", depths="9n+2", family="cifar_v2", params=preact_resnet_params,
                template="resnet{depth}v2")
def preact_resnet(depth, num_classes=10):
    """The pre-activation bottleneck ResNet of ``depth`` = 9n+2 layers (n units per stage)."""
    return PreActResNet(check_depth(depth, 9, "preact_resnet"), num_classes)


@register_model("resnet56v2", family="cifar_v2", depth=56,
                params=lambda num_classes=10: preact_resnet_params(56, num_classes))
def resnet56v2(num_classes=10):
    """ResNet-56 v2 (n=6): 1,663,338 parameters."""
    return preact_resnet(56, num_classes)


@register_model("resnet110v2", family="cifar_v2", depth=110,
                params=lambda num_classes=10: preact_resnet_params(110, num_classes))
def resnet110v2(num_classes=10):
    """ResNet-110 v2 (n=12): 3,302,442 parameters."""
    return preact_resnet(110, num_classes)


@register_model("resnet164v2", family="cifar_v2", depth=164,
                params=lambda num_classes=10: preact_resnet_params(164, num_classes))
def resnet164v2(num_classes=10):
    """ResNet-164 v2 (n=18): 4,941,546 parameters."""
    return preact_resnet(164, num_classes)


@register_model("resnet1001v2", family="cifar_v2", depth=1001,
                params=lambda num_classes=10: preact_resnet_params(1001, num_classes))
def resnet1001v2(num_classes=10):
    """ResNet-1001 v2 (n=111): 30,347,658 parameters."""
    return preact_resnet(1001, num_classes)
