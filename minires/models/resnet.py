"""ResNet-18/34/50/101/152 (He et al. 2015), ResNeXt (Xie et al. 2017) and Wide ResNet-50/101
(torchvision's) with torchvision's layer names (blocks in ``blocks.py``).

A network is a stem, four stages of residual blocks with 64, 128, 256, 512 base channels, a
global average pool and a fully connected layer. The first block of stages 2-4 halves the
height and width (stride 2); wherever a block changes the shape, its shortcut is a 1x1 conv +
BN projection called ``downsample`` (so the state-dict keys are ``layer2.0.downsample.0.weight``,
``layer2.0.downsample.1.running_mean`` ... exactly as in torchvision).

Two stems:
- ``"imagenet"``: 7x7 conv stride 2, BN, ReLU, 3x3 max pool stride 2 (224x224 -> 56x56);
- ``"cifar"``: 3x3 conv stride 1, BN, ReLU, no pool, so a 32x32 image keeps its resolution
  into stage 1 (the kuangliu/pytorch-cifar variant).

ResNeXt and torchvision's Wide ResNet are the bottleneck ResNet-50/101 with another inner width
int(channels * width_per_group / 64) * groups and a 3x3 conv of ``groups`` groups:
resnext50_32x4d is groups=32, width_per_group=4; wide_resnet50_2 is width_per_group=128 (twice
ResNet-50's inner width, the 1x1 expansions as wide as before). Zagoruyko & Komodakis' CIFAR
Wide ResNets (WRN-28-10 ...) are in ``wide.py``.
"""
from .. import nn
from .blocks import BasicBlock, Bottleneck, check_num_classes, conv3x3, projection
from .cifar import conv_params
from .registry import register_model


STEMS = ("cifar", "imagenet")


class ResNet(nn.Module):
    """Stem, four stages of ``block`` (``layers[i]`` blocks each), global average pool, ``fc``.

    x (N, 3, H, W) -> logits (N, num_classes). ``stem`` is "cifar" or "imagenet" (see the module
    docstring).
    """

    conv_bn_pairs = (("conv1", "bn1"),)

    def __init__(self, block, layers, num_classes=1000, stem="imagenet", groups=1, width_per_group=64):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be 4 positive block counts, got {layers!r}")
        check_num_classes(num_classes)
        self.stem, self.groups, self.width_per_group = stem, groups, width_per_group
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else None
        self.in_channels = 64
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.GlobalAvgPool2d()
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, channels, blocks, stride):
        """One stage: ``blocks`` blocks, the first with ``stride`` and, if the shape changes, a projection."""
        out_channels = channels * block.expansion
        downsample = None
        if stride != 1 or self.in_channels != out_channels:
            downsample = projection(self.in_channels, out_channels, stride)
        width = dict(groups=self.groups, base_width=self.width_per_group)
        stage = [block(self.in_channels, channels, stride, downsample, **width)]
        self.in_channels = out_channels
        for _ in range(1, blocks):
            stage.append(block(out_channels, channels, **width))
        return nn.Sequential(*stage)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x))

    def extra_repr(self):
        s = f"stem={self.stem!r}"
        if (self.groups, self.width_per_group) != (1, 64):
            s += f", groups={self.groups}, width_per_group={self.width_per_group}"
        return s


def _resnet(block, layers, num_classes, stem, groups=1, width_per_group=64):
    if num_classes is None:
        num_classes = 1000 if stem == "imagenet" else 10
    return ResNet(block, layers, num_classes, stem, groups, width_per_group)


