"""The tinyworld: a procedural world of shapes, colours and fill patterns with known ground truth.

Every image holds one shape (the "object / character" concepts) painted in one colour (the
"attribute" concepts) with one fill pattern (the "artistic style" concepts), at a random
position and size, on a light or dark grey background with slight noise. Greys never collide
with the six saturated shape colours.

Captions are built from templates and 2--3 synonyms per value, so a concept can be named
(``circle``) or only paraphrased (``disc``, ``round shape``). Synonyms share meaning only
through training, which reproduces the paraphrase gap of real text encoders.

Held out for evaluation (never used by :func:`caption` with ``split="train"``, which is what
training uses):

* the caption templates in :data:`EVAL_TEMPLATES` (``"a picture showing {np}"``, ...);
* every synonym *is* seen in training, but only inside :data:`TRAIN_TEMPLATES`, so a synonym
  prompt built from an eval template is a combination the model never saw.

All randomness goes through a ``numpy.random.Generator`` so everything is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# ----------------------------------------------------------------------------- vocabulary
# canonical name -> synonyms (canonical first)
SHAPES: dict[str, list[str]] = {
    "circle": ["circle", "disc", "round shape"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle", "trigon", "three-sided shape"],
    "star": ["star", "pentagram", "five-pointed shape"],
    "heart": ["heart", "valentine", "love symbol"],
    "cross": ["cross", "plus sign", "plus shape"],
}
COLORS: dict[str, list[str]] = {
    "red": ["red", "crimson", "scarlet"],
    "green": ["green", "emerald", "jade"],
    "blue": ["blue", "azure", "cobalt"],
    "yellow": ["yellow", "golden", "lemon"],
    "purple": ["purple", "violet", "amethyst"],
    "orange": ["orange", "tangerine", "amber"],
}
# No synonym shares a CLIP token with its canonical name (checked with the real tokenizer), so a
# synonym-only prompt really is a paraphrase.
# Pattern synonyms that start with "with " are placed after the noun ("a red circle with stripes"),
# the others before the colour ("a striped red circle").
PATTERNS: dict[str, list[str]] = {
    "solid": ["solid", "plain", "uniform"],
    "striped": ["striped", "with stripes", "pinstriped"],
    "dotted": ["dotted", "polka-dot", "with dots"],
    "checkered": ["checkered", "chequered", "with a chessboard pattern"],
}

SHAPE_NAMES = list(SHAPES)
COLOR_NAMES = list(COLORS)
PATTERN_NAMES = list(PATTERNS)
ATTRIBUTES = {"shape": SHAPE_NAMES, "color": COLOR_NAMES, "pattern": PATTERN_NAMES}

# sRGB in [0, 1]; well separated hues, all saturated (backgrounds are grey).
RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.10),
    "green": (0.10, 0.66, 0.18),
    "blue": (0.12, 0.30, 0.92),
    "yellow": (0.95, 0.85, 0.08),
    "purple": (0.58, 0.14, 0.76),
    "orange": (1.00, 0.52, 0.00),
}
# The "off" cells of a pattern use a pale tint of the shape colour: TINT * colour + (1 - TINT) * white.
TINT = 0.40

# {np} is the noun phrase: "[a|an] {pattern-adj} {colour} {shape} {with-pattern}"
TRAIN_TEMPLATES: list[str] = [
    "{np}",
    "{np_bare}",
    "a photo of {np}",
    "an image of {np}",
    "a drawing of {np}",
    "{np} on a grey background",
    "a small picture of {np}",
]
EVAL_TEMPLATES: list[str] = [
    "a picture showing {np}",
    "an illustration of {np}",
    "a rendering of {np}, centered",
]
TEMPLATES = {"train": TRAIN_TEMPLATES, "eval": EVAL_TEMPLATES, "all": TRAIN_TEMPLATES + EVAL_TEMPLATES}


def _pick(options: list[str], rng: np.random.Generator, synonyms) -> str:
    if synonyms is False or synonyms is None:
        return options[0]
    if synonyms == "only":
        return options[1 + int(rng.integers(len(options) - 1))]
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" and not word.lower().startswith("uni") else "a"


def noun_phrase(
    shape: str | None,
    color: str | None,
    pattern: str | None,
    rng: np.random.Generator,
    synonyms=True,
    article: bool = True,
) -> str:
    """e.g. ``"a striped red circle"`` / ``"a crimson disc with stripes"``; ``None`` leaves an attribute out."""
    pre: list[str] = []
    post: list[str] = []
    if pattern is not None:
        p = _pick(PATTERNS[pattern], rng, synonyms)
        (post if p.startswith("with ") else pre).append(p)
    if color is not None:
        pre.append(_pick(COLORS[color], rng, synonyms))
    pre.append(_pick(SHAPES[shape], rng, synonyms) if shape is not None else "shape")
    text = " ".join(pre + post)
    return f"{_article(text)} {text}" if article else text


def caption(
    shape: str | None,
    color: str | None,
    pattern: str | None,
    rng: np.random.Generator,
    synonyms=True,
    split: str = "train",
    template: int | None = None,
) -> str:
    """A caption for one image.

    ``synonyms``: ``False`` -> canonical names only; ``True`` -> any of the names (canonical
    included); ``"only"`` -> a non-canonical synonym for every named attribute.
    ``split``: ``"train"`` (templates used in training), ``"eval"`` (held-out templates) or ``"all"``.
    ``template``: index into that split's template list (random if ``None``).
    Pass ``None`` for an attribute to leave it unnamed.
    """
    temps = TEMPLATES[split]
    t = temps[int(rng.integers(len(temps)))] if template is None else temps[template]
    if "{np_bare}" in t:
        return t.format(np_bare=noun_phrase(shape, color, pattern, rng, synonyms, article=False))
    return t.format(np=noun_phrase(shape, color, pattern, rng, synonyms))


# ----------------------------------------------------------------------------- rendering
def _star_polygon(n: int = 5, r_out: float = 1.0, r_in: float = 0.42) -> np.ndarray:
    pts = []
    for k in range(2 * n):
        r = r_out if k % 2 == 0 else r_in
        a = -np.pi / 2 + k * np.pi / n
        pts.append((r * np.cos(a), r * np.sin(a)))
    return np.array(pts)


_POLYGONS = {
    "square": np.array([(-0.78, -0.78), (0.78, -0.78), (0.78, 0.78), (-0.78, 0.78)]),
    "triangle": np.array([(0.0, -0.95), (0.95, 0.72), (-0.95, 0.72)]),
    "star": _star_polygon(5, 1.0, 0.45) * np.array([1.0, 1.0]) + np.array([0.0, 0.08]),
}


def _in_polygon(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd ray casting, vectorised over any array shape."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        cond = (y1 > v) != (y2 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            xc = (x2 - x1) * (v - y1) / (y2 - y1 + 1e-12) + x1
        inside ^= cond & (u < xc)
    return inside


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of ``shape`` in normalised coordinates (u right, v down, unit ~ shape radius)."""
    if shape == "circle":
        return u * u + v * v <= 0.88**2
    if shape in _POLYGONS:
        return _in_polygon(u, v, _POLYGONS[shape])
    if shape == "cross":
        a, b = np.abs(u), np.abs(v)
        return ((a <= 0.32) & (b <= 0.92)) | ((b <= 0.32) & (a <= 0.92))
    if shape == "heart":
        x = u * 1.05
        y = -(v * 1.05 - 0.05)  # up is positive for the implicit curve
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    raise KeyError(shape)


