"""A tiny synthetic dataset in the Kermany layout, for tests that must run anywhere.

PNEUMONIA images carry a bright blob in the right half, NORMAL images do not, so a model can
learn the task in one epoch on a few dozen images. File names follow the three real forms.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _image(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    img = 60 + 40 * np.exp(-((x - size / 2) ** 2 + (y - size / 2) ** 2) / (2 * (size / 3) ** 2))
    img = img + rng.normal(0, 8, (size, size))
    if label == 1:
        cy, cx = rng.integers(size // 4, 3 * size // 4), rng.integers(size // 2 + 2, size - 4)
        img = img + 120 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (size / 8) ** 2))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_synthetic_dataset(
    root: Path,
    *,
    n_train: tuple[int, int] = (24, 36),
    n_val: tuple[int, int] = (4, 4),
    n_test: tuple[int, int] = (8, 8),
    size: int = 48,
    images_per_patient: int = 2,
    seed: int = 0,
) -> Path:
    """Write NORMAL/PNEUMONIA JPEGs under root/{train,val,test} and return root.

    n_* are (NORMAL, PNEUMONIA) counts. NORMAL names alternate between `IM-<p>-<n>` and
    `NORMAL2-IM-<p>-<n>`; PNEUMONIA names alternate bacteria and virus.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    patient = 100
    for split, (n_normal, n_pneu) in (("train", n_train), ("val", n_val), ("test", n_test)):
        for label, count in ((0, n_normal), (1, n_pneu)):
            folder = root / split / ("NORMAL" if label == 0 else "PNEUMONIA")
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                if i % images_per_patient == 0:
                    patient += 1
                k = i % images_per_patient + 1
                if label == 0:
                    prefix = "NORMAL2-" if patient % 2 else ""
                    name = f"{prefix}IM-{patient:04d}-{k:04d}.jpeg"
                else:
                    kind = "bacteria" if patient % 2 else "virus"
                    name = f"person{patient}_{kind}_{patient * 10 + k}.jpeg"
                Image.fromarray(_image(rng, label, size)).save(folder / name, quality=95)
    return root
