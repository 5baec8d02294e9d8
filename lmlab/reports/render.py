"""Reports as blocks, rendered as Markdown or HTML; numbers formatted the same in every language.

A report is a list of blocks (headings, paragraphs, lists, tables, images, code), so both formats
say exactly the same thing. In the strings, `backticks` mark code and ``**`` bold in both formats.
"""
from __future__ import annotations

import html
import math
import re
from typing import Any

from lmlab.humanize import si

FORMATS = ("md", "html")

Block = tuple  # ("h", level, text) | ("p", text) | ("ul", items) | ("table", header, rows)
#               | ("img", relative path, alt) | ("code", text)


# --------------------------------------------------------------------------- numbers (any language)


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # nan / inf are the finding, not a formatting error
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def fmt_delta(cur: Any, prev: Any) -> str:
    return f"{cur - prev:+.4f}" if finite(cur) and finite(prev) else "-"


def fmt_sci(x: Any) -> str:
    return f"{x:.3e}" if finite(x) else fmt_num(x)


def fmt_int(x: Any) -> str:
    return f"{int(x):,}" if finite(x) else "-"


def fmt_pct(x: Any) -> str:
    return f"{100 * x:.2f}%" if finite(x) else "-"


def fmt_si(x: Any, unit: str) -> str:
    """``56.51 GFLOP/s``: SI prefixes on a unit; ``-`` when not a finite number."""
    return si(x, unit) if finite(x) else "-"


# --------------------------------------------------------------------------- rendering


def render(title: str, blocks: list[Block], fmt: str) -> str:
    if fmt == "md":
        return _render_md(title, blocks)
    if fmt == "html":
        return _render_html(title, blocks)
    raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _render_md(title: str, blocks: list[Block]) -> str:
    out = [f"# {title}", ""]
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out += ["#" * block[1] + " " + block[2], ""]
        elif kind == "p":
            out += [block[1], ""]
        elif kind == "ul":
            out += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            out.append("| " + " | ".join(_md_cell(h) for h in block[1]) + " |")
            out.append("|" + "|".join("---" for _ in block[1]) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block[2]] + [""]
        elif kind == "img":
            out += [f"![{block[2]}]({block[1]})", ""]
        elif kind == "code":
            out += ["```", block[1].rstrip("\n"), "```", ""]
    return "\n".join(out)


def _inline_html(text: str) -> str:
    """Escape, then turn the `code` and **bold** of the strings into tags."""
    text = html.escape(str(text))
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


_CSS = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;line-height:1.45}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;"
        "text-align:left}code{background:#f3f3f3}pre{background:#f6f6f6;padding:.6em;overflow:auto}"
        "img{max-width:48%;margin:.2em}")


def _render_html(title: str, blocks: list[Block]) -> str:
    out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">",
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append(f"<h{block[1]}>{_inline_html(block[2])}</h{block[1]}>")
        elif kind == "p":
            out.append(f"<p>{_inline_html(block[1])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>"
                           for row in block[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            out.append(f"<img src=\"{html.escape(block[1])}\" alt=\"{html.escape(block[2])}\">")
        elif kind == "code":
            out.append(f"<pre>{html.escape(block[1])}</pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
