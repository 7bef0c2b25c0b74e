"""The documentation site's generated pages: one page per ``reports/`` folder, and DESIGN.md.

Loaded by mkdocs as a hook (``hooks:`` in mkdocs.yml), so ``mkdocs build`` alone makes them and
nothing generated is written into ``docs/``:

- ``benchmarks/reports/<folder>/index.md`` for every folder under ``reports/``: its Markdown files
  (headings moved under one heading per file), its text and YAML files as code, its pictures
  shown, its JSON files linked (published as they are); each page says which docs pages quote it;
- ``benchmarks/reports/index.md``: the list of those pages;
- ``design.md``: DESIGN.md, the repository's design notes, with relative links that do not point
  at a docs page shown as code instead (a strict build fails on a broken link);
- in every page, a code span naming a report folder (```reports/pipeline/```) becomes a link to
  that folder's page.

``python tools/docs_reports.py --out DIR`` writes the same pages into DIR to read them without
building the site. Output depends only on the files, in sorted order: two runs give the same bytes.
"""

from __future__ import annotations

import argparse
import posixpath
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"
DESIGN = ROOT / "DESIGN.md"
SITE_REPORTS = "benchmarks/reports"  # where the report pages live in the site

TEXT_AS_CODE = {".txt": "text", ".yaml": "yaml", ".yml": "yaml"}
PICTURES = {".png", ".jpg", ".jpeg", ".svg"}
PUBLISHED = {".json", ".jsonl", ".csv"} | PICTURES | set(TEXT_AS_CODE)  # copied into the site as they are

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})(\s)")
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
_REPORT_SPAN = re.compile(r"(?<!\[)`reports/([A-Za-z0-9._-]+)(/[^`]*)?`")


def _outside_fences(text: str):
    """Yield (line, inside_fence) for each line of Markdown ``text``."""
    fence = None
    for line in text.splitlines():
        m = _FENCE.match(line)
        if m and (fence is None or m.group(1) == fence):
            fence = m.group(1) if fence is None else None
            yield line, True
            continue
        yield line, fence is not None


def report_folders(reports: Path = REPORTS) -> list[Path]:
    """The folders directly under ``reports/`` that hold at least one file, sorted by name."""
    if not reports.is_dir():
        return []
    return sorted(p for p in reports.iterdir() if p.is_dir() and any(f.is_file() for f in p.rglob("*")))


