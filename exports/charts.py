"""Charts as inline SVG for the run report: no JavaScript, no fonts or files to fetch, so the
report opens offline and survives being mailed around. Each function takes plain numbers
and returns one ``<svg>`` element; labels are escaped."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

PALETTE = ["#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777"]
GREY = "#9ca3af"
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value`` whose quarters are round too."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 1.2, 1.6, 2, 2.4, 3.2, 4, 6, 8, 10):
        if step * power >= value * (1 - 1e-9):
            return step * power
    return 10 * power


def _legend(body: list[str], names: list[str], x: float, y: float = 6) -> None:
    """Colour keys left to right, each as wide as its name."""
    for s, name in enumerate(names):
        color = PALETTE[s % len(PALETTE)]
        body.append(f'<rect x="{x:.1f}" y="{y}" width="12" height="12" rx="2" fill="{color}"/>')
        body.append(_text(x + 16, y + 10, name, 12))
        x += 34 + 6.5 * len(name)


def fmt(value: float, percent: bool = False) -> str:
    """A short human number: 1.2k, 3.4M, 12%, 0.42."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if percent:
        return f"{100 * value:.1f}%" if abs(value) < 0.1 else f"{100 * value:.0f}%"
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.1f}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.0f}k"
    if magnitude >= 1e3:
        return f"{value / 1e3:.1f}k"
    if magnitude >= 10 or float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.2f}"


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'style="max-width:{width}px;{FONT}" role="img" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>" + "".join(body) + "</svg>"
    )


def _text(
    x: float, y: float, text: str, size: int = 12, anchor: str = "start", color: str = "#374151", **extra: str
) -> str:
    attrs = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in extra.items())
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{color}"{attrs}>'
        f"{escape(str(text))}</text>"
    )


def _empty(title: str, width: int = 640, height: int = 80) -> str:
    return _svg(width, height, [_text(width / 2, height / 2, "no data yet", 14, "middle", GREY)], title)


def hbar(
    labels: Sequence[str],
    values: Sequence[float],
    title: str,
    notes: Sequence[str] | None = None,
    percent: bool = False,
    width: int = 640,
    color: str = PALETTE[0],
) -> str:
    """Horizontal bars, one per label, the value at the bar's end and an optional note after it."""
    if not labels:
        return _empty(title, width)
    row, left, right = 28, min(220, 12 + 7 * max(len(str(label)) for label in labels)), 170
    height = row * len(labels) + 16
    top = max(values) if values else 0
    scale = (width - left - right) / (top if top > 0 else 1)
    body = []
    for i, (label, value) in enumerate(zip(labels, values)):
        y = 8 + i * row
        w = max(1.0, value * scale) if value else 0
        body.append(_text(left - 8, y + 17, label, 12, "end"))
        body.append(f'<rect x="{left}" y="{y + 4}" width="{w:.1f}" height="{row - 10}" rx="3" fill="{color}"/>')
        note = f"  {notes[i]}" if notes and notes[i] else ""
        body.append(_text(left + w + 6, y + 17, fmt(value, percent) + note, 12))
    return _svg(width, height, body, title)


def funnel(steps: Sequence[str], counts: Sequence[float], title: str, width: int = 640) -> str:
    """Funnel bars with the share kept from the previous step and the drop-off between steps."""
    if not steps or not counts or counts[0] == 0:
        return _empty(title, width)
    row, left = 54, 130
    height = row * len(steps) + 8
    usable = width - left - 20
    body = []
    for i, (step, count) in enumerate(zip(steps, counts)):
        y = 6 + i * row
        w = max(2.0, usable * count / counts[0])
        x = left + (usable - w) / 2
        shade = PALETTE[0] if i < len(steps) - 1 else PALETTE[2]
        body.append(_text(left - 10, y + 21, step.replace("_", " "), 13, "end"))
        body.append(f'<rect x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="28" rx="4" fill="{shade}"/>')
        label = f"{fmt(count)}  ({fmt(count / counts[0], percent=True)} of the first step)"
        body.append(_text(left + usable / 2, y + 23, label, 12, "middle", "#ffffff" if w > 260 else "#111827"))
        if i + 1 < len(counts):
            kept = counts[i + 1] / count if count else 0.0
            body.append(
                _text(
                    left + usable / 2,
                    y + 47,
                    f"↓ {fmt(kept, percent=True)} continue, {fmt(1 - kept, percent=True)} drop off",
                    11,
                    "middle",
                    "#dc2626",
                )
            )
    return _svg(width, height, body, title)


def _axes(body: list[str], left: int, top: int, plot_w: int, plot_h: int, y_max: float, percent: bool) -> None:
    for k in range(5):
        value = y_max * k / 4
        y = top + plot_h - plot_h * k / 4
        body.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        body.append(_text(left - 6, y + 4, fmt(value, percent), 11, "end", "#6b7280"))


