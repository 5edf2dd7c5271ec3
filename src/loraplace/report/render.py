"""Rendering of the study report as Markdown, self-contained HTML and LaTeX (booktabs).

The report's text is *rich text*: plain strings in which :func:`code` marks spans to show as
code (strategy names, config keys). Each renderer escapes the plain parts for its format and
renders the code spans its own way, so a hostile strategy name (``|``, backticks, ``*``,
``<script>``, ``%``, newlines ...) is shown as written and never breaks a table, a list or a
LaTeX run. Nothing here computes a statistic; nothing reads a file except
:func:`render_html`, which embeds the already written figures as base64 data URIs.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Deferred: importing it loads numpy.
    from loraplace.report.load import Condition, Study
    from loraplace.stats.verdicts import Comparison

__all__ = [
    "DASH",
    "Document",
    "Table",
    "code",
    "fmt",
    "html_text",
    "md_cell",
    "md_text",
    "p_is",
    "p_text",
    "planned_label",
    "pm",
    "interval",
    "plain_text",
    "render_html",
    "render_markdown",
    "render_tex",
    "sentence",
    "signed",
    "tex_escape",
    "tex_text",
    "who",
    "who_headers",
]

DASH = "–"
_OPEN, _CLOSE = "\x02", "\x03"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def code(text: object) -> str:
    """Marks ``text`` as a code span in rich text (newlines and control characters become
    spaces: a code span is one line)."""
    return _OPEN + _CONTROL.sub(" ", str(text)) + _CLOSE


def _parts(rich: str) -> list[tuple[bool, str]]:
    """``(is_code, text)`` pieces of a rich string; plain text loses its control characters."""
    out = []
    for i, piece in enumerate(re.split(f"[{_OPEN}{_CLOSE}]", str(rich))):
        if piece:
            out.append((i % 2 == 1, piece if i % 2 else _CONTROL.sub(" ", piece)))
    return out


# --- Numbers ------------------------------------------------------------------------------------


def fmt(value: float | int | None, spec: str, suffix: str = "") -> str:
    """``value`` formatted with ``spec``, or a dash when it is missing."""
    return DASH if value is None else format(value, spec) + suffix


def pm(mean: float | None, spread: float | None, spec: str) -> str:
    """``mean ± spread`` (the spread left out when there is none, e.g. one seed)."""
    if mean is None:
        return DASH
    return format(mean, spec) + (f" ± {format(spread, spec)}" if spread is not None else "")


def interval(low: float | None, high: float | None, spec: str) -> str:
    """``[low, high]``, or a dash when undefined."""
    return DASH if low is None or high is None else f"[{low:{spec}}, {high:{spec}}]"


def p_text(p: float | None) -> str:
    """A p-value to three decimals, ``<0.001`` below that, a dash when no test was made."""
    return DASH if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def p_is(p: float | None) -> str:
    """A p-value for a sentence: ``= 0.034`` or ``< 0.001``."""
    text = p_text(p)
    return f"< {text[1:]}" if text.startswith("<") else f"= {text}"


def span(values: list[float]) -> str:
    """``min–max`` of ``values`` to 2 decimals (one value alone; a dash for none)."""
    if not values:
        return DASH
    low, high = f"{min(values):.2f}", f"{max(values):.2f}"
    return low if low == high else f"{low}–{high}"


def signed(value: float | None) -> str:
    """A difference in nats, signed, to 4 decimals (a dash for none)."""
    return fmt(value, "+.4f")


def sentence(text: str) -> str:
    """``text`` with its first letter capitalised, to open a sentence."""
    return text[:1].upper() + text[1:]


def planned_label(c: Comparison) -> str:
    """A planned comparison as rich text: ``A − B``, or ``(A − B) − (C − D)``."""
    if len(c.terms) == 2:
        return " − ".join(f"({code(a)} − {code(b)})" for a, b in c.terms)
    return f"{code(c.strategy)} − {code(c.reference)}"


def who(study: Study, cond: Condition) -> list[str]:
    """The leading cells naming a condition: its strategy, and its rank in a sweep."""
    return [code(cond.name)] + ([f"r{cond.rank}"] if study.sweep else [])


def who_headers(study: Study) -> list[str]:
    """The headers of :func:`who`'s cells."""
    return ["Strategy"] + (["Rank"] if study.sweep else [])


def holm_over(size: int, tests: str, then: str = "") -> str:
    """``Holm over 4 compared budget(s)`` followed by ``then``; without a test, says so instead
    of "Holm over 0": usually every comparison is short of the seeds a test needs, and rarely
    (identical runs) the differences have no spread and the t-test is undefined."""
    # Deferred: importing it loads numpy, scipy.
    from loraplace.stats.verdicts import MIN_SEEDS

    if size:
        return f"Holm over {size} {tests}{then}"
    return f"nothing tested yet (no comparison has {MIN_SEEDS} paired seeds and a defined p)"


