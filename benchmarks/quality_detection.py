"""Labelled detection benchmark: the quality job against cleanvision, issue kind by issue kind.

Builds three labelled sets of PNG files from scikit-image's bundled photos (never
``lfw_subset``) and generated images, a TUNE, a VALIDATION and a TEST split from *different*
source photos and seeds (VALIDATION's gray photos tinted into colour). Each set holds, like the
sets in issue #14, 128x128 photo crops: 16 images of each injected issue kind (each at several
strengths), 8 exact and 8 near-duplicate pairs and 120 clean images, 24 of them hard negatives
(dark-but-fine night scenes with lights, smooth skies, objects on a genuinely black background,
sharp textures). The thresholds in
``restore_core.config.DEFAULT_FLAGS`` were chosen looking at TUNE only, checked on VALIDATION
(do they carry over to other photos?); TEST is the score, looked at last.

Both tools read the same files: the project's quality job through its CLI
(``python -m jobs quality``, input.format=images, a local Ray) and cleanvision's
``Imagelab.find_issues()`` with its defaults (``pip install -e '.[bench]'``). Prints precision,
recall and F1 per kind for both, the share of clean images flagged (any flag but a true
near_duplicates one), wall times and the
machine, and with ``--write-docs`` puts the table into docs/nightly.md.

Usage::

    PYTHONPATH=. python benchmarks/quality_detection.py                   # TUNE, VALIDATION, TEST
    PYTHONPATH=. python benchmarks/quality_detection.py --split test --write-docs
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from scipy import ndimage

from benchmarks.doc_blocks import replace_block
from imrestore_data import synth

ROOT = Path(__file__).resolve().parents[1]
SIZE = 128
#: Scored kinds, named as cleanvision names them (dead_pixels is the project's own).
KINDS = (
    "blurry",
    "dark",
    "light",
    "low_information",
    "grayscale",
    "odd_aspect_ratio",
    "odd_size",
    "dead_pixels",
    "exact_duplicates",
    "near_duplicates",
)
#: Disjoint colour sources per split (gray photos would be grayscale, not clean; retina is left out:
#: a fundus photo is soft by nature, and its black disc makes every crop look alike).
SPLITS = {
    "tune": {"photos": ("astronaut", "coffee", "motorcycle_left", "immunohistochemistry"),
             "texture": ("grass", "brick"),
             "black": "hubble_deep_field", "seed": 1000},
    "test": {"photos": ("chelsea", "rocket", "motorcycle_right"), "texture": ("gravel", "coins"),
             "black": "hubble_deep_field", "seed": 2000},
    # A third set from yet other photos (gray ones tinted into colour) for checking that a change
    # made looking at TUNE carries over, before TEST is looked at.
    "validation": {"photos": ("camera", "clock", "retina"), "texture": ("text", "page"),
                   "black": "hubble_deep_field", "seed": 3000},
}  # fmt: skip
PER_KIND = 16
PAIRS = 8
CLEAN = 120
HARD = 24  # of the clean ones


def luma(img: np.ndarray) -> np.ndarray:
    return img if img.ndim == 2 else img[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)


def is_plainly_clean(img: np.ndarray) -> bool:
    """A crop labelled clean must be: not near-flat, not already dark or washed out, in colour."""
    g = luma(img)
    p05, p99 = np.quantile(g, [0.05, 0.99])
    chroma = (img.max(axis=2) - img.min(axis=2)) > 3 / 255
    return bool(g.std() > 0.05 and p99 > 0.4 and p05 < 0.6 and chroma.mean() > 0.2)


def colour(photo: np.ndarray, k: int) -> np.ndarray:
    """A gray photo tinted into colour (warm, cool or green split-toning by ``k``); colour photos as they are."""
    if photo.ndim == 3:
        return photo
    gammas = ((0.8, 1.0, 1.3), (1.25, 1.05, 0.8), (1.1, 0.85, 1.2))[k % 3]
    return np.stack([photo**g for g in gammas], axis=2).astype(np.float32)


class Source:
    """Random colour crops of a split's photos, at random scales, rejecting issue-like crops and,
    while there is room, crops overlapping an earlier one by more than a quarter (two views of the
    same spot are near duplicates the labels do not know about). Three or four photos hold only a
    few dozen such crops, so most of a 280-image set still overlaps something: like any set cut
    from a few photos, it holds unlabelled near duplicates, which count against near_duplicates
    precision for both tools."""

    def __init__(self, names: tuple[str, ...], rng: np.random.Generator, first: int = 0) -> None:
        self.photos = [colour(synth.load_photo(n), k) for k, n in enumerate(names)]
        self.first = first  # number of the first photo in the regions (keeps sources apart)
        self.rng = rng
        self.taken: list[tuple[int, float, float, float, float]] = []  # photo, y0, x0, y1, x1 (photo pixels)
        self.reused = 0  # crops that had to overlap an earlier one (the photos ran out of room)
        self.last: tuple[int, float, float, float, float] | None = None  # the latest crop's photo and box

    def _overlaps(self, k: int, box: tuple[float, float, float, float]) -> bool:
        y0, x0, y1, x1 = box
        for j, a0, b0, a1, b1 in self.taken:
            if j != k:
                continue
            inter = max(0.0, min(y1, a1) - max(y0, a0)) * max(0.0, min(x1, b1) - max(x0, b0))
            if inter > 0.25 * min((y1 - y0) * (x1 - x0), (a1 - a0) * (b1 - b0)):
                return True
        return False

    def crop(self, h: int = SIZE, w: int = SIZE, clean: bool = True) -> np.ndarray:
        from skimage.transform import rescale

        for attempt in range(400):
            k = int(self.rng.integers(len(self.photos)))
            p = self.photos[k]
            s = float(self.rng.uniform(0.35, 1.0))
            s = max(s, (max(h, w) + 1) / min(p.shape[:2]))
            y = float(self.rng.uniform(0, p.shape[0] - h / s))
            x = float(self.rng.uniform(0, p.shape[1] - w / s))
            box = (y, x, y + h / s, x + w / s)
            if attempt < 40 and self._overlaps(k, box):  # the photos soon run out of room: then reuse
                continue
            q = rescale(p, s, anti_aliasing=s < 1, channel_axis=-1).astype(np.float32) if abs(s - 1) > 1e-3 else p
            yi, xi = min(round(y * s), q.shape[0] - h), min(round(x * s), q.shape[1] - w)
            c = np.clip(q[yi : yi + h, xi : xi + w], 0, 1)
            if not clean or is_plainly_clean(c):
                self.taken.append((k, *box))
                self.last = (self.first + k, *box)
                self.reused += attempt >= 40
                return c
        raise RuntimeError("no clean crop found")


# ----------------------------------------------------------------------------- injections


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(img, (sigma, sigma, 0))


def shrink_enlarge(img: np.ndarray, factor: float) -> np.ndarray:
    pil = Image.fromarray(to_u8(img))
    small = pil.resize((round(img.shape[1] / factor), round(img.shape[0] / factor)), Image.Resampling.BILINEAR)
    return np.asarray(small.resize((img.shape[1], img.shape[0]), Image.Resampling.BILINEAR), np.float32) / 255


def to_u8(img: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)


def inject(kind: str, k: int, src: Source, rng: np.random.Generator) -> np.ndarray:
    """The ``k``-th image of ``kind``: strengths cycle with ``k``."""
    if kind == "blurry":
        img = src.crop()
        if k % 4 == 3:
            return shrink_enlarge(img, (2.5, 3.0, 4.0)[k % 3])
        return gaussian_blur(img, (1.5, 2.0, 3.0, 4.0)[k % 4])
    if kind == "dark":
        # under-exposure: sRGB values scaled down (1.5 to 3.5 stops of linear light)
        return src.crop() * (0.08, 0.12, 0.16, 0.2, 0.24, 0.28)[k % 6]
    if kind == "light":
        img = src.crop()
        if k % 2:  # lifted blacks, as a strong gamma or a wrong tone curve does
            return np.clip(img, 0.05, 1) ** (1 / (6.0 + 1.0 * (k % 3)))
        return 1 - (1 - img) * (0.1, 0.15, 0.2, 0.3)[(k // 2) % 4]  # washed out
    if kind == "low_information":
        img = src.crop()
        mode = k % 4
        if mode == 0:  # a plain colour, sensor noise only
            c = rng.uniform(0.1, 0.9, 3).astype(np.float32)
            return c + rng.normal(0, 0.004, (SIZE, SIZE, 3)).astype(np.float32)
        if mode == 1:  # contrast squeezed to a sliver
            return img.mean() + (img - img.mean()) * (0.02, 0.04)[(k // 4) % 2]
        if mode == 2:  # a blank coloured frame with a faint vignette
            c = rng.uniform(0.2, 0.8, 3)
            yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE - 0.5
            return (c - 0.06 * (yy**2 + xx**2)[..., None]).astype(np.float32)
        smooth = gaussian_blur(img, 12.0)  # a defocused frame with its contrast gone
        return smooth.mean() + 0.1 * (smooth - smooth.mean())
    if kind == "grayscale":
        g = luma(src.crop())
        return g if k % 2 else np.repeat(g[..., None], 3, axis=2)  # stored as L, or as RGB
    if kind == "odd_aspect_ratio":
        shapes = ((SIZE, 48), (48, SIZE), (SIZE, 64), (64, SIZE), (SIZE, 40), (40, SIZE), (96, 192), (192, 96))
        h, w = shapes[k % len(shapes)]
        return src.crop(h, w)
    if kind == "odd_size":
        side = (32, 48, 64, 256, 320, 384)[k % 6]
        return src.crop(side, side)
    if kind == "dead_pixels":
        img = src.crop()
        rate = (0.002, 0.005, 0.01, 0.03, 0.1)[k % 5]
        dead = rng.random(img.shape[:2]) < rate
        out = img.copy()
        out[dead] = 0
        return out
    raise ValueError(kind)


def near_copy(img: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """A near duplicate: brighter, noisier, recompressed as JPEG, resized down and up, or trimmed
    by 1-2 pixels a side and resized back."""
    mode = k % 5
    if mode == 0:
        return img * 1.08 + 0.02
    if mode == 1:
        return img + rng.normal(0, 0.01, img.shape).astype(np.float32)
    if mode == 2:
        buf = io.BytesIO()
        Image.fromarray(to_u8(img)).save(buf, format="JPEG", quality=75)
        return np.asarray(Image.open(buf).convert("RGB"), np.float32) / 255
    if mode == 3:
        return shrink_enlarge(img, 1.25)
    m = int(rng.integers(1, 3))
    cut = Image.fromarray(to_u8(img[m : img.shape[0] - m, m : img.shape[1] - m]))
    return np.asarray(cut.resize((img.shape[1], img.shape[0]), Image.Resampling.BILINEAR), np.float32) / 255


# ----------------------------------------------------------------------------- hard negatives


def night_scene(src: Source, rng: np.random.Generator) -> np.ndarray:
    """A dark scene that is fine: dim, with a few bright lights (lamps, windows)."""
    img = src.crop(clean=False) * rng.uniform(0.12, 0.22)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for _ in range(int(rng.integers(4, 8))):  # lamps and windows: bright discs and rectangles
        cy, cx, r = rng.integers(8, SIZE - 8), rng.integers(8, SIZE - 8), rng.uniform(4, 8)
        lit = (
            ((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2)
            if rng.random() < 0.5
            else ((np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r * 0.7))
        )
        img = np.where(lit[..., None], rng.uniform(0.75, 1.0, 3), img)
    return img


def smooth_sky(rng: np.random.Generator) -> np.ndarray:
    """A clear or hazy sky: a smooth colour gradient, faint soft clouds, sensor noise."""
    top = np.array([rng.uniform(0.15, 0.35), rng.uniform(0.35, 0.55), rng.uniform(0.65, 0.9)])
    bottom = np.clip(top + rng.uniform(0.1, 0.25), 0, 1)
    t = np.linspace(0, 1, SIZE)[:, None, None]
    sky = top * (1 - t) + bottom * t + np.zeros((1, SIZE, 1))
    clouds = ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), 10)
    sky = sky + 0.6 * clouds[..., None] * rng.uniform(0.5, 1.0)
    return (sky + rng.normal(0, 0.004, sky.shape)).astype(np.float32)


def black_background(src: Source, rng: np.random.Generator) -> np.ndarray:
    """An object on a truly black (0) background: a photo seen through a soft-edged blob."""
    img = src.crop(clean=False)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    cy, cx, ry, rx = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.2, 0.35), rng.uniform(0.2, 0.35)
    blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return np.where(blob[..., None], np.clip(img, 8 / 255, 1), 0.0).astype(np.float32)


def sharp_texture(src: Source, rng: np.random.Generator) -> np.ndarray:
    """A sharp, busy texture (grass, brick...) in a colour tint. Two crops of much the same part
    of a texture photo are near duplicates whatever their tints (the region is kept for that)."""
    tex = luma(src.crop(clean=False))
    tint = rng.uniform(0.4, 1.0, 3).astype(np.float32)
    return tex[..., None] * tint


# ----------------------------------------------------------------------------- the set


def same_region(a: tuple[int, float, float, float, float], b: tuple[int, float, float, float, float]) -> bool:
    """Two crops showing much the same part of the same photo, at whatever size: their boxes'
    intersection over union is above 0.6."""
    if a[0] != b[0]:
        return False
    inter = max(0.0, min(a[3], b[3]) - max(a[1], b[1])) * max(0.0, min(a[4], b[4]) - max(a[2], b[2]))
    union = (a[3] - a[1]) * (a[4] - a[2]) + (b[3] - b[1]) * (b[4] - b[2]) - inter
    return inter > 0.6 * union


def build(split: str, folder: Path) -> tuple[dict[str, str], set[str]]:
    """Write the split's PNGs under ``folder``.

    Returns {file name: label} (label "clean" or a kind) and the files that may be near
    duplicates by accident: views of much the same part of a photo (the photos hold only a few
    dozen disjoint crops). Whether those are near duplicates is a matter of taste (a shift of 5%),
    so near_duplicates is not scored on them, for either tool.
    """
    spec = SPLITS[split]
    rng = np.random.default_rng(int(spec["seed"]))  # type: ignore[call-overload]
    src = Source(spec["photos"], rng)  # type: ignore[arg-type]
    black_src = Source((str(spec["black"]),), rng, first=100)
    texture_src = Source(spec["texture"], rng, first=200)  # type: ignore[arg-type]
    folder.mkdir(parents=True, exist_ok=True)
    items: list[tuple[str, np.ndarray, tuple[int, float, float, float, float] | None]] = []

    def add(label: str, make: Callable[[], np.ndarray], region: Source | None = src) -> np.ndarray:
        if region is not None:
            region.last = None
        img = make()
        items.append((label, img, region.last if region is not None else None))
        return img

    for kind in KINDS[:8]:
        for k in range(PER_KIND):
            add(kind, lambda: inject(kind, k, src, rng))  # noqa: B023 (called at once)
    for k in range(PAIRS):
        a = add("exact_duplicates", src.crop)
        items.append(("exact_duplicates", a.copy(), None))
        b = add("near_duplicates", src.crop)
        items.append(("near_duplicates", near_copy(b, k, rng), None))
    makers: list[Callable[[], np.ndarray]] = [
        lambda: night_scene(black_src if rng.random() < 0.3 else src, rng),
        lambda: smooth_sky(rng),
        lambda: black_background(src, rng),
        lambda: sharp_texture(texture_src, rng),
    ]
    for k in range(HARD):  # altered beyond a near duplicate of their source crop, textures aside
        add("clean", makers[k % len(makers)], region=texture_src if k % len(makers) == 3 else None)
    for _ in range(CLEAN - HARD):
        add("clean", src.crop)
    order = rng.permutation(len(items))
    labels, regions = {}, {}
    for n, j in enumerate(order):
        label, img, region = items[int(j)]
        name = f"img{n:04d}.png"
        Image.fromarray(to_u8(img)).save(folder / name)
        labels[name] = label
        if region is not None:
            regions[name] = region
    names = sorted(regions)
    accidental = {
        x
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        if labels[a] != "exact_duplicates" or labels[b] != "exact_duplicates"
        if same_region(regions[a], regions[b])
        for x in (a, b)
    }
    (folder.parent / "labels.json").write_text(json.dumps({"labels": labels, "accidental": sorted(accidental)}))
    return labels, accidental


# ----------------------------------------------------------------------------- the tools


def run_project(folder: Path, work: Path) -> tuple[dict[str, set[str]], float]:
    """Flags per file from ``python -m jobs quality`` (a subprocess: the CLI as a user runs it)."""
    out = work / "quality"
    cmd = [
        sys.executable, "-m", "jobs", "quality", "--config", str(ROOT / "configs" / "quality.yaml"),
        "--set", f"input.path={folder}", "--set", "input.format=images", "--set", f"output={out}",
        "--set", "ray.num_cpus=2", "--run-date", "2000-01-01",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "IMRESTORE_LOG": "WARNING"}
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    seconds = time.perf_counter() - t0
    flags_file = out / "run=2000-01-01" / "flags.parquet"
    if proc.returncode not in (0, 1, 3) or not flags_file.exists():  # 1 fail_on, 3 warn_on: judged, written
        raise RuntimeError(f"quality job failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    table = pq.read_table(flags_file).to_pydict()
    pairs = zip(table["id"], table["flags"], strict=True)
    flags = {os.path.basename(i): set(filter(None, (f or "").split(","))) for i, f in pairs}
    return flags, seconds


def run_cleanvision(folder: Path) -> tuple[dict[str, set[str]], float]:
    """Flags per file from cleanvision's Imagelab with its default issue types and thresholds."""
    from cleanvision import Imagelab

    t0 = time.perf_counter()
    lab = Imagelab(data_path=str(folder))
    lab.find_issues(verbose=False)
    seconds = time.perf_counter() - t0
    issues = lab.issues
    cols = [c for c in issues.columns if c.startswith("is_") and c.endswith("_issue")]
    flags = {}
    for path, row in issues.iterrows():
        flags[os.path.basename(str(path))] = {c[3:-6] for c in cols if bool(row[c])}
    return flags, seconds


