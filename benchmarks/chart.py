"""A tiny bar-chart PNG writer (zlib + struct, no dependency) for benchmarks/suite.py.

``bar_chart(path, title, bars)`` draws one bar per (label, value, ok) on a log2 axis with a
line at 1.0; labels use a built-in 3x5 pixel font (upper case, digits, a few signs).
"""

from __future__ import annotations

import math
import struct
import zlib

# 3x5 glyphs, rows top to bottom, '#' = ink.
_FONT = {
    "A": "### #.# ### #.# #.#", "B": "##. #.# ##. #.# ##.", "C": "### #.. #.. #.. ###",
    "D": "##. #.# #.# #.# ##.", "E": "### #.. ##. #.. ###", "F": "### #.. ##. #.. #..",
    "G": "### #.. #.# #.# ###", "H": "#.# #.# ### #.# #.#", "I": "### .#. .#. .#. ###",
    "J": "..# ..# ..# #.# ###", "K": "#.# #.# ##. #.# #.#", "L": "#.. #.. #.. #.. ###",
    "M": "#.# ### ### #.# #.#", "N": "##. #.# #.# #.# #.#", "O": "### #.# #.# #.# ###",
    "P": "### #.# ### #.. #..", "Q": "### #.# #.# ### ..#", "R": "##. #.# ##. #.# #.#",
    "S": "### #.. ### ..# ###", "T": "### .#. .#. .#. .#.", "U": "#.# #.# #.# #.# ###",
    "V": "#.# #.# #.# #.# .#.", "W": "#.# #.# ### ### #.#", "X": "#.# #.# .#. #.# #.#",
    "Y": "#.# #.# .#. .#. .#.", "Z": "### ..# .#. #.. ###", "0": "### #.# #.# #.# ###",
    "1": ".#. ##. .#. .#. ###", "2": "### ..# ### #.. ###", "3": "### ..# ### ..# ###",
    "4": "#.# #.# ### ..# ..#", "5": "### #.. ### ..# ###", "6": "### #.. ### #.# ###",
    "7": "### ..# ..# ..# ..#", "8": "### #.# ### #.# ###", "9": "### #.# ### ..# ###",
    ".": "... ... ... ... .#.", ",": "... ... ... .#. #..", "-": "... ... ### ... ...", "/": "..# ..# .#. #.. #..",
    ":": "... .#. ... .#. ...", ">": "#.. .#. ..# .#. #..", "<": "..# .#. #.. .#. ..#",
    "=": "... ### ... ### ...", "(": ".#. #.. #.. #.. .#.", ")": ".#. ..# ..# ..# .#.",
    "%": "#.# ..# .#. #.. #.#", " ": "... ... ... ... ...", "?": "### ..# .## ... .#.",
}  # fmt: skip

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREY = (200, 200, 200)
GREEN = (60, 160, 80)
RED = (210, 60, 50)


class Canvas:
    def __init__(self, w: int, h: int) -> None:
        self.w, self.h = w, h
        self.px = bytearray(bytes(WHITE) * (w * h))

    def rect(self, x0: int, y0: int, x1: int, y1: int, rgb: tuple[int, int, int]) -> None:
        x0, x1 = max(0, min(x0, x1)), min(self.w, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(self.h, max(y0, y1))
        row = bytes(rgb) * (x1 - x0)
        for y in range(y0, y1):
            i = (y * self.w + x0) * 3
            self.px[i : i + len(row)] = row

    def text(self, x: int, y: int, s: str, scale: int = 2, rgb=BLACK) -> None:
        for ch in s.upper():
            rows = _FONT.get(ch, _FONT["?"]).split()
            for r, bits in enumerate(rows):
                for c, b in enumerate(bits):
                    if b == "#":
                        self.rect(
                            x + c * scale,
                            y + r * scale,
                            x + (c + 1) * scale,
                            y + (r + 1) * scale,
                            rgb,
                        )
            x += 4 * scale

    def png(self) -> bytes:
        raw = b"".join(
            b"\x00" + bytes(self.px[y * self.w * 3 : (y + 1) * self.w * 3]) for y in range(self.h)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            return (
                struct.pack(">I", len(data))
                + kind
                + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
            )

        ihdr = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def text_width(s: str, scale: int = 2) -> int:
    return 4 * scale * len(s)


def bar_chart(
    path: str,
    title: str,
    bars: list[tuple[str, str, float | None, bool | None]],
    lo: float = 0.125,
    hi: float = 64.0,
) -> None:
    """One bar per (label, caption, value, ok) on a log2 axis from ``lo`` to ``hi`` with the
    1.0 line; green when ok, red when not, grey when unknown (value None: no bar)."""
    bw, gap, left, top, plot_h = 96, 28, 70, 60, 300
    w = left + len(bars) * (bw + gap) + 20
    h = top + plot_h + 70
    cv = Canvas(max(w, text_width(title) + 40), h)
    cv.text(20, 16, title)
    span = math.log2(hi) - math.log2(lo)

    def ypos(v: float) -> int:
        v = min(max(v, lo), hi)
        return top + plot_h - round((math.log2(v) - math.log2(lo)) / span * plot_h)

    v = lo
    while v <= hi:
        y = ypos(v)
        cv.rect(left - 4, y, cv.w - 10, y + 1, GREY)
        lab = f"{v:g}"
        cv.text(left - 8 - text_width(lab), y - 5, lab)
        v *= 2
    y1 = ypos(1.0)
    cv.rect(left - 4, y1 - 1, cv.w - 10, y1 + 2, BLACK)
    for i, (label, caption, value, ok) in enumerate(bars):
        x = left + gap // 2 + i * (bw + gap)
        if value is not None and value > 0:
            color = GREY if ok is None else (GREEN if ok else RED)
            yv = ypos(value)
            cv.rect(x, min(yv, y1), x + bw, max(yv, y1) + 1, color)
        cv.text(x + (bw - text_width(label)) // 2, top + plot_h + 12, label)
        cv.text(x + (bw - text_width(caption)) // 2, top + plot_h + 34, caption)
    with open(path, "wb") as f:
        f.write(cv.png())