def pattern_mask(pattern: str, x: np.ndarray, y: np.ndarray, scale: float) -> np.ndarray:
    """True where the pattern shows the full shape colour (else the pale tint). x, y in pixels of a 32-px canvas."""
    if pattern == "solid":
        return np.ones(x.shape, dtype=bool)
    if pattern == "striped":  # horizontal stripes, period 6 px (3 on, 3 off) at 32 px
        return np.mod(y / scale, 6.0) < 3.0
    if pattern == "dotted":  # pale dots of radius 1.6 px on a 6.5-px grid
        px = np.mod(x / scale, 6.5) - 3.25
        py = np.mod(y / scale, 6.5) - 3.25
        return px * px + py * py > 1.7**2
    if pattern == "checkered":  # 4-px checkerboard
        return (np.floor(x / scale / 4.0) + np.floor(y / scale / 4.0)) % 2 == 0
    raise KeyError(pattern)


@dataclass
class Labels:
    shape: np.ndarray  # int64 indices into SHAPE_NAMES
    color: np.ndarray
    pattern: np.ndarray

    def names(self, i: int) -> tuple[str, str, str]:
        return SHAPE_NAMES[self.shape[i]], COLOR_NAMES[self.color[i]], PATTERN_NAMES[self.pattern[i]]

    def __len__(self) -> int:
        return len(self.shape)


