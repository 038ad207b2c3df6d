"""Plots people read at a glance (matplotlib, Agg backend): each function returns PNG bytes.

* :func:`tradeoff`       erase rate vs retain rate per method, with the 95 % interval bars of both
* :func:`attack_curve`   attack success vs η per method, beside the unedited model's concept rate
                         and the share of its images that keep every prompted attribute
* :func:`sparsity_sweep` SPACE: erase rate and drift vs sparsity
* :func:`concepts_curve` per-concept erase / retain rate vs the number of concepts erased at once
* :func:`clip_gap_curve` CLIP_R − CLIP_E (MACE's many-concepts score) vs the number of concepts erased at once
* :func:`attack_matrix`  attack × method ASR as a heat map, each cell with its interval and the unedited model's rate

The report embeds them as data URIs and saves them as PNG files beside the page.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping, Sequence

from .metrics import Estimate


def _figure(w: float = 5.2, h: float = 4.0):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(w, h), dpi=110)
    return plt, fig, ax


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _colour(plt, i: int, n: int):
    """Series i of n: the default cycle up to 10 series, tab20 beyond (the default cycle repeats after 10)."""
    return f"C{i}" if n <= 10 else plt.cm.tab20(i % 20)


def _err(e: Estimate) -> tuple[float, float, float]:
    """(value, lower error, upper error) in %."""
    return 100 * e.value, 100 * max(0.0, e.value - e.low), 100 * max(0.0, e.high - e.value)


def tradeoff(points: Mapping[str, tuple[Estimate, Estimate]], title: str) -> bytes:
    """``{label: (erase Estimate, retain Estimate)}`` → erase (y) vs retain (x) with interval bars."""
    plt, fig, ax = _figure()
    for i, (label, (er, re)) in enumerate(points.items()):
        y, ylo, yhi = _err(er)
        x, xlo, xhi = _err(re)
        ax.errorbar(
            [x],
            [y],
            xerr=[[xlo], [xhi]],
            yerr=[[ylo], [yhi]],
            fmt="o" if label != "unedited" else "s",
            capsize=3,
            color=_colour(plt, i, len(points)),
            label=label,
        )
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("retain rate (%)  → better")
    ax.set_ylabel("erase rate (%)  → better")
    ax.set_xlim(-3, 103)
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    return _png(plt, fig)


def attack_curve(
    etas: Sequence[float],
    methods: Mapping[str, Sequence[Estimate | None]],
    unedited_rate: Sequence[Estimate],
    kept: Sequence[Estimate | None],
    headline: float,
    title: str,
) -> bytes:
    """Attack success (%) vs η per method (with interval bars), the unedited model's concept rate and its
    prompted-attributes-kept share (dashed), and a vertical line at the headline η."""
    plt, fig, ax = _figure(7.6, 4.0)  # wider: the legend sits beside the axes, never over a curve
    for i, (label, ests) in enumerate(methods.items()):
        pts = [(eta, e) for eta, e in zip(etas, ests, strict=True) if e is not None]
        if pts:
            v = [_err(e) for _, e in pts]
            ax.errorbar(
                [p[0] for p in pts],
                [x[0] for x in v],
                yerr=[[x[1] for x in v], [x[2] for x in v]],
                color=_colour(plt, i, len(methods)),
                marker="o",
                capsize=3,
                label=f"{label}: ASR",
            )
    ax.plot(etas, [100 * e.value for e in unedited_rate], "k--", marker="s", label="unedited: concept rate")
    if all(k is not None for k in kept):
        ax.plot(
            etas,
            [100 * k.value for k in kept if k is not None],
            ":",
            color="grey",
            marker="^",
            label="unedited: prompted attributes kept",
        )
    ax.axvline(headline, color="red", alpha=0.5, lw=1)
    ax.annotate(
        f"headline η = {headline:g}",
        (headline, 101),
        fontsize=8,
        color="red",
        va="bottom",
        ha="right" if headline >= max(etas) else "center",
    )  # never cut at the right edge
    ax.set_xlabel("η (concept-vector strength)")
    ax.set_ylabel("%")
    ax.set_ylim(-3, 110)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _png(plt, fig)


def sparsity_sweep(
    sparsity: Sequence[float],
    erase: Sequence[Estimate],
    drift: Sequence[Estimate],
    title: str,
    drift_label: str = "general prompts: judge agreement",
) -> bytes:
    """SPACE's sweep: erase rate and general-prompt agreement (%) vs sparsity (%)."""
    plt, fig, ax = _figure()
    x = [100 * s for s in sparsity]
    for est, label, c in ((erase, "erase rate", "C0"), (drift, drift_label, "C2")):
        ax.errorbar(
            x,
            [_err(e)[0] for e in est],
            yerr=[[_err(e)[1] for e in est], [_err(e)[2] for e in est]],
            marker="o",
            capsize=3,
            color=c,
            label=label,
        )
    ax.set_xlabel("cross-attention K/V sparsity (%)")
    ax.set_ylabel("%")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _png(plt, fig)


