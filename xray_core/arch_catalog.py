"""The architectures by name, with what they are and the settings each was trained with, without
Keras: the dashboard's server reads this and never imports Keras (`architectures` builds them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchInfo:
    """A named architecture and the settings the original study (or the default's recipe) trained it with."""

    name: str
    description: str
    epochs: int
    batch_size: int
    image_size: int
    channels: int
    output_units: int
    # Smallest square input for which every pooling stage still has at least one pixel.
    min_size: int = 4


CATALOG: dict[str, ArchInfo] = {info.name: info for info in (
    ArchInfo(
        name="baseline",
        description=("The original study's baseline: one convolution layer (32 filters) and a small dense "
                     "layer. Fast to train; a reference point rather than a strong model."),
        epochs=5, batch_size=32, image_size=100, channels=1, output_units=2, min_size=2,
    ),
    ArchInfo(
        name="model2",
        description=("The original study's model 2: one wider convolution layer (128 filters), coarser "
                     "pooling and two dense layers. About twice the baseline's parameters."),
        epochs=5, batch_size=32, image_size=100, channels=1, output_units=2, min_size=4,
    ),
    ArchInfo(
        name="model3",
        description=("The original study's model 3, the one it picked: a 256-filter convolution "
                     "followed by per-pixel dense layers and dropout. Slow to start learning "
                     "(predicts one class for the first epochs)."),
        epochs=10, batch_size=64, image_size=100, channels=1, output_units=2, min_size=4,
    ),
    ArchInfo(
        name="model4",
        description=("The original study's model 4, its deepest: three convolution layers with per-pixel "
                     "dense layers and dropout between them. Fewest parameters, slowest to train."),
        epochs=15, batch_size=64, image_size=100, channels=1, output_units=2, min_size=38,
    ),
    ArchInfo(
        name="pneumonet",
        description=("The bundled default model: a compact CNN for CPUs (per-image "
                     "standardisation, a plain stem, separable convolutions with batch "
                     "normalisation, global average pooling, one pneumonia output). 1 gray "
                     "channel at 128 px; train with class weights, augmentation and early "
                     "stopping (see trained_models/default/MODEL_CARD.md)."),
        epochs=20, batch_size=32, image_size=128, channels=1, output_units=1, min_size=16,
    ),
)}