# ----------------------------------------------------------------------------- scoring


def score(labels: dict[str, str], accidental: set[str], flags: dict[str, set[str]]) -> dict[str, dict[str, float]]:
    """P, R, F1 per kind; near_duplicates leaves the accidental ones out (neither right nor wrong)."""
    out: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        scored = [n for n in labels if not (kind == "near_duplicates" and n in accidental)]
        tp = sum(1 for n in scored if labels[n] == kind and kind in flags.get(n, set()))
        fp = sum(1 for n in scored if labels[n] != kind and kind in flags.get(n, set()))
        fn = sum(1 for n in scored if labels[n] == kind and kind not in flags.get(n, set()))
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        out[kind] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "fp": fp, "fn": fn}
    clean = [n for n, lab in labels.items() if lab == "clean"]
    wrong = sum(1 for n in clean if flags.get(n, set()) - ({"near_duplicates"} if n in accidental else set()))
    out["clean_flagged"] = {"share": wrong / len(clean), "count": len(clean)}
    out["accidental_near_duplicates"] = {"count": len(accidental)}
    return out


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f}"


def table(split: str, ours: dict, theirs: dict, t_ours: float, t_theirs: float, n: int) -> str:
    lines = [
        f"Split {split.upper()}: {n} PNG files of 128x128 (odd sizes aside), "
        f"{ours['accidental_near_duplicates']['count']} of them views of much the same part of a photo (near "
        f"duplicates or not, a matter of taste: not scored for near_duplicates); {machine()}.",
        "",
        "| kind | quality job P | R | F1 | cleanvision P | R | F1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        a, b = ours[kind], theirs[kind]
        lines.append(
            f"| {kind} | {a['precision']:.2f} | {a['recall']:.2f} | **{a['f1']:.2f}** "
            f"| {b['precision']:.2f} | {b['recall']:.2f} | {b['f1']:.2f} |"
        )
    mean_a = np.mean([ours[k]["f1"] for k in KINDS])
    mean_b = np.mean([theirs[k]["f1"] for k in KINDS])
    lines.append(f"| mean F1 | | | **{mean_a:.2f}** | | | {mean_b:.2f} |")
    ca, cb = ours["clean_flagged"], theirs["clean_flagged"]
    lines.append(
        f"| clean images flagged (any wrong flag) | | | {100 * ca['share']:.1f}% of {ca['count']} | | | "
        f"{100 * cb['share']:.1f}% of {cb['count']} |"
    )
    lines.append(f"| wall time (s) | | | {t_ours:.1f} | | | {t_theirs:.1f} |")
    return "\n".join(lines)


def write_docs(text: str) -> None:
    replace_block(ROOT / "docs" / "nightly.md", "quality_detection", text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=["tune", "validation", "test", "both", "all"], default="all")
    ap.add_argument("--keep", metavar="DIR", help="build the sets here and keep them (default: a temporary folder)")
    ap.add_argument("--write-docs", action="store_true", help="put the tables into docs/nightly.md")
    ap.add_argument("--no-cleanvision", action="store_true", help="score the quality job only")
    ap.add_argument("--show-misses", action="store_true", help="list the files each tool got wrong")
    args = ap.parse_args()
    splits = {"both": ["tune", "test"], "all": ["tune", "validation", "test"]}.get(args.split, [args.split])
    tables = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        for split in splits:
            folder = base / split / "images"
            labels, accidental = build(split, folder)
            ours, t_ours = run_project(folder, base / split)
            if args.no_cleanvision:
                theirs, t_theirs = {}, float("nan")
            else:
                theirs, t_theirs = run_cleanvision(folder)
            s_ours, s_theirs = score(labels, accidental, ours), score(labels, accidental, theirs)
            text = table(split, s_ours, s_theirs, t_ours, t_theirs, len(labels))
            print(text, "\n", flush=True)
            tables.append(text)
            if args.show_misses:
                for n in sorted(labels):
                    want = {labels[n]} - {"clean"}
                    got = ours.get(n, set()) & (set(KINDS) | {"saturated", "decode_error"})
                    if n in accidental:
                        want, got = want - {"near_duplicates"}, got - {"near_duplicates"}
                    if got != want:
                        print(f"  ours {split} {n}: label {labels[n]}, flags {sorted(got)}")
            (base / split / "scores.json").write_text(json.dumps({"ours": s_ours, "cleanvision": s_theirs}, indent=1))
    if args.write_docs:
        write_docs("\n\n".join(tables))


if __name__ == "__main__":
    main()