def render_batch(
    shapes, colors, patterns, rng: np.random.Generator, size: int = 32, supersample: int = 2, return_mask: bool = False
):
    """Render a batch; ``shapes``/``colors``/``patterns`` are sequences of names or indices. Returns uint8 (n,H,W,3)."""
    shapes = [SHAPE_NAMES[s] if not isinstance(s, str) else s for s in shapes]
    colors = [COLOR_NAMES[c] if not isinstance(c, str) else c for c in colors]
    patterns = [PATTERN_NAMES[p] if not isinstance(p, str) else p for p in patterns]
    n = len(shapes)
    S = size * supersample
    k = size / 32.0  # geometry is defined on a 32-px canvas and scaled
    radius = rng.uniform(10.0, 14.0, n) * k
    cx = rng.uniform(-4.0, 4.0, n) * k + size / 2
    cy = rng.uniform(-4.0, 4.0, n) * k + size / 2
    phase = rng.uniform(0, 8, (n, 2)) * k
    dark = rng.random(n) < 0.5
    grey = np.where(dark, rng.uniform(0.12, 0.30, n), rng.uniform(0.62, 0.80, n))
    g = (np.arange(S) + 0.5) / supersample  # pixel-centre coordinates in output pixels
    X = g[None, None, :]
    Y = g[None, :, None]
    u = np.broadcast_to((X - cx[:, None, None]) / radius[:, None, None], (n, S, S))
    v = np.broadcast_to((Y - cy[:, None, None]) / radius[:, None, None], (n, S, S))
    px = np.broadcast_to(X + phase[:, 0, None, None], (n, S, S))
    py = np.broadcast_to(Y + phase[:, 1, None, None], (n, S, S))
    inside = np.zeros((n, S, S), dtype=bool)
    full = np.zeros((n, S, S), dtype=bool)
    for name in set(shapes):
        idx = np.array([i for i, s in enumerate(shapes) if s == name])
        inside[idx] = shape_mask(name, u[idx], v[idx])
    for name in set(patterns):
        idx = np.array([i for i, p in enumerate(patterns) if p == name])
        full[idx] = pattern_mask(name, px[idx], py[idx], k)
    col = np.array([RGB[c] for c in colors], dtype=np.float32)  # (n,3)
    tint = TINT * col + (1 - TINT)
    fg = np.where(full[..., None], col[:, None, None, :], tint[:, None, None, :])
    img = np.where(inside[..., None], fg, grey[:, None, None, None].astype(np.float32))
    if supersample > 1:
        img = img.reshape(n, size, supersample, size, supersample, 3).mean(axis=(2, 4))
        cover = inside.reshape(n, size, supersample, size, supersample).mean(axis=(2, 4))
    else:
        cover = inside.astype(np.float32)
    img = img + rng.normal(0.0, 0.015, img.shape)
    out = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return (out, cover) if return_mask else out


def render(shape: str, color: str, pattern: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One uint8 (H,W,3) image."""
    return render_batch([shape], [color], [pattern], rng, size)[0]


def sample_labels(n: int, rng: np.random.Generator, shape_p: Sequence[float] | None = None) -> Labels:
    """Uniformly random attributes; ``shape_p``: the shapes' probabilities instead (a training phase that draws
    the shapes a model confuses more often)."""
    return Labels(
        rng.integers(len(SHAPE_NAMES), size=n) if shape_p is None else rng.choice(len(SHAPE_NAMES), size=n, p=shape_p),
        rng.integers(len(COLOR_NAMES), size=n),
        rng.integers(len(PATTERN_NAMES), size=n),
    )


def sample_batch(
    n: int,
    rng: np.random.Generator,
    size: int = 32,
    synonyms=True,
    split: str = "train",
    p_drop_pattern: float = 0.0,
    p_drop_color: float = 0.0,
    shape_p: Sequence[float] | None = None,
):
    """(images uint8 (n,H,W,3), Labels, captions list[str]) with uniformly random attributes.

    ``p_drop_*``: probability that the caption leaves that attribute unnamed (the image still has one).
    ``shape_p``: the shapes' probabilities (:func:`sample_labels`).
    """
    lab = sample_labels(n, rng, shape_p)
    imgs = render_batch(lab.shape, lab.color, lab.pattern, rng, size)
    caps = []
    c: str | None
    p: str | None
    for i in range(n):
        s, c, p = lab.names(i)
        if rng.random() < p_drop_pattern:
            p = None
        if rng.random() < p_drop_color:
            c = None
        caps.append(caption(s, c, p, rng, synonyms=synonyms, split=split))
    return imgs, lab, caps


def contact_sheet(images: np.ndarray, ncol: int = 8, pad: int = 2):
    """Tile uint8 (n,H,W,3) images into one PIL image (for eyeballing)."""
    from PIL import Image

    n, h, w, _ = images.shape
    nrow = (n + ncol - 1) // ncol
    sheet = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        sheet[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = images[i]
    return Image.fromarray(sheet)
