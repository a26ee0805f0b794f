"""Gluon networks for the MXNet runner (imported only inside the training process)."""

from __future__ import annotations

from mxnet.gluon import nn

MODELS = ("mlp", "lenet")


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int = 10) -> nn.HybridBlock:
    """A hybridizable network sized for `input_shape` (C, H, W)."""
    if name == "mlp":
        return mlp(num_classes)
    if name == "lenet":
        return lenet(input_shape, num_classes)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def mlp(num_classes: int = 10, hidden: tuple[int, ...] = (256, 128)) -> nn.HybridSequential:
    net = nn.HybridSequential(prefix="mlp_")
    with net.name_scope():
        net.add(nn.Flatten())
        for units in hidden:
            net.add(nn.Dense(units, activation="relu"))
        net.add(nn.Dense(num_classes))
    return net


def lenet(input_shape: tuple[int, int, int], num_classes: int = 10) -> nn.HybridSequential:
    """LeNet-5 for 28x28 inputs; a same-shaped small variant (3x3 kernels) for 8x8 digits.

    Two conv/pool stages halve the image twice, so 8x8 ends at 2x2 and 28x28 at 5x5 (the
    classic LeNet geometry); anything smaller than 8x8 cannot take two poolings.
    """
    _, height, width = input_shape
    if min(height, width) < 8:
        raise ValueError(f"lenet needs inputs of at least 8x8, got {height}x{width}")
    small = min(height, width) < 20
    kernel, pad1 = (3, 1) if small else (5, 2)
    channels = (16, 32) if small else (6, 16)
    net = nn.HybridSequential(prefix="lenet_")
    with net.name_scope():
        net.add(nn.Conv2D(channels[0], kernel_size=kernel, padding=pad1, activation="relu"))
        net.add(nn.MaxPool2D(pool_size=2, strides=2))
        net.add(nn.Conv2D(channels[1], kernel_size=kernel, padding=1 if small else 0, activation="relu"))
        net.add(nn.MaxPool2D(pool_size=2, strides=2))
        net.add(nn.Flatten())
        net.add(nn.Dense(120, activation="relu"))
        net.add(nn.Dense(84, activation="relu"))
        net.add(nn.Dense(num_classes))
    return net
