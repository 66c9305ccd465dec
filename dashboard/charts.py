"""Charts drawn on the server as inline SVG: no script, no CDN, prints as it shows. Each chart
scales to its box (viewBox, width 100 %), so it fits 1,024 px as well as 1,366 px. Labels are
whatever the caller gives, already translated; the SVG text is escaped here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 14, 40
COLOURS = ["#264b5d", "#d9822b", "#2e7d32", "#8e44ad", "#c62828"]


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[float | None]  # one per x label; None where there is nothing to show


def _frame(title: str, body: list[str], legend: list[tuple[str, str]]) -> SafeString:
    keys = "".join(
        f'<span class="key"><i style="background:{colour}"></i>{escape(label)}</span>'
        for label, colour in legend
    )
    svg = (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
        f'aria-label="{escape(title)}" preserveAspectRatio="xMidYMid meet">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )
    return mark_safe(f'<figure class="chart-box">{svg}<figcaption>{keys}</figcaption></figure>')  # noqa: S308 - every text above is escaped


def _axes(x_labels: Sequence[str], top: float, unit: str) -> list[str]:
    plot_h = HEIGHT - TOP - BOTTOM
    parts = [
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" class="axis"/>',
        f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" '
        f'y2="{HEIGHT - BOTTOM}" class="axis"/>',
    ]
    for step in range(5):
        value = top * step / 4
        y = HEIGHT - BOTTOM - plot_h * step / 4
        text = f"{value * 100:.0f}%" if unit == "%" else f"{value:,.0f}"
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" class="grid"/>'
        )
        parts.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{text}</text>')
    slot = (WIDTH - LEFT - RIGHT) / max(len(x_labels), 1)
    every = max(1, len(x_labels) // 8)  # at most ~8 labels, so they never overlap
    for i, label in enumerate(x_labels):
        if i % every == 0:
            x = LEFT + slot * (i + 0.5)
            parts.append(
                f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
                f"{escape(label)}</text>"
            )
    return parts


def line_chart(title: str, x_labels: Sequence[str], series: Sequence[Series]) -> SafeString:
    """Rates (0–1) over time, one line per series; a point per value that is not None."""
    values = [v for s in series for v in s.values if v is not None]
    top = max(1.0 if values and max(values) > 0.5 else 0.5, max(values, default=0))
    plot_h = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(len(x_labels), 1)
    body = _axes(x_labels, top, "%")
    legend = []
    for n, one in enumerate(series):
        colour = COLOURS[n % len(COLOURS)]
        legend.append((one.label, colour))
        points = [
            (LEFT + slot * (i + 0.5), HEIGHT - BOTTOM - plot_h * v / top, v)
            for i, v in enumerate(one.values)
            if v is not None
        ]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in points)
            body.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
        for x, y, v in points:
            body.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}" '
                f'data-value="{v:.4f}"><title>{escape(one.label)} {v * 100:.1f}%</title></circle>'
            )
    return _frame(title, body, legend)


def bar_chart(
    title: str, x_labels: Sequence[str], series: Sequence[Series], *, unit: str = ""
) -> SafeString:
    """Counts (or rates with unit="%") side by side per x label, one colour per series."""
    values = [v for s in series for v in s.values if v is not None]
    top = max(values, default=0) or 1
    if unit == "%":
        top = max(top, 0.1)
    plot_h = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(len(x_labels), 1)
    width = slot * 0.8 / max(len(series), 1)
    body = _axes(x_labels, top, unit)
    legend = []
    for n, one in enumerate(series):
        colour = COLOURS[n % len(COLOURS)]
        legend.append((one.label, colour))
        for i, v in enumerate(one.values):
            if not v:
                continue
            h = plot_h * v / top
            x = LEFT + slot * i + slot * 0.1 + width * n
            shown = f"{v * 100:.1f}%" if unit == "%" else f"{v:,.0f}"
            body.append(
                f'<rect x="{x:.1f}" y="{HEIGHT - BOTTOM - h:.1f}" width="{width:.1f}" '
                f'height="{h:.1f}" fill="{colour}" data-value="{v}">'
                f"<title>{escape(one.label)} {escape(x_labels[i])}: {shown}</title></rect>"
            )
    return _frame(title, body, legend)