def line(
    x_labels: Sequence[str],
    series: dict[str, Sequence[float]],
    title: str,
    percent: bool = False,
    width: int = 640,
    height: int = 240,
) -> str:
    """Lines over an ordered axis (dates); a legend names each series."""
    if not x_labels or not series:
        return _empty(title, width)
    left, top, bottom = 56, 28, 34
    plot_w, plot_h = width - left - 16, height - top - bottom
    finite = [v for values in series.values() for v in values if v is not None and math.isfinite(v)]
    y_max = _nice_max(max(finite) if finite else 1.0)
    body: list[str] = []
    _axes(body, left, top, plot_w, plot_h, y_max, percent)
    n = len(x_labels)
    step = plot_w / max(1, n - 1)
    for k in sorted({0, n - 1, *range(0, n, max(1, n // 6))}):
        body.append(_text(left + k * step, height - 12, x_labels[k], 11, "middle", "#6b7280"))
    for s, (_name, values) in enumerate(series.items()):
        color = PALETTE[s % len(PALETTE)]
        points = " ".join(
            f"{left + i * step:.1f},{top + plot_h - plot_h * (v / y_max):.1f}"
            for i, v in enumerate(values)
            if v is not None and math.isfinite(v)
        )
        body.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
    _legend(body, list(series), left + 8)
    return _svg(width, height, body, title)


def columns(
    labels: Sequence[str],
    series: dict[str, Sequence[float]],
    title: str,
    percent: bool = False,
    width: int = 640,
    height: int = 240,
    reference: float | None = None,
    reference_label: str = "",
) -> str:
    """Vertical bars, grouped when there is more than one series (model beside baseline)."""
    if not labels or not series:
        return _empty(title, width)
    left, top, bottom = 56, 28, 40
    plot_w, plot_h = width - left - 16, height - top - bottom
    finite = [v for values in series.values() for v in values if v is not None and math.isfinite(v)]
    y_max = _nice_max(max(finite + ([reference] if reference else [])) if finite else 1.0)
    body: list[str] = []
    _axes(body, left, top, plot_w, plot_h, y_max, percent)
    group = plot_w / len(labels)
    bar = min(48.0, group * 0.8 / len(series))
    every = max(1, math.ceil(len(labels) / 12))
    for i, label in enumerate(labels):
        x0 = left + i * group + (group - bar * len(series)) / 2
        for s, values in enumerate(series.values()):
            value = values[i]
            if value is None or not math.isfinite(value):
                continue
            h = plot_h * value / y_max
            body.append(
                f'<rect x="{x0 + s * bar:.1f}" y="{top + plot_h - h:.1f}" width="{max(1.0, bar - 2):.1f}" '
                f'height="{h:.1f}" rx="2" fill="{PALETTE[s % len(PALETTE)]}"/>'
            )
        if i % every == 0:
            body.append(_text(left + i * group + group / 2, height - 22, label, 11, "middle", "#6b7280"))
    if reference is not None and math.isfinite(reference):
        y = top + plot_h - plot_h * reference / y_max
        body.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#111827" stroke-dasharray="5 4"/>'
        )
        body.append(_text(left + plot_w - 4, y - 5, reference_label, 11, "end", "#111827"))
    if len(series) > 1:
        _legend(body, list(series), left + 8)
    return _svg(width, height, body, title)


def calibration(curves: dict[str, Sequence[tuple[float, float]]], title: str, size: int = 320) -> str:
    """Observed against predicted rate per bin, with the diagonal of perfect calibration."""
    points = [p for curve in curves.values() for p in curve]
    if not points:
        return _empty(title, size, 80)
    left, top, _bottom = 48, 28, 36
    plot = size - left - 12
    top_value = _nice_max(max(max(p, o) for p, o in points))
    body: list[str] = []
    for k in range(5):
        frac = k / 4
        y = top + plot - plot * frac
        x = left + plot * frac
        body.append(f'<line x1="{left}" x2="{left + plot}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        body.append(_text(left - 6, y + 4, fmt(top_value * frac, True), 10, "end", "#6b7280"))
        body.append(_text(x, top + plot + 14, fmt(top_value * frac, True), 10, "middle", "#6b7280"))
    body.append(
        f'<line x1="{left}" y1="{top + plot}" x2="{left + plot}" y2="{top}" stroke="{GREY}" stroke-dasharray="4 4"/>'
    )
    body.append(_text(left + plot / 2, top + plot + 30, "predicted", 11, "middle", "#6b7280"))
    body.append(
        _text(12, top + plot / 2, "observed", 11, "middle", "#6b7280", transform=f"rotate(-90 12 {top + plot / 2})")
    )
    for s, (_name, curve) in enumerate(curves.items()):
        color = PALETTE[s % len(PALETTE)]
        coords = [(left + plot * p / top_value, top + plot - plot * o / top_value) for p, o in curve]
        body.append(
            f'<polyline points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in coords)}" fill="none" stroke="{color}" '
            'stroke-width="2"/>'
        )
        body += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in coords]
    _legend(body, list(curves), left + 4)
    return _svg(size, size + 20, body, title)
