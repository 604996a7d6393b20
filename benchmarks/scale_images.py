"""Generated PNG folders for the at-scale benchmark (numpy and Pillow only, so worker processes
start fast): ``python benchmarks/scale_images.py FOLDER N``."""

from __future__ import annotations

import os
import sys

import numpy as np


def _scale_image(i: int, size: int) -> np.ndarray:
    """One generated RGB image (uint8): a random 4x4 colour field, bicubically enlarged, with
    noise; image ``i`` is the same on every run. Every 100th is a dark frame, every 100th (offset
    50) a blurred one."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(i)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    a = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (size, size, 3))
    if i % 100 == 0:
        a *= 0.15
    if i % 100 == 50:
        a = np.asarray(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(3)))
    return np.clip(a, 0, 255).astype(np.uint8)


def _write_range(args: tuple[str, int, int, int]) -> int:
    from PIL import Image

    folder, start, stop, size = args
    for i in range(start, stop):
        sub = os.path.join(folder, f"d{i // 10000:02d}")
        os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, f"i{i:06d}.png")
        if os.path.exists(path):
            continue
        if i % 100 == 7 and i > 7:  # 1% exact copies of the image before
            src = i - 1
            a = _scale_image(src, size)
        elif i % 100 == 8 and i > 8:  # 1% near copies: the image two before, 3% brighter
            a = np.clip(_scale_image(i - 2, size).astype(np.float32) * 1.03, 0, 255).astype(np.uint8)
        else:
            a = _scale_image(i, size)
        Image.fromarray(a).save(path)
    return stop - start


def generate_folder(folder: str, n: int, size: int = 64, workers: int = 2) -> None:
    """``n`` generated PNG files of ``size`` pixels in ``folder``/dNN/ (10,000 a subfolder), in
    ``workers`` processes; files already there are kept (the set is the same on every run)."""
    import multiprocessing as mp

    done = sum(len(fs) for _, _, fs in os.walk(folder)) if os.path.isdir(folder) else 0
    if done >= n:
        return
    step = 2000
    jobs = [(folder, s, min(s + step, n), size) for s in range(0, n, step)]
    with mp.get_context("spawn").Pool(workers) as pool:
        for _ in pool.imap_unordered(_write_range, jobs):
            pass


if __name__ == "__main__":
    generate_folder(sys.argv[1], int(sys.argv[2]))