def _files(folder: Path) -> list[Path]:
    """A folder's files, its own before its sub-folders', each group sorted by path."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return sorted(files, key=lambda p: (len(p.relative_to(folder).parts) > 1, p.relative_to(folder).as_posix()))


def _rewrite_links(line: str, here: str, exists) -> str:
    """Relative links in ``line`` (a Markdown file at site path ``here``) to files the site does not
    hold are shown as code; links to URLs, anchors and held files are left as they are."""

    def fix(m: re.Match) -> str:
        _bang, text, target = m.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return m.group(0)
        path = posixpath.normpath(posixpath.join(posixpath.dirname(here), target.split("#")[0]))
        if exists(path):
            return m.group(0)
        return f"{text} (`{target}`)" if text and text != target else f"`{target}`"

    return _LINK.sub(fix, line)


def _demote(text: str, levels: int, here: str, exists) -> list[str]:
    out = []
    for line, fenced in _outside_fences(text):
        if not fenced:
            line = _HEADING.sub(lambda m: "#" * min(6, len(m.group(1)) + levels) + m.group(2), line)
            line = _rewrite_links(line, here, exists)
        out.append(line)
    return out


def _title(text: str, fallback: str) -> str:
    for line, fenced in _outside_fences(text):
        if not fenced and line.startswith("# "):
            return line[2:].strip()
    return fallback


def report_page(folder: Path, quoted_in: list[tuple[str, str]] | None = None) -> tuple[str, dict[str, Path]]:
    """The Markdown of one report folder's page, and the files it publishes beside it
    (site path -> file). ``quoted_in``: (title, site path) of docs pages that name the folder."""
    name = folder.name
    base = f"{SITE_REPORTS}/{name}"
    files = _files(folder)
    published = {f"{base}/{p.relative_to(folder).as_posix()}": p for p in files if p.suffix.lower() in PUBLISHED}
    page = f"{base}/index.md"
    lines = [f"# reports/{name}/", ""]
    lines.append(f"Generated from the repository's `reports/{name}/` at build time: {len(files)} file(s), "
                 "each below, in path order. The figures are what the benchmark tools wrote; the pages that "
                 "quote them say how they were measured.")
    lines.append("")
    if quoted_in:
        lines.append("Quoted in: " + ", ".join(
            f"[{title}]({posixpath.relpath(path, posixpath.dirname(page))})" for title, path in quoted_in) + ".")
        lines.append("")
    data = [p for p in files if p.suffix.lower() in {".json", ".jsonl", ".csv"}]
    if data:
        lines.append("Data files: " + ", ".join(
            f"[`{p.relative_to(folder).as_posix()}`]({p.relative_to(folder).as_posix()}) "
            f"({p.stat().st_size:,} bytes)" for p in data) + ".")
        lines.append("")
    for p in files:
        rel = p.relative_to(folder).as_posix()
        suffix = p.suffix.lower()
        if suffix in {".json", ".jsonl", ".csv"}:
            continue
        lines.append(f"## `{rel}`")
        lines.append("")
        if suffix == ".md":
            here = f"{base}/{rel}"
            lines.extend(_demote(p.read_text(encoding="utf-8"), 2, here, lambda s: s in published or s == page))
        elif suffix in TEXT_AS_CODE:
            body = p.read_text(encoding="utf-8").rstrip("\n")
            fence = "````" if "```" in body else "```"
            lines += [f"{fence}{TEXT_AS_CODE[suffix]}", body, fence]
        elif suffix in PICTURES:
            lines.append(f"![{rel}]({rel})")
        else:
            lines.append(f"(`{rel}`, {p.stat().st_size:,} bytes, not shown)")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n", published


def reports_index(folders: list[Path]) -> str:
    lines = ["# Benchmark reports", "",
             "Every folder under `reports/` as the benchmark tools left it, one page each, generated when the "
             "site is built. [Benchmarks](../index.md) says which figures matter and where each is discussed.", "",
             "| folder | files | first heading |", "|---|---:|---|"]
    for folder in folders:
        files = _files(folder)
        first_md = next((p for p in files if p.suffix.lower() == ".md"), None)
        title = _title(first_md.read_text(encoding="utf-8"), "") if first_md else ""
        lines.append(f"| [`{folder.name}/`]({folder.name}/index.md) | {len(files)} | {title.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def design_page(exists) -> str:
    """DESIGN.md for the site: relative links that are not docs pages shown as code."""
    text = DESIGN.read_text(encoding="utf-8")
    return "\n".join(line if fenced else _rewrite_links(line, "design.md", exists)
                     for line, fenced in _outside_fences(text)) + "\n"


def link_report_spans(markdown: str, page_path: str, folders: set[str]) -> str:
    """Code spans naming a report folder (``reports/NAME/...``) become links to its page."""
    out = []
    for line, fenced in _outside_fences(markdown):
        if not fenced and "`reports/" in line:
            def link(m: re.Match) -> str:
                if m.group(1) not in folders:
                    return m.group(0)
                target = posixpath.relpath(f"{SITE_REPORTS}/{m.group(1)}/index.md", posixpath.dirname(page_path))
                return f"[{m.group(0)}]({target})"

            # Only spans not already inside a link's text: a span followed by '](' is left alone.
            line = re.sub(_REPORT_SPAN.pattern + r"(?!\]\()", link, line)
        out.append(line)
    return "\n".join(out) + ("\n" if markdown.endswith("\n") else "")


def generate(docs_pages: dict[str, str]) -> tuple[dict[str, str], dict[str, Path]]:
    """Every generated page (site path -> Markdown) and published file (site path -> file).
    ``docs_pages``: the hand-written pages (site path -> Markdown), to say which quote each report."""
    folders = report_folders()
    titles = {path: _title(text, path) for path, text in docs_pages.items()}
    pages: dict[str, str] = {f"{SITE_REPORTS}/index.md": reports_index(folders)}
    published: dict[str, Path] = {}
    for folder in folders:
        needle = re.compile(rf"reports/{re.escape(folder.name)}(?![A-Za-z0-9._-])")
        quoted = [(titles[p], p) for p in sorted(docs_pages) if needle.search(docs_pages[p])]
        page, files = report_page(folder, quoted)
        pages[f"{SITE_REPORTS}/{folder.name}/index.md"] = page
        published.update(files)
    if DESIGN.is_file():
        known = set(docs_pages) | set(pages) | set(published)
        pages["design.md"] = design_page(lambda p: p in known)
    return pages, published


# ---- mkdocs hook -------------------------------------------------------------------------------

_FOLDERS: set[str] = set()


def on_files(files, config):
    from mkdocs.structure.files import File, InclusionLevel

    docs = {f.src_uri: Path(f.abs_src_path).read_text(encoding="utf-8")
            for f in files.documentation_pages() if f.abs_src_path}
    pages, published = generate(docs)
    for uri, text in pages.items():
        if files.get_file_from_path(uri) is None:
            # Report pages are reached from benchmarks/reports/index.md, not listed in the navigation.
            inclusion = InclusionLevel.NOT_IN_NAV if uri.count("/") > 2 else InclusionLevel.UNDEFINED
            files.append(File.generated(config, uri, content=text, inclusion=inclusion))
    for uri, path in published.items():
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    _FOLDERS.clear()
    _FOLDERS.update(f.name for f in report_folders())
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri.startswith(SITE_REPORTS + "/"):
        return markdown
    return link_report_spans(markdown, page.file.src_uri, _FOLDERS)


def on_serve(server, config, builder):
    server.watch(str(REPORTS))
    server.watch(str(DESIGN))
    return server


# ---- command line ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the site's generated pages (report folders, DESIGN) "
                                                 "into a folder, as mkdocs makes them at build time.")
    parser.add_argument("--out", required=True, type=Path, help="folder to write into (created)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="the hand-written pages (default docs/)")
    args = parser.parse_args(argv)
    docs = {p.relative_to(args.docs).as_posix(): p.read_text(encoding="utf-8") for p in sorted(args.docs.rglob("*.md"))}
    pages, published = generate(docs)
    for uri, text in pages.items():
        target = args.out / uri
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    print(f"wrote {len(pages)} pages into {args.out} ({len(published)} published files not copied)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
