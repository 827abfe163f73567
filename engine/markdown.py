"""Markdown tables and self-contained HTML pages, written one way for every report (the run and
combined reports of engine/report.py, the lens report of engine/lens_report.py).

Cells are written as given (a caller escapes what Markdown would read as syntax: `escape`); None
is a blank cell (a totals row's empty columns). HTML comes from markdown-it (CommonMark with tables, raw HTML off),
with every figure embedded as a data URI so the page can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Iterable

from .claims import VERDICT_COLORS

# The look every HTML page shares; a page adds its own rules after these.
BASE_CSS = (
    "body{{font-family:sans-serif;max-width:{width}px;margin:2em auto;line-height:1.45;color:#222}}"
    "table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px}}"
    "img{{max-width:100%}}code{{background:#f3f3f3;padding:0 3px}}"
)
# Verdicts in colour (class v-supported, v-not-supported, ...), the text kept for print and screen readers
VERDICT_CSS = "".join(f".v-{v.replace(' ', '-')}{{color:{c['text']}}}" for v, c in VERDICT_COLORS.items())


def escape(text) -> str:
    """Text as Markdown shows it literally in a table cell: `alpha*lambda` is a product, not
    emphasis, and a pipe is no column break."""
    return str(text).replace("*", "\\*").replace("|", "\\|")


def row(cells: Iterable) -> str:
    """One table row: | a | b |."""
    return "|" + "|".join(" " if c is None else f" {c} " for c in cells) + "|"


def table(header: Iterable, rows: Iterable[Iterable]) -> list[str]:
    """A Markdown table's lines: the header, its rule, one line per row."""
    header = list(header)
    return [row(header), "|" + "---|" * len(header)] + [row(r) for r in rows]


def render(text: str) -> str:
    """Markdown -> an HTML fragment (CommonMark and tables; raw HTML in the text is shown, not run)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def embed_image(line: str, folder: Path) -> str:
    """A Markdown image line `![alt](file.png)` with the file (relative to `folder`) as a data URI, its
    colours reduced to a palette of 256 (`compact_png`): the PNG beside the report keeps them all."""
    if not line.startswith("!["):
        return line
    alt, src = line[2 : line.index("](")], line[line.index("](") + 2 : -1]
    data = base64.b64encode(compact_png((Path(folder) / src).read_bytes())).decode()
    return f"![{alt}](data:image/png;base64,{data})"


def compact_png(png: bytes) -> bytes:
    """The same image as an optimized PNG with an adaptive palette of 256 colours: about a quarter of the
    bytes for these line and scatter plots (a self-contained report embeds every figure, and a tracked file
    must stay under 5 MiB), with nothing visible lost; the original where that is not smaller."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        out = io.BytesIO()
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            out, "PNG", optimize=True
        )
    return out.getvalue() if out.tell() < len(png) else png


def page(title: str, body: str, css: str = "", width: int = 1100) -> str:
    """A whole self-contained HTML document around an HTML fragment."""
    style = BASE_CSS.format(width=width) + css
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{style}</style></head><body>\n{body}</body></html>\n"
    )
