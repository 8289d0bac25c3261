"""The residual blocks and small pieces the ResNets share (torchvision's layer names).

- ``BasicBlock``: two 3x3 conv-BN layers (ResNet-18/34 and the CIFAR ResNets);
- ``Bottleneck``: 1x1 reduce, 3x3, 1x1 expand (ResNet-50/101/152; with a grouped or wider 3x3,
  ResNeXt and Wide ResNet-50/101);
- ``projection``: the 1x1 conv + BN shortcut called ``downsample`` where a block changes shape.
"""
from .. import functional as F
from .. import nn


def conv3x3(in_channels, out_channels, stride=1, groups=1):
    """3x3 convolution with padding 1 and no bias (the BN after it has one)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_channels, out_channels, stride=1):
    """1x1 convolution without bias."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def projection(in_channels, out_channels, stride):
    """The projection shortcut: 1x1 conv + BN, as ``Sequential`` so its keys are ``downsample.0/1``."""
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    x (N, in_channels, H, W) -> (N, channels, H / stride, W / stride). ``downsample`` maps x to
    the output's shape when it changes (a projection, or the parameter-free option-A shortcut of
    the CIFAR networks); None means the identity.
    """

    expansion = 1
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, in_channels, channels, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError(f"BasicBlock supports only groups=1 and base_width=64 (as torchvision's), "
                             f"got groups={groups}, base_width={base_width}")
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.add_relu(out, identity)  # relu(out + identity) as one op


class Bottleneck(nn.Module):
    """1x1 (reduce to ``channels``) -> 3x3 (stride here) -> 1x1 (expand to 4 * ``channels``), each
    followed by BN, with ReLU after the first two and after the residual addition.

    x (N, in_channels, H, W) -> (N, 4 * channels, H / stride, W / stride). Putting the stride on
    the 3x3 conv rather than the first 1x1 (torchvision's "ResNet v1.5") means no input pixel is
    skipped by a strided 1x1 conv. The inner width is int(channels * base_width / 64) * groups
    and the 3x3 conv has ``groups`` groups, as in torchvision: ResNeXt-50 32x4d is groups=32,
    base_width=4; Wide ResNet-50-2 is base_width=128.
    """

    expansion = 4
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, in_channels, channels, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        out_channels = channels * self.expansion
        width = int(channels * base_width / 64) * groups
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.add_relu(out, identity)  # relu(out + identity) as one op


def check_num_classes(num_classes):
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