# --- Escaping -----------------------------------------------------------------------------------

# Characters with a meaning anywhere in a line of GitHub-flavoured Markdown (emphasis, code,
# links, HTML, tables, strikethrough, entities, math); a backslash makes each literal. Those
# that matter only at the start of a line (#, +, -) never start a line the report writes.
_MD_PUNCTUATION = re.compile(r"([\\`*_\[\]<>|~&$])")


def md_text(rich: str) -> str:
    """Rich text as Markdown outside tables: plain parts escaped, code as code spans."""
    return "".join(
        _md_code(t) if is_code else _MD_PUNCTUATION.sub(r"\\\1", t) for is_code, t in _parts(rich)
    )


def md_cell(rich: str) -> str:
    """Rich text as one Markdown table cell: as :func:`md_text`, and ``|`` inside code spans
    escaped too (a table splits on every unescaped ``|``, even inside code)."""
    return "".join(
        _md_code(t).replace("|", "\\|") if is_code else _MD_PUNCTUATION.sub(r"\\\1", t)
        for is_code, t in _parts(rich)
    )


def _md_code(text: str) -> str:
    # A code span's fence is longer than any run of backticks inside it (CommonMark 6.1).
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or text.strip() != text else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def plain_text(rich: str) -> str:
    """Rich text as plain text, code spans between backticks (for terminals and logs)."""
    return "".join(f"`{t}`" if is_code else t for is_code, t in _parts(rich))


def html_text(rich: str) -> str:
    """Rich text as HTML: everything escaped, code spans as ``<code>``."""
    return "".join(
        f"<code>{html.escape(t)}</code>" if is_code else html.escape(t)
        for is_code, t in _parts(rich)
    )


_TEX = {
    ord(k): v
    for k, v in {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "±": r"$\pm$",
        "×": r"$\times$",
        "–": "--",
        "<": r"\textless{}",
        ">": r"\textgreater{}",
        "|": r"\textbar{}",
        "Δ": r"$\Delta$",
        "−": r"$-$",
        "†": r"$^\dagger$",
        "→": r"$\to$",
        "\n": " ",
        "\r": " ",
    }.items()
}


def tex_escape(text: str) -> str:
    """Escapes LaTeX special characters (``& % $ # _ { } ~ ^ \\ < > |``) and the report's
    symbols; line breaks become spaces (a blank line would end a table row's paragraph)."""
    return _CONTROL.sub(" ", str(text).translate(_TEX))


def tex_text(rich: str) -> str:
    """Rich text as LaTeX: escaped, code spans in ``\\texttt``."""
    return "".join(
        rf"\texttt{{{tex_escape(t)}}}" if is_code else tex_escape(t) for is_code, t in _parts(rich)
    )


# --- Documents ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """One table of the report: rich-text headers and cells."""

    title: str
    """Section heading."""
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    """Rich text under the table: what the columns mean."""
    intro: str = ""
    """Rich text above the table."""


@dataclass
class Document:
    """The report's content, independent of its format."""

    title: str
    subtitle: str
    """Rich text."""
    findings: list[str]
    """Rich-text sentences."""
    tables: list[Table]
    """The analysis tables, in order (before the figures)."""
    figures: list[tuple[str, str]]
    """``(file name, caption)`` of each PNG in the report directory."""
    failures: list[str]
    """Rich text: failed runs and unreadable run directories."""
    runs: Table
    """The per-run table (the last table)."""
    provenance: list[tuple[str, str]]
    config_text: str
    sections: dict[str, list[str]] = field(default_factory=dict)
    """Extra headed lists (rich text), e.g. the training budget, after the findings."""
    lead: list[str] = field(default_factory=list)
    """Paragraphs (rich text) under the subtitle, before the findings: the recommendation."""


FAILURES_HEADING = "Failed and unfinished runs"
"""Report section listing failed runs and run directories without a readable result.json."""


def _md_table(table: Table) -> list[str]:
    out = [f"## {md_text(table.title)}", ""]
    if table.intro:
        out += [md_text(table.intro), ""]
    out += [
        "| " + " | ".join(md_cell(h) for h in table.headers) + " |",
        "|" + "---|" * len(table.headers),
        *("| " + " | ".join(md_cell(c) for c in row) + " |" for row in table.rows),
        "",
    ]
    return out + ([md_text(table.note), ""] if table.note else [])


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`{3,}", text)), default=2)
    return "`" * (longest + 1)


