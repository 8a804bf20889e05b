"""The judge's pixel steps: colour segmentation, connected components, the generator's size classes.

Split from vtok.eval.judge (which reads attributes from these; vtok.eval.judge_tracks follows the
components over the frames) to keep each file to one concern. numpy only: connected components are found
on runs of pixels (one row's stretch of a colour), which are far fewer than pixels, and joined with a
vectorized union-find.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from vtok.shapes import COLORS, DEFAULT_SIDE, SHAPES, SIZES, ShapeObject, ShapesConfig, render

MIN_ALPHA = 0.08
"""A pixel covered less than this by its best palette colour is background: low enough to keep the faint
rim of a small object blurred over ~3x3 pixels at 16 px, high enough that codec noise stays out. Noisier
frames raise it (see `cover_threshold`)."""
NOISE_SIGMAS = 3.0
"""Background noise (estimated per video) this many standard deviations out is still background."""
PLATEAU = 0.9
"""Pixels of a component covered at least this fraction of its peak cover are on its plateau."""
PLATEAU_PIXELS = 9
"""A plateau of at least this many pixels (a 3x3 core) is a fully covered interior, whose cover blur cannot
lower: its level is the object's full cover. Smaller objects (a small shape at 16 px) have no interior."""
PLATEAU_MIN = 0.3
"""The dimmest full cover believed."""
SPECK = 0.5
"""Components lighter than this fraction of the lightest object the generator draws are noise."""
_CHUNK = 16


@dataclass
class Segmentation:
    """Per pixel of frames [T, H, W]: its palette label and how much of the pixel that colour covers."""

    frames: np.ndarray
    """The uint8 frames [T, H, W, 3] read."""
    background: np.ndarray
    """float32 [3]: the background colour assumed."""
    names: tuple[str, ...]
    """Palette names, in COLORS order; a label is an index into this."""
    dirs: np.ndarray
    """float32 [K, 3]: each palette colour minus the background."""
    label: np.ndarray
    """int8 [T, H, W]: index of the best palette colour, -1 where the pixel is background."""
    alpha: np.ndarray
    """float32 [T, H, W]: cover of the pixel by its label's colour, in [0, 1] (0 for background)."""

    def color_confidence(self, colour_sum: np.ndarray, name: str) -> float:
        """How clearly the summed (pixel - background) of an object points at palette colour `name`.

        The cosine to `name` minus the best cosine to another colour, over the same margin for a pure
        palette colour (1 minus the palette's closest pair), so a pure colour scores 1.
        """
        norm = float(np.linalg.norm(colour_sum))
        if norm == 0.0:
            return 0.0
        unit = self.dirs / np.maximum(np.linalg.norm(self.dirs, axis=1, keepdims=True), 1e-6)
        cos = unit @ (colour_sum / norm)
        k = self.names.index(name)
        others = np.delete(cos, k)
        pair = unit @ unit.T
        closest = float(np.max(pair[~np.eye(len(unit), dtype=bool)]))
        return float(np.clip((cos[k] - others.max()) / max(1.0 - closest, 1e-6), 0.0, 1.0))


def cover_threshold(frames: np.ndarray, background: np.ndarray) -> float:
    """MIN_ALPHA, or more where the frames are noisy (a generated video): the background's noise,
    NOISE_SIGMAS out, as a cover of the palette colour nearest the background."""
    pick = np.unique(np.linspace(0, len(frames) - 1, min(8, len(frames))).round().astype(int))
    deviation = np.abs(frames[pick].reshape(-1, 3).astype(np.float32) - np.asarray(background, np.float32))
    # The median absolute deviation sees the background alone (objects cover well under half a frame).
    sigma = 1.4826 * float(np.median(deviation, axis=0).max())
    dirs = np.asarray(list(COLORS.values()), np.float32) - np.asarray(background, np.float32)
    nearest = max(float(np.linalg.norm(dirs, axis=1).min()), 1.0)
    return max(MIN_ALPHA, NOISE_SIGMAS * sigma * np.sqrt(3.0) / nearest)