def concepts_curve(counts: Sequence[int], series: Mapping[str, Sequence[Estimate]], title: str) -> bytes:
    """Per-concept rates (%) vs the number of concepts erased at once; one line per series (method / metric)."""
    plt, fig, ax = _figure()
    for i, (label, est) in enumerate(series.items()):
        ax.errorbar(
            list(counts),
            [_err(e)[0] for e in est],
            yerr=[[_err(e)[1] for e in est], [_err(e)[2] for e in est]],
            marker="o",
            capsize=3,
            color=f"C{i}",
            label=label,
        )
    ax.set_xlabel("concepts erased at once")
    ax.set_ylabel("per-concept rate (%)")
    ax.set_xticks(list(counts))
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _png(plt, fig)


def clip_gap_curve(series: Mapping[str, tuple[Sequence[int], Sequence[Estimate]]], title: str) -> bytes:
    """MACE's many-concepts score (CLIP_R − CLIP_E, points; tinyworld's analogue) vs the number of concepts erased at
    once, one line per method with its bootstrap interval; 0 (the unedited model's level) dashed."""
    plt, fig, ax = _figure()
    for i, (label, (ks, est)) in enumerate(series.items()):
        ax.errorbar(
            list(ks),
            [e.value for e in est],
            yerr=[[max(0.0, e.value - e.low) for e in est], [max(0.0, e.high - e.value) for e in est]],
            marker="o",
            capsize=3,
            color=_colour(plt, i, len(series)),
            label=label,
        )
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("concepts erased at once (k)")
    ax.set_ylabel("CLIP_R − CLIP_E analogue (points)")
    ks_all = sorted({k for ks, _ in series.values() for k in ks})
    ax.set_xticks(ks_all)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _png(plt, fig)


def attack_matrix(
    cells: Mapping[str, Mapping[str, tuple[Estimate, Estimate | None]]],
    methods: Sequence[str],
    title: str,
) -> bytes:
    """One row per attack, one column per method: colour = ASR %, text = ASR [95 % interval] and, below, the
    unedited model's rate on the same attacked items (each method's attacked items may differ). ``cells[attack]
    [method]`` = (ASR, unedited rate); a missing cell is left grey."""
    import numpy as np

    attacks = list(cells)
    plt, fig, ax = _figure(1.6 + 1.35 * len(methods), 0.9 + 0.55 * len(attacks))
    grid = np.full((len(attacks), len(methods)), np.nan)
    for i, a in enumerate(attacks):
        for j, m in enumerate(methods):
            if m in cells[a]:
                grid[i, j] = 100 * cells[a][m][0].value
    cmap = plt.get_cmap("Reds").with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for i, a in enumerate(attacks):
        for j, m in enumerate(methods):
            if m not in cells[a]:
                continue
            asr, unedited = cells[a][m]
            text = f"{100 * asr.value:.0f} [{100 * asr.low:.0f}–{100 * asr.high:.0f}]"
            if unedited is not None:
                text += f"\n({100 * unedited.value:.0f})"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if grid[i, j] > 60 else "black")
    ax.set_xticks(range(len(methods)), list(methods), fontsize=8)
    ax.set_yticks(range(len(attacks)), attacks, fontsize=8)
    ax.tick_params(length=0)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="ASR %")
    ax.set_title("\n".join(textwrap.wrap(title, width=max(30, int(12 * len(methods) + 20)))), fontsize=9)
    return _png(plt, fig)
