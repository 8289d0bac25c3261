"""PyTorch twins of minires models, built with the same torchvision-style names so that a minires
state dict loads into them. Used by the benchmarks (same architecture, same step) and by the
interop tests; torch is not a dependency of minires."""
import torch
import torch.nn as tnn
import torch.nn.functional as TF


class CifarBasicBlock(tnn.Module):
    def __init__(self, cin, cout, stride, shortcut):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(cout)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)
        self.cin, self.cout, self.stride, self.shortcut = cin, cout, stride, shortcut
        if (stride != 1 or cin != cout) and shortcut == "B":
            self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))

    def forward(self, x):
        y = TF.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.stride == 1 and self.cin == self.cout:
            s = x
        elif self.shortcut == "B":
            s = self.downsample(x)
        else:
            sub = x[:, :, ::self.stride, ::self.stride]
            before = (self.cout - self.cin) // 2
            s = TF.pad(sub, (0, 0, 0, 0, before, self.cout - self.cin - before))
        return TF.relu(y + s)


class CifarResNet(tnn.Module):
    """He et al. 2015 CIFAR ResNet, depth 6n+2."""

    def __init__(self, depth, shortcut="A", num_classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(16)
        cin = 16
        for i, (cout, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
            blocks = []
            for j in range(n):
                blocks.append(CifarBasicBlock(cin, cout, stride if j == 0 else 1, shortcut))
                cin = cout
            setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
        self.fc = tnn.Linear(64, num_classes)

    def forward(self, x):
        x = TF.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


class BasicBlock(tnn.Module):
    expansion = 1

    def __init__(self, cin, width, stride, groups=1, base_width=64):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64 (as torchvision's)")
        self.conv1 = tnn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(width)
        self.conv2 = tnn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(width)
        self.downsample = None
        if stride != 1 or cin != width:
            self.downsample = tnn.Sequential(tnn.Conv2d(cin, width, 1, stride, bias=False), tnn.BatchNorm2d(width))

    def forward(self, x):
        y = self.bn2(self.conv2(TF.relu(self.bn1(self.conv1(x)))))
        return TF.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(tnn.Module):
    """torchvision's, with its ResNeXt / Wide ResNet options: the 3x3 conv has ``groups`` groups
    of ``base_width / 64`` times ``planes`` channels each."""

    expansion = 4

    def __init__(self, cin, planes, stride, groups=1, base_width=64):
        super().__init__()
        cout = planes * 4
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = tnn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(width)
        self.conv2 = tnn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = tnn.BatchNorm2d(width)
        self.conv3 = tnn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))

    def forward(self, x):
        y = TF.relu(self.bn1(self.conv1(x)))
        y = TF.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return TF.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(tnn.Module):
    """torchvision's ResNet with a choice of stem ("imagenet": 7x7/2 + max pool; "cifar": 3x3/1)."""

    def __init__(self, block, layers, stem="cifar", num_classes=10, groups=1, width_per_group=64):
        super().__init__()
        if stem == "imagenet":
            self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
        else:
            self.conv1 = tnn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        self.maxpool = tnn.MaxPool2d(3, 2, 1) if stem == "imagenet" else tnn.Identity()
        cin = 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, width, (1 if i == 0 else 2) if j == 0 else 1, groups, width_per_group))
                cin = width * block.expansion
            setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
        self.fc = tnn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(TF.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


_IMAGENET = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
             "resnet50": (Bottleneck, [3, 4, 6, 3]), "resnet101": (Bottleneck, [3, 4, 23, 3]),
             "resnet152": (Bottleneck, [3, 8, 36, 3])}


def create(name, stem="cifar", num_classes=10, shortcut="A"):
    """The torch twin of ``minires.models.create(name)``, or None when there is none."""
    if name in _IMAGENET:
        block, layers = _IMAGENET[name]
        return ResNet(block, layers, stem, num_classes)
    if name.startswith("resnet") and name[6:].isdigit() and (int(name[6:]) - 2) % 6 == 0:
        return CifarResNet(int(name[6:]), shortcut, num_classes)
    return None


def load_minires_state(torch_model, state):
    """Copy a minires state dict (arrays by torchvision name) into a torch model."""
    tensors = {k: torch.as_tensor(v.copy() if hasattr(v, "copy") else v) for k, v in state.items()}
    torch_model.load_state_dict(tensors, strict=True)
    return torch_model
