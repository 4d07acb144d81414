"""analysis.lib.document: typed blocks rendered to markdown (tables by study.lib.cli.render_table) and HTML."""

import base64

import pytest

from analysis.lib.document import (
    Alert,
    Code,
    Document,
    Figure,
    Heading,
    Paragraph,
    Table,
    render_html,
    render_markdown,
    render_text,
    write,
)
from study.lib.cli import render_table

PNG = b"\x89PNG\r\n\x1a\nnot really an image"
DOC = Document(
    "Title <1>",
    (
        Heading("Part"),
        Paragraph("a & b"),
        Alert("at the edge"),
        Table(["x", "y"], [["1", "<2>"], ["3", "4"]]),
        Heading("Sub", 3),
        Code("print(1)"),
        Figure("fig", "A figure", PNG),
    ),
)


def test_markdown():
    assert render_markdown(DOC) == "\n".join(
        [
            "# Title <1>",
            "",
            "## Part",
            "",
            "a & b",
            "",
            "> **Warning:** at the edge",
            "",
            render_table(["x", "y"], [["1", "<2>"], ["3", "4"]], markdown=True).rstrip("\n"),
            "",
            "### Sub",
            "",
            "```",
            "print(1)",
            "```",
            "",
            "![A figure](figures/fig.png)",
            "",
        ]
    )
    assert render_markdown(Document("", (Paragraph("p"),))) == "p\n"


def test_a_table_without_rows_renders_its_header():
    assert render_table(["where", "n"], []) == "where  n\n"
    assert "where" in render_text(Document("t", (Table(["where", "n"], []),)))


def test_html_escapes_and_embeds_the_png_from_memory():
    page = render_html(DOC, interactive=False)
    assert "<title>Title &lt;1&gt;</title>" in page and "<p>a &amp; b</p>" in page
    assert "<td>&lt;2&gt;</td>" in page and "<h3>Sub</h3>" in page
    assert f'src="data:image/png;base64,{base64.b64encode(PNG).decode()}"' in page
    assert "<script>" not in page


def test_blocks_are_frozen():
    table = Table(["x"], [["1"]])
    assert table.rows == (("1",),)
    with pytest.raises(AttributeError):
        table.rows = ()  # type: ignore[misc]


def test_write_puts_each_figure_once_beside_the_markdown(tmp_path):
    written = write(DOC, tmp_path, interactive=False)
    assert written == [tmp_path / "figures" / "fig.png", tmp_path / "report.md", tmp_path / "index.html"]
    assert (tmp_path / "figures" / "fig.png").read_bytes() == PNG
    assert (tmp_path / "report.md").read_text() == render_markdown(DOC)
