"""Image quality metrics.

Full-reference metrics compare an estimate with a clean reference; both float32 in [0, 1],
(H, W) or (H, W, C), same shape; higher is better for them. No-reference metrics (below) score
one image alone; each docstring states its range and which direction is better.
"""

from __future__ import annotations

import hashlib
import math
from typing import NamedTuple

import numpy as np
import pywt
from PIL import Image
from scipy import fft, ndimage
from scipy.special import ndtri
from skimage import feature
from skimage.metrics import structural_similarity


def psnr(reference: np.ndarray, estimate: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB, data range 1. Range [0, inf); higher is better.

    ``mask`` (H, W) bool limits the error to those pixels (e.g. the dead ones only).
    Identical images give ``inf``; an empty mask gives ``nan``.
    """
    ref = np.asarray(reference, dtype=np.float64)
    est = np.asarray(estimate, dtype=np.float64)
    if ref.shape != est.shape:
        raise ValueError(f"shapes differ: {ref.shape} vs {est.shape}")
    err = (ref - est) ** 2
    if mask is not None:
        if not mask.any():
            return float("nan")
        err = err[mask]
    mse = float(err.mean())
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(1.0 / mse)


def ssim(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Structural similarity (scikit-image, Gaussian-free 7x7 window). Range [-1, 1]; higher
    is better. Images smaller than 7 pixels use the largest odd window that fits."""
    ref = np.asarray(reference, dtype=np.float64)
    est = np.asarray(estimate, dtype=np.float64)
    side = min(ref.shape[0], ref.shape[1])
    win = min(7, side if side % 2 == 1 else side - 1)
    if win < 3:
        return float("nan")
    return float(
        structural_similarity(
            ref,
            est,
            data_range=1.0,
            win_size=win,
            channel_axis=-1 if ref.ndim == 3 else None,
        )
    )


def dead_fraction(dead: np.ndarray) -> float:
    """Share of dead pixels in a boolean (H, W) mask. Range [0, 1]; lower is better."""
    return float(np.asarray(dead).mean()) if dead.size else 0.0


# ----------------------------------------------------------------------------- no-reference metrics
# One image in: float32 in [0, 1], (H, W) or (H, W, C). Colour images are reduced to luminance
# (Rec. 601 weights on the first three channels; an alpha channel is ignored) where a metric is
# about brightness or structure, because that is what a person judges.


def luminance(img: np.ndarray) -> np.ndarray:
    """Gray (H, W) float32 in [0, 1] from (H, W) or (H, W, C): L of LA, Rec. 601 luma of RGB[A]."""
    a = np.asarray(img, dtype=np.float32)
    if a.ndim == 2:
        return a
    if a.shape[2] < 3:  # L or LA: the first channel is the gray level
        return np.ascontiguousarray(a[:, :, 0])
    return np.asarray(a[:, :, :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32), dtype=np.float32)


def saturated_fraction(img: np.ndarray, level: float = 1.0) -> float:
    """Share of pixels whose every channel is >= ``level`` (blown highlights, stuck-on pixels).

    Range [0, 1]; lower is better. A flat white image gives 1.
    """
    a = np.asarray(img)
    hot = np.asarray(a >= level)
    if a.ndim == 3:
        hot = np.asarray(hot.all(axis=2))
    return float(hot.mean()) if hot.size else 0.0


def sharpness(img: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Variance of the Laplacian of the luminance (scipy's 4-neighbour kernel, edges reflected).

    Range [0, inf) on [0, 1] images (a black/white checkerboard gives 16 away from its border, a flat image 0);
    higher is sharper. Blur removes high frequencies, so a blurred copy scores far lower.

    ``ignore`` (H, W) bool marks pixels to leave out, typically the dead pixels: an isolated dead
    pixel is a spike that would make a blurred image look sharp, so the Laplacian responses
    touching it (its 3x3 neighbourhood) are dropped. Returns ``nan`` when nothing is left.
    """
    gray = luminance(img).astype(np.float64)
    if min(gray.shape) < 3:
        return float("nan")
    lap = ndimage.laplace(gray, mode="reflect")
    if ignore is not None and ignore.any():
        keep = ~ndimage.binary_dilation(ignore, structure=np.ones((3, 3), bool))
        lap = lap[keep]
        if lap.size < 2:
            return float("nan")
    return float(lap.var())


class Exposure(NamedTuple):
    """Exposure of one image (see :func:`exposure`)."""

    brightness: float  # mean luminance, [0, 1]; about 0.4-0.6 for a well-exposed photo
    dark_fraction: float  # share of pixels with luminance <= low, [0, 1]; lower is better
    bright_fraction: float  # share of pixels with luminance >= high, [0, 1]; lower is better


def exposure(img: np.ndarray, low: float = 0.05, high: float = 0.95) -> Exposure:
    """Mean luminance and the shares of pixels near black (<= ``low``) and near white (>= ``high``).

    Ranges [0, 1] each. Brightness has no better direction (mid-grey is typical); large dark or
    bright shares mean under- or over-exposure.
    """
    gray = luminance(img)
    if gray.size == 0:
        return Exposure(float("nan"), float("nan"), float("nan"))
    return Exposure(float(gray.mean()), float((gray <= low).mean()), float((gray >= high).mean()))


def contrast(img: np.ndarray) -> float:
    """RMS contrast: standard deviation of the luminance.

    Range [0, 0.5] (0 = flat, 0.5 = half black, half white); higher means more contrast.
    """
    gray = luminance(img)
    return float(gray.std(dtype=np.float64)) if gray.size else float("nan")


def entropy(img: np.ndarray, bins: int = 256) -> float:
    """Shannon entropy of the luminance histogram (``bins`` levels over [0, 1]), in bits.

    Range [0, log2(bins)] (8 for 256 bins); 0 for a flat image, 1 for a two-level image with
    equal shares. Higher means more distinct grey levels are used (more information).
    """
    gray = luminance(img)
    if gray.size == 0:
        return float("nan")
    levels = np.clip((gray * bins).astype(np.int64), 0, bins - 1)
    p = np.bincount(levels.ravel(), minlength=bins).astype(np.float64) / levels.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def pixel_hash(img: np.ndarray) -> str:
    """SHA-256 (hex, 64 characters) of the decoded pixels, their shape and dtype.

    Two files with the same pixels hash equally even when their encodings differ (PNG
    compression level, metadata), which a hash of the bytes would miss. Equal hashes = exact
    duplicates; there is no distance between hashes.
    """
    a = np.ascontiguousarray(img)
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def dhash(img: np.ndarray, size: int = 8) -> int:
    """Difference hash: a ``size * size``-bit perceptual hash (64 bits by default) as an int.

    The luminance is box-averaged down to ``size`` rows x ``size + 1`` columns, and each bit says
    whether a cell is brighter than its right neighbour. Resizing, recompression, mild noise and
    brightness shifts keep most bits, so near duplicates lie at a small :func:`hamming` distance
    (<= 4 of 64 bits is a common cut-off); unrelated images differ in about half the bits.
    """
    gray = luminance(img)
    small = Image.fromarray(gray, mode="F").resize((size + 1, size), Image.Resampling.BOX)
    cells = np.asarray(small, dtype=np.float32)
    # a tolerance keeps flat regions stable under 8-bit rounding noise
    bits = (cells[:, :-1] - cells[:, 1:]) > 1e-3
    value = 0
    for bit in bits.ravel():
        value = (value << 1) | int(bit)
    return value


#: The 64 lowest-frequency AC terms of a DCT, ordered by frequency (u + v, then u): :func:`phash`'s bits.
_PHASH_TERMS = sorted((u + v, u, v) for u in range(11) for v in range(11) if u + v)[:64]
_PHASH_U = np.array([t[1] for t in _PHASH_TERMS])
_PHASH_V = np.array([t[2] for t in _PHASH_TERMS])


def phash(img: np.ndarray, size: int = 32, flat: float = 16.0 / 255.0) -> int:
    """DCT perceptual hash: 64 bits as an int, 0 for an image with no structure.

    The luminance is box-averaged to ``size`` x ``size`` (any aspect ratio), transformed by an
    orthonormal 2-D DCT, and each of its 64 lowest-frequency AC terms gives one bit: whether it is
    above their median (so about 32 bits are set; brightness, which is the DC term, does not count).
    This is the classic pHash (Zauner, "Implementation and benchmarking of perceptual image hash
    functions", 2010) less the DC term. Resizing, recompression, noise, brightness and a trim of a
    few pixels move a few bits (<= 4 of 64 is a near duplicate); other photos, and other crops
    of the same photo, differ in about half. Unlike a difference hash, which reads the sign of
    every neighbour step and so gives flat regions the same bits, the median split depends on the
    whole image's low-frequency pattern. An image whose AC terms all stay under ``flat`` (about
    one 8-bit level of amplitude: a flat frame, noise only) has no pattern to hash and gets 0, and
    a smooth gradient (a clear sky) sets only a few bits: :func:`hash_is_informative` rejects both.
    """
    gray = luminance(img)
    if gray.size == 0:
        return 0
    small = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32), mode="F").resize(
        (size, size), Image.Resampling.BOX
    )
    coeffs = fft.dctn(np.asarray(small, dtype=np.float64), norm="ortho")
    ac = coeffs[_PHASH_U, _PHASH_V]
    if float(np.abs(ac).max()) < flat:
        return 0
    # a term counts as above the median only by a quarter of ``flat``: terms at rounding-noise
    # level (all but a few in a smooth gradient) read 0, so such a hash has few ones
    bits = ac > np.median(ac) + flat / 4
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hash_is_informative(value: int, min_bits: int = 8) -> bool:
    """Whether a 64-bit perceptual hash (:func:`phash`, :func:`dhash`) carries enough structure to compare.

    With a difference hash a flat image, a smooth gradient (a sky) or a small object on a plain
    background gives (almost) all zeros or all ones, and every such image would look like a near
    duplicate of every other; :func:`phash` gives a structureless image 0. Informative hashes
    have at least ``min_bits`` ones and ``min_bits`` zeros.
    """
    ones = int(value).bit_count()
    return min_bits <= ones <= 64 - min_bits


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes (:func:`phash`, :func:`dhash`). Range [0, 64]; 0 = same."""
    return int(a ^ b).bit_count()


# ----------------------------------------------------------------------------- the working copy
# Issue scores that must mean the same at any resolution are computed on a normalised working copy:
# the luminance, with the dead pixels filled from their live neighbours, area-downscaled so that its
# shorter side is at most ``WORKING_SIZE`` pixels (smaller images are kept as they are: enlarging
# would add blur of its own).

#: Shorter side (pixels) of the working copy.
WORKING_SIZE = 128


def isolated_dead_pixels(
    img: np.ndarray, candidates: np.ndarray, min_contrast: float = 0.06, max_group: int = 4
) -> np.ndarray:
    """The ``candidates`` (bool (H, W), e.g. every exactly-black pixel) that are isolated defects.

    A dead pixel is a wrong value amid live neighbours: it lies in a 4-connected group of at most
    ``max_group`` candidates, at least 3 of its 8 neighbours are not candidates, and the median
    luminance of those live neighbours differs from its own by at least ``min_contrast`` (of
    [0, 1]). Large black regions (a night sky, a black background,
    text) have candidate neighbours, and dark content near black (a dim scene quantised to 0 in
    places) has neighbours about as dark: neither is dead. Returns bool (H, W).
    """
    cand = np.asarray(candidates, dtype=bool)
    if not cand.any() or min(cand.shape) < 3:
        return np.zeros_like(cand)
    ring = np.ones((3, 3), np.float64)
    ring[1, 1] = 0.0
    live = (~cand).astype(np.float64)
    live_count = ndimage.convolve(live, ring, mode="mirror")
    labels, _ = ndimage.label(cand)  # 4-connected groups of candidates
    small = np.bincount(labels.ravel())[labels] <= max_group
    gray = luminance(img).astype(np.float64)
    # the median of the live neighbours, by filling the candidates with NaN
    padded = np.pad(np.where(cand, np.nan, gray), 1, mode="reflect")
    ys, xs = np.nonzero(cand & small & (live_count >= 3))
    out = np.zeros_like(cand)
    if ys.size == 0:
        return out
    offsets = [(dy, dx) for dy in (0, 1, 2) for dx in (0, 1, 2) if (dy, dx) != (1, 1)]
    neigh = np.stack([padded[ys + dy, xs + dx] for dy, dx in offsets], axis=1)  # (n, 8)
    med = np.nanmedian(neigh, axis=1)
    out[ys, xs] = np.abs(med - gray[ys, xs]) >= min_contrast
    return out


def fill_from_neighbours(gray: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """``gray`` (H, W) with the ``holes`` (bool (H, W)) replaced by the mean of their live 3x3
    neighbours (normalised convolution; repeated until every hole has a live neighbour)."""
    out = np.asarray(gray, dtype=np.float64).copy()
    holes = np.asarray(holes, dtype=bool).copy()
    k = np.ones((3, 3), np.float64)
    for _ in range(8):
        if not holes.any():
            break
        live = (~holes).astype(np.float64)
        num = ndimage.convolve(out * live, k, mode="mirror")
        den = ndimage.convolve(live, k, mode="mirror")
        fill = holes & (den > 0)
        out[fill] = num[fill] / den[fill]
        holes &= ~fill
    return out


def working_copy(img: np.ndarray, dead: np.ndarray | None = None, size: int = WORKING_SIZE) -> np.ndarray:
    """The normalised copy the resolution-free scores use: float64 (h, w) luminance in [0, 1].

    ``dead`` (bool (H, W)) pixels are filled from their live neighbours first (a dead pixel is a
    spike that reads as detail). Images whose shorter side exceeds ``size`` are area-averaged
    down to it, keeping the aspect ratio.
    """
    gray = luminance(img).astype(np.float64)
    if dead is not None and dead.any():
        gray = fill_from_neighbours(gray, dead)
    h, w = gray.shape
    short = min(h, w)
    if short > size:
        f = size / short
        nw, nh = max(1, round(w * f)), max(1, round(h * f))
        gray = np.asarray(
            Image.fromarray(gray.astype(np.float32), mode="F").resize((nw, nh), Image.Resampling.BOX), np.float64
        )
    return gray


def blur_width(gray: np.ndarray, reblur: float = 1.5, quantile: float = 0.1, min_gradient: float = 0.02) -> float:
    """Blur of an image, estimated from its own edges: the Gaussian width (pixels) of its sharpest edges.

    ``gray`` is a working copy (:func:`working_copy`). At each edge point (Canny, thresholds at the
    image's own gradient quantiles) the gradient magnitude is compared with that of a copy
    re-blurred by ``reblur`` pixels: a step edge blurred by sigma keeps the ratio
    R = sqrt(sigma² + reblur²) / sigma, so sigma = reblur / sqrt(R² - 1) (Zhuo & Sim, "Defocus
    map estimation from a single image", 2011). The image's value is the ``quantile`` of these
    estimates over its edges: an image is blurred when even its sharpest edges are wide, whatever
    its content (texture, a few edges, a shallow depth of field).

    Range [0, inf) pixels of the working copy; about 0.3-0.9 for sharp photos, >= 1 for a visible
    blur at the working size (a Gaussian blur of 1.5 pixels on a 128-pixel crop); higher is blurrier.
    ``nan`` when the image has no edge to measure (flat, only soft content, or too small): a flat
    image is low on information, not blurred.
    ``min_gradient`` is the least gradient (luminance per working-copy pixel, after the re-blur)
    an edge must have.
    """
    g = np.asarray(gray, dtype=np.float64)
    if min(g.shape) < 8:
        return float("nan")

    def grad(a: np.ndarray) -> np.ndarray:
        return np.hypot(ndimage.sobel(a, 1, mode="reflect"), ndimage.sobel(a, 0, mode="reflect")) / 8.0

    m1 = grad(g)
    m2 = grad(ndimage.gaussian_filter(g, reblur, mode="reflect"))
    # Edges worth measuring: Canny's, at the image's own gradient quantiles, and strong in absolute
    # terms (a 0.2 step spread over 10 pixels still counts) so that soft content - clouds, glows,
    # a vignette, noise on a flat frame - is not taken for blurred edges.
    strong = m2 >= min_gradient
    if int(strong.sum()) < 8:
        return float("nan")
    edges = feature.canny(g, sigma=1.0, low_threshold=0.7, high_threshold=0.9, use_quantiles=True) & strong
    if int(edges.sum()) < 8:
        return float("nan")
    ratio = np.maximum(m1[edges] / m2[edges], 1.0 + 1e-6)
    sigma = reblur / np.sqrt(ratio**2 - 1.0)
    return float(np.quantile(sigma, quantile))


#: The 75th percentile of the standard normal (Donoho's MAD estimator divides by it).
_NORMAL_Q75 = float(ndtri(0.75))


def noise_level(img: np.ndarray, dead: np.ndarray | None = None) -> float:
    """Pixel noise of an image: the standard deviation of its luminance noise, in 8-bit levels.

    Estimated at the image's own pixels (no working copy: shrinking averages noise away) from the
    finest diagonal wavelet band by scikit-image's ``estimate_sigma`` (Donoho's MAD estimator).
    A photo keeps sensor noise or grain at the pixel level even where it is soft by nature (about
    0.25 and up); a Gaussian blur removes it, leaving only the rounding to 8 bits (about 0.05-0.25).
    ``dead`` (bool (H, W)) pixels are filled from their neighbours first: they are spikes, not
    noise. ``nan`` for images under 8 pixels a side.
    """
    gray = luminance(img).astype(np.float64)
    if min(gray.shape) < 8:
        return float("nan")
    if dead is not None and dead.any():
        gray = fill_from_neighbours(gray, dead)
    # scikit-image's estimate_sigma(gray), bit for bit, without its per-call overhead (half its
    # time at 64x64): the finest diagonal db2 band, its nonzero coefficients' median |d| / ndtri(0.75).
    diag = pywt.dwt(pywt.dwt(gray, "db2", axis=0)[1], "db2", axis=1)[1]
    diag = diag[np.nonzero(diag)]
    return float(np.median(np.abs(diag)) / _NORMAL_Q75) * 255.0 if diag.size else float("nan")


def detail_ratio(img: np.ndarray, reference: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Fine detail kept against a clean reference: var(Laplacian(img)) / var(Laplacian(reference)).

    Both (H, W[, C]) float32 in [0, 1], same shape; luminance, compared only where the 3x3
    neighbourhood holds no ``ignore`` pixel (the dead ones: they are damage of another kind). Blur
    removes fine detail, so a blurred copy scores well under 1 even when the blur is too mild to
    see without the original (a soft texture shrunk and enlarged by 2). Range [0, inf): 1 = as
    sharp as the reference, < 1 = detail lost, > 1 = detail (or noise) added; nan when nothing is
    left to compare or the reference is flat.
    """
    a = luminance(img).astype(np.float64)
    b = luminance(reference).astype(np.float64)
    if a.shape != b.shape or min(a.shape) < 3:
        return float("nan")
    keep = np.ones(a.shape, dtype=bool)
    if ignore is not None and ignore.any():
        keep = ~ndimage.binary_dilation(ignore, structure=np.ones((3, 3), bool))
    if int(keep.sum()) < 16:
        return float("nan")
    la = ndimage.laplace(a, mode="reflect")[keep]
    lb = ndimage.laplace(b, mode="reflect")[keep]
    ref_var = float(lb.var())
    return float(la.var()) / ref_var if ref_var > 1e-12 else float("nan")


def luminance_quantiles(gray: np.ndarray, qs: tuple[float, ...] = (0.05, 0.99)) -> tuple[float, ...]:
    """Quantiles of the luminance (e.g. p05 and p99), each in [0, 1].

    An image is dark when even its brightest 1% is dim (a night scene with lights is not), and
    light (washed out) when even its darkest 5% is bright.
    """
    g = np.asarray(gray)
    if g.size == 0:
        return tuple(float("nan") for _ in qs)
    return tuple(float(v) for v in np.quantile(g, qs))


def relative_contrast(img: np.ndarray, min_headroom: float = 0.03) -> float:
    """RMS contrast over the headroom: std of the luminance / min(mean, 1 - mean).

    How much of the room it has the image's luminance uses: a dim photo (mean 0.04, std 0.03) or
    a washed-out one keeps its relative contrast, a blank or contrast-squeezed frame does not. The
    headroom is at least ``min_headroom`` (about 8 levels of 255), so a photo under-exposed to a
    few dozen levels keeps its contrast (it is dark, not blank) while rounding noise on an
    all-black or all-white frame stays small. Range [0, 1 / sqrt(min_headroom)] (5.8); about
    0.3-1.5 for photos; low (< 0.06) = little to see.
    """
    gray = luminance(img).astype(np.float64)
    if gray.size == 0:
        return float("nan")
    mean = float(gray.mean())
    return float(gray.std()) / max(min(mean, 1.0 - mean), min_headroom)


def content_entropy(gray: np.ndarray, background_share: float = 0.3, bins: int = 256) -> float:
    """Entropy (bits) of the luminance histogram, a plain background left out.

    Like :func:`entropy`, but when one grey level (with its noise, +-2 levels) holds at least
    ``background_share`` of the pixels (a genuinely black background, a white page margin) it is dropped and the
    entropy of the rest is returned, so an object on a plain background counts for what the
    object holds. A flat frame with a little noise, or a photo whose contrast is squeezed to a
    few levels, still scores low. Range [0, log2(bins)]; low = little information.
    """
    g = np.asarray(gray)
    if g.size == 0:
        return float("nan")
    levels = np.clip((g * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount(levels.ravel(), minlength=bins).astype(np.float64)
    top = int(counts.argmax())
    band = slice(max(top - 2, 0), top + 3)  # the background level and its noise, +-2 levels
    back = counts[band].sum()
    rest = counts.copy()
    rest[band] = 0.0
    used = np.flatnonzero(rest)
    # drop the background only when what is left is something: >= 5% of the pixels spanning at
    # least an eighth of the range (a dim or washed-out photo keeps all its few levels)
    if (
        back >= background_share * counts.sum()
        and rest.sum() >= 0.05 * counts.sum()
        and used.size
        and used[-1] - used[0] >= bins // 8
    ):
        counts = rest
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def color_fraction(img: np.ndarray, tolerance: float = 1.5 / 255.0) -> float:
    """Share of pixels whose colour channels differ by more than ``tolerance`` (max - min of RGB).

    Range [0, 1]; 0 for a gray image, also when it is stored as RGB (or as a JPEG, whose chroma
    rounding stays within a level or two); near 1 for a colour photo. Gray and gray-alpha images
    give 0. Channel differences, unlike a saturation ratio, do not grow in the dark.
    """
    a = np.asarray(img, dtype=np.float32)
    if a.ndim == 2 or a.shape[2] < 3:
        return 0.0
    r, g, b = a[:, :, 0], a[:, :, 1], a[:, :, 2]
    # element-wise over the three planes: ~5x faster than max/min along the last axis
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    return float(np.count_nonzero(spread > tolerance) / spread.size) if spread.size else 0.0
