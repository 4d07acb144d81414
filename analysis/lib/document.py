"""A small typed document model: blocks as frozen dataclasses, rendered to markdown and to HTML.

A ``Document`` is a title and a sequence of blocks (``Heading``, ``Paragraph``, ``Alert``,
``Code``, ``Table``, ``Figure``). ``render_markdown`` and ``render_html`` turn it into text;
``write`` puts it in a folder: every figure's PNG once under ``figures/``, ``report.md`` (linking
those PNGs) and ``index.html`` (self-contained: the PNGs embedded from the bytes in memory, plotly.js
inline when interactive). Markdown tables go through ``study.lib.cli.render_table``, the one table
renderer; HTML tables have their own renderer here.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.lib.cli import render_table


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2  # 2 or 3; level 1 is the document's title


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Alert:
    """A warning the reader should not miss."""

    text: str


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def __init__(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        object.__setattr__(self, "header", tuple(header))
        object.__setattr__(self, "rows", tuple(tuple(r) for r in rows))


@dataclass(frozen=True)
class Figure:
    """A figure as PNG bytes (written once, as ``figures/NAME.png``), with an optional interactive
    plotly version."""

    name: str  # file stem under figures/, and the HTML id
    title: str
    png: bytes = field(repr=False)
    plotly: Any = field(default=None, repr=False, compare=False)  # a plotly Figure


Block = Heading | Paragraph | Alert | Code | Table | Figure


@dataclass(frozen=True)
class Document:
    title: str
    blocks: tuple[Block, ...] = ()

    def figures(self) -> list[Figure]:
        return [b for b in self.blocks if isinstance(b, Figure)]


# --- small text helpers shared by the documents' builders --------------------------------------
def cell(value: Any) -> str:
    """A value as a table cell: ``-`` for None, 4 significant digits for a float."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# --- markdown ------------------------------------------------------------------------------------
def _markdown(block: Block) -> list[str]:
    match block:
        case Heading(text, level):
            return [f"{'#' * level} {text}", ""]
        case Paragraph(text):
            return [text, ""]
        case Alert(text):
            return [f"> **Warning:** {text}", ""]
        case Code(text):
            return ["```", text, "```", ""]
        case Table(header, rows):
            return [render_table(list(header), [list(r) for r in rows], markdown=True).rstrip("\n"), ""]
        case Figure(name, title):
            return [f"![{title}](figures/{name}.png)", ""]
    raise TypeError(f"not a block: {block!r}")


def render_markdown(document: Document) -> str:
    """The document as markdown (without a ``# title`` line when the title is empty); figures
    link to ``figures/NAME.png``."""
    out = [f"# {document.title}", ""] if document.title else []
    for block in document.blocks:
        out += _markdown(block)
    return "\n".join(out)


# --- HTML ----------------------------------------------------------------------------------------
CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
.scroll { overflow-x: auto; }
.warn { background: #fff4e0; border-left: 4px solid #e69500; padding: 0.5em 0.8em; margin: 0.6em 0; }
img { max-width: 100%; border: 1px solid #ddd; }
details { margin: 0.4em 0 1.4em; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
"""


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    esc = html.escape
    return (
        '<div class="scroll"><table><thead><tr>'
        + "".join(f"<th>{esc(h)}</th>" for h in header)
        + "</tr></thead><tbody>"
        + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
        + "</tbody></table></div>"
    )


def _html(block: Block, *, interactive: bool) -> str:
    esc = html.escape
    match block:
        case Heading(text, level):
            return f"<h{level}>{esc(text)}</h{level}>"
        case Paragraph(text):
            return f"<p>{esc(text)}</p>"
        case Alert(text):
            return f'<div class="warn"><strong>Warning:</strong> {esc(text)}</div>'
        case Code(text):
            return f"<pre>{esc(text)}</pre>"
        case Table(header, rows):
            return html_table(header, rows)
        case Figure(name, title, png, plotly):
            data = base64.b64encode(png).decode("ascii")
            out = (
                f'<figure id="{name}-figure"><img src="data:image/png;base64,{data}" '
                f'alt="{esc(title)}"><figcaption>{esc(title)}</figcaption></figure>'
            )
            if interactive and plotly is not None:
                div = plotly.to_html(full_html=False, include_plotlyjs=False, div_id=f"{name}-plotly")
                out += f"<details><summary>interactive version</summary>{div}</details>"
            return out
    raise TypeError(f"not a block: {block!r}")


def render_html(document: Document, *, interactive: bool) -> str:
    """A self-contained page: PNGs embedded, and with ``interactive`` the plotly versions under
    them with plotly.js inline (it opens offline, no CDN)."""
    esc = html.escape
    body = [f"<h1>{esc(document.title)}</h1>"]
    body += [_html(block, interactive=interactive) for block in document.blocks]
    script = ""
    if interactive:
        from plotly.offline import get_plotlyjs

        script = f"<script>{get_plotlyjs()}</script>"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(document.title)}</title><style>{CSS}</style>{script}</head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


# --- files ---------------------------------------------------------------------------------------
def write_png(figure: Figure, folder: Path) -> Path:
    """``folder/NAME.png``: the figure's PNG bytes, written once."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{figure.name}.png"
    path.write_bytes(figure.png)
    return path


def write_markdown(document: Document, out: Path) -> list[Path]:
    """``out/figures/NAME.png`` (each figure once) and ``out/report.md``; returns the paths, figures
    first (a committed results folder: no HTML copy of the figures)."""
    written = [write_png(figure, out / "figures") for figure in document.figures()]
    (out / "report.md").write_text(render_markdown(document), encoding="utf-8")
    return [*written, out / "report.md"]


def render_text(document: Document) -> str:
    """The document for a terminal: headings as lines, tables as aligned columns, figures by name."""
    out = [document.title, ""] if document.title else []
    for block in document.blocks:
        match block:
            case Heading(text, _):
                out += [text, ""]
            case Paragraph(text) | Alert(text) | Code(text):
                out += [text.replace("**", ""), ""]
            case Table(header, rows):
                out += [render_table(list(header), [list(r) for r in rows], indent="  ").rstrip("\n"), ""]
            case Figure(name, title):
                out += [f"[figure {name}: {title}]", ""]
    return "\n".join(out)


def write(document: Document, out: Path, *, interactive: bool) -> list[Path]:
    """``out/figures/NAME.png`` (each figure once), ``out/report.md`` and ``out/index.html``;
    returns the paths written, figures first."""
    written = [write_png(figure, out / "figures") for figure in document.figures()]
    for name, text in (
        ("report.md", render_markdown(document)),
        ("index.html", render_html(document, interactive=interactive)),
    ):
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written