def resnet_params(block, layers, num_classes=None, stem="cifar", groups=1, width_per_group=64):
    """The parameters of ``_resnet(block, layers, num_classes, stem, ...)``, counted without building it."""
    if num_classes is None:
        num_classes = 1000 if stem == "imagenet" else 10
    total = conv_params(3, 64, 7 if stem == "imagenet" else 3) + 2 * 64  # stem conv + BN
    in_channels = 64
    for i, (channels, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
        out_channels = channels * block.expansion
        for j in range(blocks):
            if block is BasicBlock:
                total += conv_params(in_channels, channels, 3) + conv_params(channels, channels, 3) + 4 * channels
            else:
                width = int(channels * width_per_group / 64) * groups
                total += (conv_params(in_channels, width, 1) + conv_params(width, width, 3, groups=groups)
                          + conv_params(width, out_channels, 1) + 4 * width + 2 * out_channels)
            if j == 0 and (i > 0 or in_channels != out_channels):
                total += conv_params(in_channels, out_channels, 1) + 2 * out_channels  # the projection
            in_channels = out_channels
    return total + in_channels * num_classes + num_classes  # fc


def _registered(name, family, depth, block, layers, **width):
    """``register_model`` for a network of ``_resnet``: its facts and its parameter count."""
    return register_model(name, family=family, depth=depth, stems=STEMS,
                          params=lambda num_classes=None, stem="cifar": resnet_params(block, layers, num_classes,
                                                                                      stem, **width))


@_registered("resnet18", "imagenet", 18, BasicBlock, [2, 2, 2, 2])
def resnet18(num_classes=None, stem="cifar"):
    """ResNet-18: BasicBlock, [2, 2, 2, 2]. ``num_classes`` defaults to 10 for the cifar stem and
    1000 for the imagenet stem. 11,173,962 parameters (cifar, 10 classes); 11,689,512 (imagenet, 1000)."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes, stem)


@_registered("resnet34", "imagenet", 34, BasicBlock, [3, 4, 6, 3])
def resnet34(num_classes=None, stem="cifar"):
    """ResNet-34: BasicBlock, [3, 4, 6, 3]. 21,282,122 parameters (cifar, 10 classes)."""
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes, stem)


@_registered("resnet50", "imagenet", 50, Bottleneck, [3, 4, 6, 3])
def resnet50(num_classes=None, stem="cifar"):
    """ResNet-50: Bottleneck, [3, 4, 6, 3]. 23,520,842 parameters (cifar, 10); 25,557,032 (imagenet, 1000)."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, stem)


@_registered("resnet101", "imagenet", 101, Bottleneck, [3, 4, 23, 3])
def resnet101(num_classes=None, stem="cifar"):
    """ResNet-101: Bottleneck, [3, 4, 23, 3]. 42,512,970 parameters (cifar, 10 classes)."""
    return _resnet(Bottleneck, [3, 4, 23, 3], num_classes, stem)


@_registered("resnet152", "imagenet", 152, Bottleneck, [3, 8, 36, 3])
def resnet152(num_classes=None, stem="cifar"):
    """ResNet-152: Bottleneck, [3, 8, 36, 3]. 58,156,618 parameters (cifar, 10 classes)."""
    return _resnet(Bottleneck, [3, 8, 36, 3], num_classes, stem)


@_registered("resnext50_32x4d", "resnext", 50, Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4)
def resnext50_32x4d(num_classes=None, stem="cifar"):
    """ResNeXt-50 32x4d: ResNet-50 with 32 groups of width 4 in the first stage's 3x3 conv.
    25,028,904 parameters (imagenet, 1000 classes); 22,992,714 (cifar, 10)."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, stem, groups=32, width_per_group=4)


@_registered("resnext101_32x8d", "resnext", 101, Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=8)
def resnext101_32x8d(num_classes=None, stem="cifar"):
    """ResNeXt-101 32x8d. 88,791,336 parameters (imagenet, 1000 classes); 86,755,146 (cifar, 10)."""
    return _resnet(Bottleneck, [3, 4, 23, 3], num_classes, stem, groups=32, width_per_group=8)


@_registered("resnext101_64x4d", "resnext", 101, Bottleneck, [3, 4, 23, 3], groups=64, width_per_group=4)
def resnext101_64x4d(num_classes=None, stem="cifar"):
    """ResNeXt-101 64x4d. 83,455,272 parameters (imagenet, 1000 classes); 81,419,082 (cifar, 10)."""
    return _resnet(Bottleneck, [3, 4, 23, 3], num_classes, stem, groups=64, width_per_group=4)


@_registered("wide_resnet50_2", "wide_imagenet", 50, Bottleneck, [3, 4, 6, 3], width_per_group=128)
def wide_resnet50_2(num_classes=None, stem="cifar"):
    """Wide ResNet-50-2 (torchvision's): ResNet-50 with twice the bottleneck width.
    68,883,240 parameters (imagenet, 1000 classes); 66,847,050 (cifar, 10)."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, stem, width_per_group=128)


@_registered("wide_resnet101_2", "wide_imagenet", 101, Bottleneck, [3, 4, 23, 3], width_per_group=128)
def wide_resnet101_2(num_classes=None, stem="cifar"):
    """Wide ResNet-101-2 (torchvision's). 126,886,696 parameters (imagenet, 1000 classes); 124,850,506 (cifar, 10)."""
    return _resnet(Bottleneck, [3, 4, 23, 3], num_classes, stem, width_per_group=128)