def render_markdown(doc: Document) -> str:
    """``report.md``: findings, tables, figures (by relative file name), failures, runs,
    provenance and the study config."""
    md = [f"# {md_text(doc.title)}", "", md_text(doc.subtitle), ""]
    for paragraph in doc.lead:
        md += [md_text(paragraph), ""]
    md += ["## Findings", ""]
    md += [f"- {md_text(n)}" for n in doc.findings] + [""]
    for heading, items in doc.sections.items():
        md += [f"## {md_text(heading)}", "", *(f"- {md_text(i)}" for i in items), ""]
    for table in doc.tables:
        md += _md_table(table)
    md += ["## Figures", ""]
    for file, caption in doc.figures:
        md += [f"![{md_text(caption)}]({file})", "", f"*{md_text(caption)}*", ""]
    md += [f"## {FAILURES_HEADING}", ""]
    md += [f"- {md_text(f)}" for f in doc.failures] or ["None."]
    md += ["", *_md_table(doc.runs), "## Provenance", ""]
    md += [f"- **{md_text(k)}**: {md_text(v)}" for k, v in doc.provenance]
    fence = _fence(doc.config_text)
    text = doc.config_text.rstrip() or "# study.yaml not found"
    md += ["", "## Study config", "", f"{fence}yaml", text, fence, ""]
    return "\n".join(md)


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html_text(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html_text(c)}</td>" for c in row) + "</tr>" for row in table.rows
    )
    intro = f"<p>{html_text(table.intro)}</p>" if table.intro else ""
    note = f"<p class='note'>{html_text(table.note)}</p>" if table.note else ""
    return (
        f"<h2>{html_text(table.title)}</h2>{intro}<table><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>{note}"
    )


_CSS = (
    "body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;"
    "max-width:1200px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}"
    "table{border-collapse:collapse;font-size:.85em;margin:.5em 0}"
    "th,td{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:right}"
    "th:first-child,td:first-child{text-align:left}thead th{border-bottom:2px solid #444}"
    "code,pre{background:#f5f5f5;border-radius:3px}pre{padding:.8em;overflow:auto}"
    "figure{margin:1.5em 0}img{max-width:100%}figcaption{color:#555;font-size:.9em}"
    ".note{color:#555;font-size:.85em}"
)


def _html_list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{html_text(i)}</li>" for i in items) + "</ul>"


def render_html(doc: Document, fig_dir: Path) -> str:
    """``report.html``: the content of ``report.md`` in one file, figures as data URIs."""
    title = html.escape(doc.title)
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>",
        f"<style>{_CSS}</style></head><body><h1>{title}</h1><p>{html_text(doc.subtitle)}</p>",
        *(f"<p>{html_text(paragraph)}</p>" for paragraph in doc.lead),
        "<h2>Findings</h2>",
        _html_list(doc.findings),
    ]
    for heading, items in doc.sections.items():
        parts += [f"<h2>{html_text(heading)}</h2>", _html_list(items)]
    parts += [_html_table(t) for t in doc.tables]
    parts.append("<h2>Figures</h2>")
    for file, caption in doc.figures:
        data = base64.b64encode((fig_dir / file).read_bytes()).decode("ascii")
        parts.append(
            f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html_text(caption)}</figcaption></figure>"
        )
    parts += [
        f"<h2>{FAILURES_HEADING}</h2>",
        _html_list(doc.failures) if doc.failures else "<p>None.</p>",
        _html_table(doc.runs),
        "<h2>Provenance</h2><ul>",
        *(f"<li><b>{html_text(k)}</b>: {html_text(v)}</li>" for k, v in doc.provenance),
        "</ul>",
        "<h2>Study config</h2>",
        f"<pre>{html.escape(doc.config_text or '# study.yaml not found')}</pre>",
        "</body></html>",
        "",
    ]
    return "\n".join(parts)


def _tex_table(table: Table, label: str) -> list[str]:
    return [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{tex_text(table.note or table.title)}}}",
        rf"\label{{{label}}}",
        r"\begin{tabular}{l" + "r" * (len(table.headers) - 1) + "}",
        r"\toprule",
        " & ".join(tex_text(h) for h in table.headers) + r" \\",
        r"\midrule",
        *(" & ".join(tex_text(c) for c in row) + r" \\" for row in table.rows),
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]


def render_tex(tables: list[Table], study_name: str) -> str:
    """``summary.tex``: booktabs ``table`` fragments (``\\usepackage{booktabs}``), ready to
    ``\\input``; each caption is its table's note."""
    slug = re.sub(r"[^A-Za-z0-9-]", "-", study_name)
    lines = [r"% Generated by loraplace. Requires \usepackage{booktabs}."]
    for i, table in enumerate(tables):
        suffix = "" if i == 0 else f"-{re.sub(r'[^a-z0-9]+', '-', table.title.lower()).strip('-')}"
        lines += _tex_table(table, f"tab:loraplace-{slug}{suffix}") + [""]
    return "\n".join(lines)