def segment(frames: np.ndarray, background: np.ndarray, min_alpha: float = MIN_ALPHA) -> Segmentation:
    """Label every pixel by the palette colour that best explains it as a partial cover of the background;
    covers under `min_alpha` are background."""
    names = tuple(COLORS)
    bg = np.asarray(background, np.float32)
    dirs = np.asarray([COLORS[n] for n in names], np.float32) - bg
    norms = np.maximum((dirs**2).sum(1), 1.0)
    label = np.empty(frames.shape[:3], np.int8)
    alpha = np.empty(frames.shape[:3], np.float32)
    # Only pixels that some channel sets far enough from the background to pass min_alpha for some colour
    # are fitted (most of a frame is background): cover >= min_alpha needs |pixel - bg| >= min_alpha * |dir|,
    # so some channel differs by at least that over sqrt(3). Screened by table look-ups on the uint8
    # channels, in chunks of frames to bound the per-colour arrays.
    reach = int(min_alpha * np.sqrt(float(norms.min())) / np.sqrt(3.0))
    luts = [np.abs(np.arange(256, dtype=np.float32) - c).astype(np.int16) for c in bg]
    for lo in range(0, len(frames), _CHUNK):
        chunk = frames[lo : lo + _CHUNK]
        far = np.maximum(np.maximum(luts[0][chunk[..., 0]], luts[1][chunk[..., 1]]), luts[2][chunk[..., 2]])
        cand = far >= reach
        d = chunk[cand].astype(np.float32) - bg
        proj = (d @ dirs.T) / norms
        cover = np.clip(proj, 0.0, 1.0)
        # |d - cover * dir|^2, expanded: d . dir = proj * |dir|^2.
        resid = (d**2).sum(-1, keepdims=True) + cover * norms * (cover - 2.0 * proj)
        pick = resid.argmin(-1)
        a = np.take_along_axis(cover, pick[:, None], -1)[:, 0]
        best = np.where(a < min_alpha, -1, pick)
        chunk_label = np.full(cand.shape, -1, np.int8)
        chunk_label[cand] = best
        chunk_alpha = np.zeros(cand.shape, np.float32)
        chunk_alpha[cand] = np.where(a < min_alpha, 0.0, a)
        label[lo : lo + _CHUNK] = chunk_label
        alpha[lo : lo + _CHUNK] = chunk_alpha
    return Segmentation(frames=frames, background=bg, names=names, dirs=dirs, label=label, alpha=alpha)


@lru_cache(maxsize=1)
def _reference_masses() -> dict[str, dict[str, int]]:
    """Pixels of every (size, shape) as the generator renders it at DEFAULT_SIDE."""
    cfg = ShapesConfig(width=DEFAULT_SIDE, height=DEFAULT_SIDE, num_frames=1)
    centre = DEFAULT_SIDE / 2
    out: dict[str, dict[str, int]] = {}
    for size in SIZES:
        out[size] = {}
        for shape in SHAPES:
            obj = ShapeObject(shape, next(iter(COLORS)), size, "static", centre, centre, "center")
            frame = render([obj], cfg)[0]
            out[size][shape] = int(np.any(frame != np.asarray(cfg.background, np.uint8), axis=-1).sum())
    return out


def size_masses(side: int) -> dict[str, tuple[float, float]]:
    """Per size class, the (lightest, heaviest) shape's area in pixels at a frame whose shorter side is
    `side`: the generator scales radii by side / DEFAULT_SIDE, so areas scale by its square."""
    scale = (side / DEFAULT_SIDE) ** 2
    return {size: (min(m.values()) * scale, max(m.values()) * scale) for size, m in _reference_masses().items()}


def min_object_mass(side: int) -> float:
    """The mass under which a component is noise, at a frame whose shorter side is `side`."""
    return SPECK * min(lo for lo, _ in size_masses(side).values())


