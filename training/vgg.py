"""VGG-19 feature extractor for the perceptual loss, loaded from a local torchvision file.

Weights cannot be downloaded at run time, so ``--vgg-weights`` names a file in torchvision's
``vgg19`` state-dict layout (``features.N.weight``/``bias``, ``classifier.*``), e.g. the
``vgg19-dcbb9e9d.pth`` that ``torchvision.models.vgg19(weights="IMAGENET1K_V1")`` downloads.
torchvision itself is not needed: the layer list below reproduces its ``features`` indices.

    features = load_vgg19_features(Path("vgg19.pth"), layer="conv5_2")
    f = features(x)        # x: (N, 3, H, W) in [0, 1]; ImageNet normalisation happens inside
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from plugin_server.errors import VggWeightsError

# torchvision's VGG-19 ("E") configuration: conv widths, "M" for max-pooling.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DOWNLOAD_HINT = (
    "Download torchvision's VGG-19 ImageNet weights (https://download.pytorch.org/models/vgg19-dcbb9e9d.pth) "
    "on a machine with network access and pass --vgg-weights PATH, or switch the perceptual loss off "
    "with --beta 0."
)


def layer_table() -> dict[str, tuple[int, tuple[int, int]]]:
    """Layer name (conv5_2, relu5_2, ...) -> (index in ``features``, conv weight (out, in))."""
    table, index, block, conv, cin = {}, 0, 1, 1, 3
    for item in VGG19_CFG:
        if item == "M":
            index, block, conv = index + 1, block + 1, 1
            continue
        table[f"conv{block}_{conv}"] = (index, (item, cin))
        table[f"relu{block}_{conv}"] = (index + 1, (item, cin))
        index, conv, cin = index + 2, conv + 1, item
    return table


class VggFeatures(nn.Module):
    """torchvision's ``vgg19().features`` up to and including one layer, frozen."""

    def __init__(self, layer: str = "conv5_2") -> None:
        super().__init__()
        table = layer_table()
        if layer not in table:
            raise VggWeightsError(f"unknown VGG-19 layer {layer!r}; choose one of {', '.join(table)}")
        last = table[layer][0]
        modules: list[nn.Module] = []
        cin = 3
        for item in VGG19_CFG:
            if item == "M":
                modules.append(nn.MaxPool2d(2, 2))
            else:
                modules += [nn.Conv2d(cin, item, 3, padding=1), nn.ReLU(inplace=False)]
                cin = item
        self.features = nn.Sequential(*modules[: last + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)


def load_vgg19_features(path: str | os.PathLike, layer: str = "conv5_2") -> VggFeatures:
    """Build the extractor and load its weights; a VggWeightsError says what is wrong and what to do."""
    path = Path(path)
    model = VggFeatures(layer)
    if not path.is_file():
        raise VggWeightsError(f"the perceptual loss needs VGG-19 weights, but {path} does not exist. {DOWNLOAD_HINT}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file raises many types
        raise VggWeightsError(f"{path} could not be read as a weights file ({exc}). {DOWNLOAD_HINT}") from exc
    if not isinstance(state, dict):
        raise VggWeightsError(f"{path} is not a state dict in torchvision's vgg19 layout. {DOWNLOAD_HINT}")
    # Check every conv of VGG-19 (not only the ones used), so a VGG-16 or another net is refused.
    for name, (index, (cout, cin)) in layer_table().items():
        if not name.startswith("conv"):
            continue
        for key, shape in ((f"features.{index}.weight", (cout, cin, 3, 3)), (f"features.{index}.bias", (cout,))):
            value = state.get(key)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
                got = "missing" if value is None else f"shape {tuple(getattr(value, 'shape', ()))}"
                raise VggWeightsError(
                    f"{path} is not VGG-19 in torchvision's layout: {key} should have shape {shape}, "
                    f"but is {got}. {DOWNLOAD_HINT}"
                )
    wanted = {k: state[f"features.{k}"] for k in model.features.state_dict()}
    model.features.load_state_dict(wanted)
    return model
