"""The CIFAR ResNets of He et al. 2015 (sec. 4.2): depth 6n+2, about 0.27M to 19.4M parameters.

A 3x3 conv with 16 filters (+ BN, ReLU) on the 32x32 image, then three stages of n basic blocks
with 16, 32 and 64 filters on 32x32, 16x16 and 8x8 maps, global average pooling and a 10-way
fully connected layer: 6n convs + the first conv + fc = 6n + 2 layers.

Where a block halves the maps and doubles the channels, the shortcut is
- option A (the paper's choice for CIFAR): subsample by 2 and pad the new channels with zeros;
  no parameters, so the state dict has no ``downsample`` keys;
- option B: a 1x1 conv + BN projection (``layer2.0.downsample.0.weight`` ...).
"""
from .. import functional as F
from .. import nn
from .blocks import BasicBlock, check_num_classes, projection
from .registry import register_model

SHORTCUTS = ("A", "B")


class PadShortcut(nn.Module):
    """Option-A shortcut: x (N, C, H, W) -> (N, out_channels, H / stride, W / stride) by taking
    every ``stride``-th pixel and adding zero channels (``F.pad_channels``). No parameters."""

    def __init__(self, out_channels, stride):
        super().__init__()
        self.out_channels, self.stride = out_channels, stride

    def forward(self, x):
        return F.pad_channels(x, self.out_channels, self.stride)

    def extra_repr(self):
        return f"out_channels={self.out_channels}, stride={self.stride}"


def check_depth(depth, step, name, offset=2):
    """Raise ValueError unless depth = step * n + offset for some n >= 1 (listing the valid depths); n."""
    if (not isinstance(depth, int) or isinstance(depth, bool) or depth < step + offset
            or (depth - offset) % step):
        examples = ", ".join(str(step * n + offset) for n in range(1, 7))
        raise ValueError(f"{name}: depth must be {step}n+{offset} with n >= 1 ({examples}, ...), got {depth!r}")
    return (depth - offset) // step


class CifarResNet(nn.Module):
    """ResNet v1 for 32x32 images: x (N, 3, 32, 32) -> logits (N, num_classes).

    ``n`` basic blocks per stage; ``shortcut`` "A" (zero padding) or "B" (projection).
    """

    conv_bn_pairs = (("conv1", "bn1"),)

    def __init__(self, n, shortcut="A", num_classes=10):
        super().__init__()
        if str(shortcut).upper() not in SHORTCUTS:
            raise ValueError(f"shortcut must be 'A' (zero padding) or 'B' (projection), got {shortcut!r}")
        check_num_classes(num_classes)
        self.shortcut = str(shortcut).upper()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.in_channels = 16
        self.layer1 = self._make_layer(16, n, stride=1)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.avgpool = nn.GlobalAvgPool2d()
        self.fc = nn.Linear(64, num_classes)

    def _make_layer(self, channels, blocks, stride):
        """One stage of ``blocks`` basic blocks; only the first may change the shape."""
        downsample = None
        if stride != 1 or self.in_channels != channels:
            if self.shortcut == "A":
                downsample = PadShortcut(channels, stride)
            else:
                downsample = projection(self.in_channels, channels, stride)
        stage = [BasicBlock(self.in_channels, channels, stride, downsample)]
        self.in_channels = channels
        for _ in range(1, blocks):
            stage.append(BasicBlock(channels, channels))
        return nn.Sequential(*stage)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x))

    def extra_repr(self):
        return f"shortcut={self.shortcut!r}"


def conv_params(in_channels, out_channels, kernel_size, bias=False, groups=1):
    """The parameters of a Conv2d, for the registry's counts (no layer is built)."""
    return out_channels * (in_channels // groups) * kernel_size ** 2 + (out_channels if bias else 0)


def cifar_resnet_params(depth, shortcut="A", num_classes=10):
    """The parameters of ``cifar_resnet(depth, shortcut, num_classes)``, counted without building it."""
    n = check_depth(depth, 6, "cifar_resnet")
    total = conv_params(3, 16, 3) + 2 * 16 + 64 * num_classes + num_classes  # stem conv + BN, fc
    in_channels = 16
    for channels in (16, 32, 64):
        block = conv_params(channels, channels, 3) + 2 * channels  # conv-BN
        total += conv_params(in_channels, channels, 3) + 2 * channels + (2 * n - 1) * block
        if in_channels != channels and str(shortcut).upper() == "B":
            total += conv_params(in_channels, channels, 1) + 2 * channels  # the projection
        in_channels = channels
    return total


@register_model("cifar_resnet", depths="6n+2", family="cifar_v1", params=cifar_resnet_params,
                template="resnet{depth}")
def cifar_resnet(depth, shortcut="A", num_classes=10):
    """The CIFAR ResNet v1 of ``depth`` = 6n+2 layers (n blocks per stage)."""
    return CifarResNet(check_depth(depth, 6, "cifar_resnet"), shortcut, num_classes)


@register_model("resnet20", family="cifar_v1", depth=20,
                params=lambda shortcut="A", num_classes=10: cifar_resnet_params(20, shortcut, num_classes))
def resnet20(shortcut="A", num_classes=10):
    """ResNet-20 (n=3): 269,722 parameters with option A, 272,474 with option B."""
    return cifar_resnet(20, shortcut, num_classes)


@register_model("resnet32", family="cifar_v1", depth=32,
                params=lambda shortcut="A", num_classes=10: cifar_resnet_params(32, shortcut, num_classes))
def resnet32(shortcut="A", num_classes=10):
    """ResNet-32 (n=5): 464,154 parameters (option A)."""
    return cifar_resnet(32, shortcut, num_classes)


@register_model("resnet44", family="cifar_v1", depth=44,
                params=lambda shortcut="A", num_classes=10: cifar_resnet_params(44, shortcut, num_classes))
def resnet44(shortcut="A", num_classes=10):
    """ResNet-44 (n=7): 658,586 parameters (option A)."""
    return cifar_resnet(44, shortcut, num_classes)


@register_model("resnet56", family="cifar_v1", depth=56,
                params=lambda shortcut="A", num_classes=10: cifar_resnet_params(56, shortcut, num_classes))
def resnet56(shortcut="A", num_classes=10):
    """ResNet-56 (n=9): 853,018 parameters (option A)."""
    return cifar_resnet(56, shortcut, num_classes)


@register_model("resnet110", family="cifar_v1", depth=110,
                params=lambda shortcut="A", num_classes=10: cifar_resnet_params(110, shortcut, num_classes))
def resnet110(shortcut="A", num_classes=10):
    """ResNet-110 (n=18): 1,727,962 parameters (option A)."""
    return cifar_resnet(110, shortcut, num_classes)


@register_model("resnet1202", family="cifar_v1", depth=1202,
                params=lambda shortcut="A", num_classes=10: cifar_resnet_params(1202, shortcut, num_classes))
def resnet1202(shortcut="A", num_classes=10):
    """ResNet-1202 (n=200): 19,421,274 parameters (option A)."""
    return cifar_resnet(1202, shortcut, num_classes)