@dataclass
class Components:
    """The connected components of one colour over all frames."""

    color: str
    frame: np.ndarray
    """int [N]: the frame each lies in."""
    mass: np.ndarray
    """float [N]: summed cover (pixels)."""
    area: np.ndarray
    """float [N]: the area it covers (pixels): its mass, over its own full cover where it has one (see _Parts)."""
    x: np.ndarray
    """float [N]: cover-weighted centroid, generator coordinates (pixel (i, j) is centred at j + 0.5)."""
    y: np.ndarray
    colour_sum: np.ndarray
    """float [N, 3]: summed (pixel - background) over it."""

    def select(self, keep: np.ndarray) -> Components:
        return Components(self.color, self.frame[keep], self.mass[keep], self.area[keep], self.x[keep],
                          self.y[keep], self.colour_sum[keep])


def _union(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Root of each of n nodes joined by edges (a, b): hook roots onto the smaller, then jump pointers."""
    parent = np.arange(n)
    while len(a):
        pa, pb = parent[a], parent[b]
        if np.array_equal(pa, pb):
            break
        np.minimum.at(parent, np.maximum(pa, pb), np.minimum(pa, pb))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return parent


def _label_runs(label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal non-background labels in the rows of label [R, W]: (row, start, end, label),
    row-major, ends exclusive."""
    rows_count, width = label.shape
    padded = np.full((rows_count, width + 2), -1, np.int8)
    padded[:, 1:-1] = label
    # Every place a row's label changes ends one run and starts the next; the pieces between consecutive
    # changes within a row are the runs (background pieces dropped).
    row, col = np.nonzero(padded[:, 1:] != padded[:, :-1])
    same_row = row[:-1] == row[1:]
    starts, ends, rows = col[:-1][same_row], col[1:][same_row], row[:-1][same_row]
    value = label[rows, np.minimum(starts, width - 1)]
    keep = value >= 0
    return rows[keep], starts[keep], ends[keep], value[keep]


def _run_edges(
    rows: np.ndarray, starts: np.ndarray, ends: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of touching runs (any colours): 8-connected across consecutive rows of one frame, and end to
    start within a row."""
    # Runs are row-major, so the runs of the next row starting at most at a run's end and ending at least
    # at its start are one contiguous slice, found by binary search.
    key = rows * (width + 1)
    lo = np.searchsorted(key + ends, key + (width + 1) + starts, side="left")
    hi = np.searchsorted(key + starts, key + (width + 1) + ends, side="right")
    n = np.where(rows % height == height - 1, 0, np.maximum(hi - lo, 0))
    a = np.repeat(np.arange(len(rows)), n)
    b = np.repeat(lo, n) + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    beside = np.flatnonzero((rows[:-1] == rows[1:]) & (ends[:-1] == starts[1:]))
    return np.concatenate([a, beside]), np.concatenate([b, beside + 1])


@dataclass
class _Parts:
    """Same-colour connected pieces of the frames, with sums over their pixels (masses weight the sums)."""

    color: np.ndarray
    region: np.ndarray
    """int: the connected foreground region (any colours) each lies in."""
    frame: np.ndarray
    mass: np.ndarray
    full: np.ndarray
    """The cover of its fully covered pixels: 1 for a palette colour, less for an object drawn dimmer (a
    decoder's muted colours), whose mass would otherwise read as a smaller area. 1 where it has no
    interior plateau (PLATEAU_PIXELS): a blurred small object's cover falls off from a peak, and its mass
    is its area."""
    mx: np.ndarray
    my: np.ndarray
    colour_sum: np.ndarray


def _parts(seg: Segmentation) -> _Parts | None:
    _, height, width = seg.label.shape
    rows, starts, ends, value = _label_runs(seg.label.reshape(-1, width))
    if not len(rows):
        return None
    a, b = _run_edges(rows, starts, ends, height, width)
    same = value[a] == value[b]
    _, part = np.unique(_union(len(rows), a[same], b[same]), return_inverse=True)
    part = part.reshape(-1)
    region = _union(len(rows), a, b)
    # Sums per part over its pixels, each pixel listed by its run.
    lengths = ends - starts
    prow = np.repeat(rows, lengths)
    pcol = np.repeat(starts, lengths) + np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    ppart = np.repeat(part, lengths)
    alpha = seg.alpha.reshape(-1, width)[prow, pcol].astype(np.float64)
    diff = seg.frames.reshape(-1, width, 3)[prow, pcol].astype(np.float64) - seg.background
    count = int(part.max()) + 1
    first = np.zeros(count, np.int64)
    first[part] = np.arange(len(rows))
    peak = np.zeros(count)
    np.maximum.at(peak, ppart, alpha)
    plateau = np.bincount(ppart, alpha >= PLATEAU * peak[ppart], count)
    full = np.where(plateau >= PLATEAU_PIXELS, np.maximum(peak, PLATEAU_MIN), 1.0)
    return _Parts(
        color=value[first].astype(np.int64),
        region=region[first],
        frame=rows[first] // height,
        mass=np.bincount(ppart, alpha, count),
        full=full,
        mx=np.bincount(ppart, alpha * (pcol + 0.5), count),
        my=np.bincount(ppart, alpha * (prow % height + 0.5), count),
        colour_sum=np.stack([np.bincount(ppart, diff[:, c], count) for c in range(3)], axis=1),
    )


def components(seg: Segmentation, floor: float) -> list[Components]:
    """Every colour's components of at least `floor` mass, in palette order (colours without any left out).

    Specks lighter than `floor` are the rims of objects tinted towards another palette colour (chroma
    smear, blur between two objects): one that touches an object's region is added to the nearest object
    there, its mass measured along that object's colour. A region made of specks alone that is heavy
    enough is one object of the colour its summed pixels point at (a small object smeared into several
    tints). Other specks are noise.
    """
    parts = _parts(seg)
    if parts is None:
        return []
    norms = np.maximum((seg.dirs**2).sum(1), 1.0)
    big = parts.mass >= floor
    colour, mass, area = parts.color.copy(), parts.mass.copy(), parts.mass / parts.full
    mx, my, csum = parts.mx.copy(), parts.my.copy(), parts.colour_sum.copy()
    keep = big.copy()
    # Parts grouped by region in one sort (a noisy frame has thousands of specks, most alone).
    order = np.argsort(parts.region, kind="stable")
    _, begins = np.unique(parts.region[order], return_index=True)
    for members in np.split(order, begins[1:]):
        objects, specks = members[big[members]], members[~big[members]]
        if len(specks) == 0:
            continue
        if len(objects) == 0:
            total = parts.colour_sum[specks].sum(0)
            k = int(np.argmax(seg.dirs @ total / np.sqrt(norms)))
            along = float(total @ seg.dirs[k]) / norms[k]
            if along >= floor:
                o = specks[0]
                w = along / max(float(parts.mass[specks].sum()), 1e-12)
                colour[o], mass[o], area[o], keep[o] = k, along, along, True
                mx[o], my[o] = w * parts.mx[specks].sum(), w * parts.my[specks].sum()
                csum[o] = total
            continue
        for s in specks.tolist():
            cx, cy = parts.mx[s] / max(parts.mass[s], 1e-12), parts.my[s] / max(parts.mass[s], 1e-12)
            o = int(objects[np.argmin(np.hypot(mx[objects] / mass[objects] - cx, my[objects] / mass[objects] - cy))])
            along = max(0.0, float(parts.colour_sum[s] @ seg.dirs[colour[o]]) / norms[colour[o]])
            mass[o] += along
            area[o] += along / parts.full[o]
            mx[o] += along * cx
            my[o] += along * cy
            csum[o] += parts.colour_sum[s]
    out = []
    for k in np.unique(colour[keep]).tolist():
        pick = keep & (colour == k)
        out.append(Components(color=seg.names[k], frame=parts.frame[pick], mass=mass[pick], area=area[pick],
                              x=mx[pick] / mass[pick], y=my[pick] / mass[pick], colour_sum=csum[pick]))
    return out
