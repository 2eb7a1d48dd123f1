"""The picture of a fine-tuning comparison (``OUT/comparison.png``): validation Dice against iterations and against
training time, one colour per arm (thick line: mean over seeds; light lines: each seed), and a legend line per arm
with its held-out Dice.

Drawn with Pillow, the repository's PNG library (``gvsl.train.panels``); no plotting package is a dependency.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from gvsl.atomic_files import write_atomically

# Tableau's ten colours (RGB), one per arm in order.
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
PANEL_SIZE = (560, 360)  # pixels of each panel's plotting area
MARGIN = 70  # around and between the plotting areas, for ticks and axis titles
TITLE_HEIGHT = 68
LEGEND_LINE = 22
FONT_SIZE = 14
TIME_UNITS = ((120.0, 1.0, "s"), (7200.0, 60.0, "min"), (math.inf, 3600.0, "h"))  # below, divide by, name

Point = tuple[float, float, float]  # (iteration, training seconds, validation Dice)


@dataclass(frozen=True)
class ArmCurves:
    """One arm's validation curves, one list of points per seed, and its legend text."""

    label: str
    seeds: Sequence[Sequence[Point]]


def mean_curve(seeds: Sequence[Sequence[Point]]) -> list[Point]:
    """The mean over seeds of (iteration, seconds, Dice) at each iteration that any seed validated at, in order."""
    by_iteration: dict[float, list[Point]] = {}
    for curve in seeds:
        for point in curve:
            by_iteration.setdefault(point[0], []).append(point)
    return [tuple(sum(p[k] for p in points) / len(points) for k in range(3))
            for _, points in sorted(by_iteration.items())]


def nice_ticks(high: float, count: int = 5, integer: bool = False) -> list[float]:
    """Ticks 0, s, 2s, ... up to the first at or above ``high``, s a 1, 2, 2.5 or 5 times a power of ten (a whole
    number 1, 2, 5, 10, 20, 25, ... when ``integer``)."""
    raw = max(high, 1.0 if integer else 1e-9) / count
    power = 10.0 ** math.floor(math.log10(raw))
    multiples = (1.0, 2.0, 5.0, 10.0) if integer and power < 10 else (1.0, 2.0, 2.5, 5.0, 10.0)
    step = max(next(m * power for m in multiples if m * power >= raw), 1.0 if integer else 0.0)
    return [n * step for n in range(int(math.ceil(high / step - 1e-9)) + 1)]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only its small bitmap font
        return ImageFont.load_default()


def _lighter(colour: tuple[int, int, int], keep: float = 0.45) -> tuple[int, int, int]:
    return tuple(int(round(255 - keep * (255 - c))) for c in colour)


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e5 else f"{value:.3g}"


def _panel(draw, font, origin: tuple[int, int], title: str, x_title: str, x_ticks: list[float], scale: float,
           x_index: int, arms: Sequence[ArmCurves]) -> None:
    """One panel, its plotting area's top-left at ``origin``: Dice (0..1) against point[x_index] / ``scale``."""
    left, top = origin
    width, height = PANEL_SIZE
    x_high = x_ticks[-1] or 1.0

    def xy(point: Point) -> tuple[float, float]:
        return left + width * point[x_index] / scale / x_high, top + height * (1.0 - point[2])

    for tick in x_ticks:
        x = left + width * tick / x_high
        draw.line([(x, top), (x, top + height)], fill=(232, 232, 232))
        draw.text((x, top + height + 6), _label(tick), fill=(0, 0, 0), font=font, anchor="ma")
    for n in range(6):
        y = top + height * (1.0 - n / 5)
        draw.line([(left, y), (left + width, y)], fill=(232, 232, 232))
        draw.text((left - 6, y), f"{n / 5:.1f}", fill=(0, 0, 0), font=font, anchor="rm")
    draw.rectangle([left, top, left + width, top + height], outline=(0, 0, 0))
    draw.text((left + width / 2, top - 8), title, fill=(0, 0, 0), font=font, anchor="md")
    draw.text((left + width / 2, top + height + 26), x_title, fill=(0, 0, 0), font=font, anchor="ma")
    for n, arm in enumerate(arms):
        colour = PALETTE[n % len(PALETTE)]
        for curve in arm.seeds:
            if len(curve) > 1:
                draw.line([xy(p) for p in curve], fill=_lighter(colour), width=1)
        mean = [xy(p) for p in mean_curve(arm.seeds)]
        if len(mean) > 1:
            draw.line(mean, fill=colour, width=3, joint="curve")
        for x, y in mean:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)


def draw_comparison_chart(arms: Sequence[ArmCurves], title: str):
    """The two panels (against iterations, against training time) and the legend, as an RGB Pillow image."""
    from PIL import Image, ImageDraw

    font = _font(FONT_SIZE)
    width = 3 * MARGIN + 2 * PANEL_SIZE[0]
    height = TITLE_HEIGHT + PANEL_SIZE[1] + MARGIN + LEGEND_LINE * len(arms) + 16
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((width / 2, 12), title, fill=(0, 0, 0), font=font, anchor="ma")
    points = [p for arm in arms for curve in arm.seeds for p in curve]
    most_iterations = max((p[0] for p in points), default=1.0)
    most_seconds = max((p[1] for p in points), default=1.0)
    _, unit_s, unit = next(u for u in TIME_UNITS if most_seconds < u[0])
    top = TITLE_HEIGHT
    _panel(draw, font, (MARGIN, top), "validation Dice against iterations", "iteration",
           nice_ticks(most_iterations, integer=True), 1.0, 0, arms)
    _panel(draw, font, (2 * MARGIN + PANEL_SIZE[0], top), "validation Dice against training time",
           f"training time ({unit})", nice_ticks(most_seconds / unit_s), unit_s, 1, arms)
    y = top + PANEL_SIZE[1] + MARGIN
    for n, arm in enumerate(arms):
        colour = PALETTE[n % len(PALETTE)]
        draw.line([(MARGIN, y + 8), (MARGIN + 28, y + 8)], fill=colour, width=3)
        draw.text((MARGIN + 36, y + 8), arm.label, fill=(0, 0, 0), font=font, anchor="lm")
        y += LEGEND_LINE
    return image


def write_comparison_chart(arms: Sequence[ArmCurves], title: str, path: str | os.PathLike) -> Path:
    """``draw_comparison_chart`` saved as a PNG file, atomically."""
    buffer = io.BytesIO()
    draw_comparison_chart(arms, title).save(buffer, format="PNG")
    return write_atomically(path, lambda file: file.write(buffer.getvalue()))
