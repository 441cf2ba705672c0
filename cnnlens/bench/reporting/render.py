"""Render report sections as Markdown (figures as files) and as one self-contained HTML page.

Tables are formatted here because pandas' ``to_markdown`` needs the optional ``tabulate``
package. The HTML embeds every PNG as base64 (the page can be mailed as one file) and sorts a
table by the column whose header is clicked: a dozen lines of inline script, since the page must
work offline and from a file:// URL, where no script library can be fetched.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: What an empty table cell means, shown under every table that has one.
BLANK = "-"


@dataclass
class Section:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)  # ("text"|"note", str) | ("table", ...) | ("figure", ...)

    def text(self, s: str) -> None:
        self.blocks.append(("text", s))

    def note(self, s: str) -> None:
        """A highlighted statement the reader must not miss (e.g. an untrained model)."""
        self.blocks.append(("note", s))

    def table(self, df: Any, floatfmt: str = ".3f", blank: str = "") -> None:
        """A table; ``blank`` says what an empty cell (``-``) means in it."""
        self.blocks.append(("table", (df, floatfmt, blank)))

    def figure(self, name: str, caption: str) -> None:
        self.blocks.append(("figure", (name, caption)))


def anchor(title: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-")


def _fmt(v: Any, floatfmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return BLANK
    if isinstance(v, (float, np.floating)):
        return format(float(v), floatfmt)
    return str(v)


def _has_blank(df: Any) -> bool:
    return bool(df.isna().to_numpy().any())


def md_table(df: Any, floatfmt: str = ".3f") -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v, floatfmt).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def html_table(df: Any, floatfmt: str = ".3f") -> str:
    head = "".join(f"<th title='click to sort'>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        tds = []
        for v in row:
            num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            key = f" data-v='{float(v)!r}'" if num and not (isinstance(v, float) and math.isnan(v)) else ""
            cls = " class='t'" if not num else ""
            tds.append(f"<td{cls}{key}>{html.escape(_fmt(v, floatfmt))}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (f"<div class='tw'><table class='sortable'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def render_md(sections: list[Section], title: str, fig_dir: str) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for kind, val in s.blocks:
            if kind == "text":
                out += [val, ""]
            elif kind == "note":
                out += ["> **" + val + "**", ""]
            elif kind == "table":
                df, floatfmt, blank = val
                out += [md_table(df, floatfmt), ""]
                if blank and _has_blank(df):
                    out += [f"`{BLANK}`: {blank}", ""]
            else:
                name, cap = val
                out += [f"![{cap}]({fig_dir}/{name})", ""]
    return "\n".join(out)


def _md_inline(s: str) -> str:
    s = html.escape(s)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    s = re.sub(r"\*(.+?)\*", r"<i>\1</i>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def _text_html(s: str) -> str:
    if s.startswith("```"):
        body = s.strip("`").split("\n", 1)[1] if "\n" in s else s
        return f"<pre>{html.escape(body.rstrip('`'))}</pre>"
    parts = []
    for para in s.split("\n\n"):
        lines = para.split("\n")
        if all(line.startswith("- ") for line in lines):
            parts.append("<ul>" + "".join(f"<li>{_md_inline(line[2:])}</li>" for line in lines) + "</ul>")
        else:
            parts.append(f"<p>{_md_inline(para)}</p>")
    return "".join(parts)


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1800px;margin:1.5em auto;padding:0 1.2em;
     color:#1d1d1f;line-height:1.5;font-size:15px}
h1{font-size:1.7em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
nav{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #eee;z-index:2;font-size:14px}
nav a{margin-right:1em;color:#0b57d0;text-decoration:none;white-space:nowrap;display:inline-block}
.note{background:#fff4e5;border-left:5px solid #e8710a;padding:.8em 1em;font-weight:600;margin:1em 0}
.tw{overflow-x:auto;max-width:100%;margin:.8em 0}
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}
td,th{border:1px solid #d0d0d0;padding:3px 8px;text-align:right;white-space:nowrap}
td.t{text-align:left;white-space:normal;min-width:6em}p,ul{max-width:1100px}
th{white-space:normal;background:#f1f3f4;cursor:pointer;position:sticky;top:0}
th.asc::after{content:' \\25B2';font-size:10px}th.desc::after{content:' \\25BC';font-size:10px}
tbody tr:nth-child(even){background:#fafafa}tbody tr:hover{background:#eef3fd}
.blank{color:#555;font-size:13px;margin-top:-.4em}
img{max-width:100%;height:auto}figure{margin:1.2em 0}figcaption{color:#555;font-size:13px}
pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:13px}code{background:#f1f3f4;padding:0 .2em}
"""

SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
    var asc=!th.classList.contains('asc');t.querySelectorAll('th').forEach(function(h){h.className='';});
    th.className=asc?'asc':'desc';var b=t.tBodies[0];var rows=Array.prototype.slice.call(b.rows);
    rows.sort(function(x,y){var a=x.cells[i],c=y.cells[i];var va=a.dataset.v,vc=c.dataset.v;
      var r=(va!==undefined&&vc!==undefined)?(parseFloat(va)-parseFloat(vc))
           :(va===undefined&&vc===undefined)?a.textContent.localeCompare(c.textContent):(va===undefined?1:-1);
      return asc?r:-r;});rows.forEach(function(r){b.appendChild(r);});});});});
"""


def render_html(sections: list[Section], title: str, figs: dict[str, bytes]) -> str:
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
           f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    out.append("<nav>" + "".join(f"<a href='#{anchor(s.title)}'>{html.escape(s.title)}</a>" for s in sections)
               + "</nav>")
    for s in sections:
        out.append(f"<h2 id='{anchor(s.title)}'>{html.escape(s.title)}</h2>")
        for kind, val in s.blocks:
            if kind == "text":
                out.append(_text_html(val))
            elif kind == "note":
                out.append(f"<div class='note'>{_md_inline(val)}</div>")
            elif kind == "table":
                df, floatfmt, blank = val
                out.append(html_table(df, floatfmt))
                if blank and _has_blank(df):
                    out.append(f"<p class='blank'><code>{BLANK}</code>: {_md_inline(blank)}</p>")
            else:
                name, cap = val
                b64 = base64.b64encode(figs[name]).decode()
                mime = "image/jpeg" if name.endswith(".jpg") else "image/png"
                out.append(f"<figure><img alt='{html.escape(cap)}' src='data:{mime};base64,{b64}'>"
                           f"<figcaption>{html.escape(cap)}</figcaption></figure>")
    out.append(f"<script>{SORT_JS}</script></body></html>")
    return "".join(out)
