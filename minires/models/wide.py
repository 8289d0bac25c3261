"""Wide Residual Networks for CIFAR (Zagoruyko & Komodakis 2016): WRN-d-k, depth d = 6n+4, width k.

A 3x3 conv with 16 filters, then three stages of n pre-activation basic blocks with 16k, 32k
and 64k filters on 32x32, 16x16 and 8x8 maps, a final BN-ReLU, global average pooling and the
fc layer: 6n convs in the blocks + the first conv + 3 projections = 6n + 4 layers. A block is
    o = relu(bn1(x)),  y = conv2(dropout(relu(bn2(conv1(o))))) + shortcut,
the shortcut x itself, or a 1x1 conv of the pre-activated o where the shape changes (the first
block of each stage; stride 2 on stages 2 and 3, on conv1 and the projection). Convs have no
bias. ``dropout`` (the paper's 0.3 on CIFAR; default 0) drops activations between the two convs
in training.

    model      params (10 classes)
    wrn16_8    10,961,370
    wrn28_10   36,479,194
    wrn40_4     8,949,210

(torchvision's ``wide_resnet50_2`` is another network: a bottleneck ResNet-50 with wider 3x3
convs, in ``resnet.py``.)
"""
from .. import functional as F
from .. import nn
from .blocks import check_num_classes, conv1x1, conv3x3
from .cifar import check_depth, conv_params
from .registry import register_model

class WideBasicBlock(nn.Module):
    """x (N, in_channels, H, W) -> (N, out_channels, H / stride, W / stride), pre-activation.

    ``downsample`` (a Sequential of one 1x1 conv, keys ``downsample.0.weight``) projects the
    pre-activated input where the shape changes; None means the identity on x.
    """

    conv_bn_pairs = (("conv1", "bn2"),)  # conv1's output goes straight into bn2

    def __init__(self, in_channels, out_channels, stride=1, dropout=0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(conv1x1(in_channels, out_channels, stride))

    def forward(self, x):
        o = self.relu(self.bn1(x))
        out = self.relu(self.bn2(self.conv1(o)))
        if self.dropout is not None:
            out = self.dropout(out)  # nn.Dropout is the identity in eval mode
        out = self.conv2(out)
        shortcut = x if self.downsample is None else self.downsample(o)
        return F.add(out, shortcut)


class WideResNet(nn.Module):
    """WRN-d-k for 32x32 images: x (N, 3, 32, 32) -> logits (N, num_classes), ``n`` blocks per stage."""

    def __init__(self, n, k, num_classes=10, dropout=0.0):
        super().__init__()
        check_num_classes(num_classes)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"wide_resnet: the width k must be a positive int, got {k!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"wide_resnet: dropout must be in [0, 1), got {dropout!r}")
        self.k = k
        widths = (16 * k, 32 * k, 64 * k)
        self.conv1 = conv3x3(3, 16)
        self.layer1 = self._make_layer(16, widths[0], n, 1, dropout)
        self.layer2 = self._make_layer(widths[0], widths[1], n, 2, dropout)
        self.layer3 = self._make_layer(widths[1], widths[2], n, 2, dropout)
        self.bn_final = nn.BatchNorm2d(widths[2])
        self.relu = nn.ReLU()
        self.avgpool = nn.GlobalAvgPool2d()
        self.fc = nn.Linear(widths[2], num_classes)

    @staticmethod
    def _make_layer(in_channels, out_channels, blocks, stride, dropout):
        stage = [WideBasicBlock(in_channels, out_channels, stride, dropout)]
        for _ in range(1, blocks):
            stage.append(WideBasicBlock(out_channels, out_channels, 1, dropout))
        return nn.Sequential(*stage)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.relu(self.bn_final(x))
        return self.fc(self.avgpool(x))

    def extra_repr(self):
        return f"k={self.k}"


def wide_resnet_params(depth, k=1, num_classes=10, dropout=0.0):
    """The parameters of ``wide_resnet(depth, k, num_classes)``, counted without building it."""
    n = check_depth(depth, 6, "wide_resnet", offset=4)
    total = conv_params(3, 16, 3) + 2 * 64 * k + 64 * k * num_classes + num_classes  # stem, bn_final, fc
    in_channels = 16
    for channels in (16 * k, 32 * k, 64 * k):
        block = 2 * channels + conv_params(channels, channels, 3) + 2 * channels + conv_params(channels, channels, 3)
        total += (2 * in_channels + conv_params(in_channels, channels, 3) + 2 * channels
                  + conv_params(channels, channels, 3) + (n - 1) * block)
        if in_channels != channels:
            total += conv_params(in_channels, channels, 1)  # the projection
        in_channels = channels
    return total


@register_model("wide_resnet", depths="6n+4", family="wrn", params=wide_resnet_params, template="wrn{depth}_{k}")
def wide_resnet(depth, k=1, num_classes=10, dropout=0.0):
    """WRN-``depth``-``k``: depth = 6n+4 (n blocks per stage), widths 16k, 32k, 64k."""
    return WideResNet(check_depth(depth, 6, "wide_resnet", offset=4), k, num_classes, dropout)


@register_model("wrn16_8", family="wrn", depth=16,
                params=lambda num_classes=10, dropout=0.0: wide_resnet_params(16, 8, num_classes))
def wrn16_8(num_classes=10, dropout=0.0):
    """WRN-16-8 (n=2): 10,961,370 parameters."""
    return wide_resnet(16, 8, num_classes, dropout)


@register_model("wrn28_10", family="wrn", depth=28,
                params=lambda num_classes=10, dropout=0.0: wide_resnet_params(28, 10, num_classes))
def wrn28_10(num_classes=10, dropout=0.0):
    """WRN-28-10 (n=4): 36,479,194 parameters."""
    return wide_resnet(28, 10, num_classes, dropout)


@register_model("wrn40_4", family="wrn", depth=40,
                params=lambda num_classes=10, dropout=0.0: wide_resnet_params(40, 4, num_classes))
def wrn40_4(num_classes=10, dropout=0.0):
    """WRN-40-4 (n=6): 8,949,210 parameters."""
    return wide_resnet(40, 4, num_classes, dropout)
