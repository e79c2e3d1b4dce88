"""One small 3D U-Net, twice: Keras (trained) and PyTorch (weights converted), layer for layer.

Only layers that map one-to-one between the frameworks (3x3x3 'same'
convolutions, max pooling, nearest upsampling, concatenation), so conversion is
a transpose of kernels and nothing else.
"""

from __future__ import annotations

FILTERS = (8, 16, 32)
SPACING = (2.0, 2.0, 2.0)  # the grid the network is trained and run on, in mm
WINDOW = (32, 32, 32)


def keras_unet(filters=FILTERS):
    import keras
    from keras import layers

    def block(x, n, name):
        x = layers.Conv3D(n, 3, padding="same", activation="relu", name=f"{name}_a")(x)
        return layers.Conv3D(n, 3, padding="same", activation="relu", name=f"{name}_b")(x)

    inputs = keras.Input((None, None, None, 1))
    skips, x = [], inputs
    for level, n in enumerate(filters[:-1]):
        x = block(x, n, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling3D(2)(x)
    x = block(x, filters[-1], "bottom")
    for level in reversed(range(len(filters) - 1)):
        x = layers.UpSampling3D(2)(x)
        x = layers.Concatenate()([x, skips[level]])
        x = block(x, filters[level], f"up{level}")
    outputs = layers.Conv3D(1, 1, activation="sigmoid", name="head")(x)
    return keras.Model(inputs, outputs, name="unet3d")


def torch_unet(filters=FILTERS):
    import torch
    from torch import nn

    def block(c_in, n):
        return nn.Sequential(nn.Conv3d(c_in, n, 3, padding=1), nn.ReLU(), nn.Conv3d(n, n, 3, padding=1), nn.ReLU())

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.ModuleList()
            c = 1
            for n in filters[:-1]:
                self.down.append(block(c, n))
                c = n
            self.bottom = block(c, filters[-1])
            self.up = nn.ModuleList()
            c = filters[-1]
            for n in reversed(filters[:-1]):
                self.up.append(block(c + n, n))
                c = n
            self.head = nn.Conv3d(c, 1, 1)

        def forward(self, x):
            skips = []
            for block_ in self.down:
                x = block_(x)
                skips.append(x)
                x = nn.functional.max_pool3d(x, 2)
            x = self.bottom(x)
            for block_, skip in zip(self.up, reversed(skips), strict=True):
                x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
                x = block_(torch.cat([x, skip], 1))
            return torch.sigmoid(self.head(x))

    return UNet()


def keras_to_torch(keras_model, filters=FILTERS):
    """The Keras weights in the PyTorch twin: kernels (d, h, w, in, out) become (out, in, d, h, w)."""
    import numpy as np
    import torch

    net = torch_unet(filters)
    levels = len(filters) - 1
    names = [f"down{i}" for i in range(levels)] + ["bottom"] + [f"up{i}" for i in reversed(range(levels))]
    modules = list(net.down) + [net.bottom] + list(net.up)
    pairs = []
    for name, module in zip(names, modules, strict=True):
        pairs += [(f"{name}_a", module[0]), (f"{name}_b", module[2])]
    pairs.append(("head", net.head))
    with torch.no_grad():
        for name, conv in pairs:
            kernel, bias = keras_model.get_layer(name).get_weights()
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(np.transpose(kernel, (4, 3, 0, 1, 2)))))
            conv.bias.copy_(torch.from_numpy(bias))
    return net.eval()
