"""The README and the documentation site cannot drift from the code.

- Every shell block the docs mark as runnable (an HTML comment ``<!-- runnable -->`` on the line
  before its fence) is run, command by command, and must exit 0 (``<!-- runnable exit=2 -->``: that
  status); a block followed by ``<!-- output -->`` and a fenced block must print each of that block's
  lines (``...`` stands for anything). Blocks run in one folder that links to the repository's
  folders (``models/``, ``tools/``, ...), the README's first, then the site's pages in the order of
  its navigation, so a block may use what an earlier one made. A block identical to one already run
  is not run again. Writing these docs (docs/reference/writing-docs.md) describes the convention.
- The README stays short, and its relative links point at files that exist.
- The site builds with ``mkdocs build --strict`` (where mkdocs is installed), every page is in its
  navigation, and the generated report pages are the same bytes from one build to the next.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import load_tool, needs

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"
README_MAX_LINES = 250

RUNNABLE = re.compile(r"^<!--\s*runnable(?P<opts>(?:\s+[a-z]+=\S+)*)\s*-->\s*$")
OUTPUT = re.compile(r"^<!--\s*output\s*-->\s*$")
FENCE = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<info>[^`]*)$")
SHELLS = {"sh", "bash", "shell", "console"}
# Tracked entries of the checkout that the commands' folder does not link to (the commands write runs/).
NOT_LINKED = {".git", "runs", "data", "build"}
COMMAND_TIMEOUT_S = 300
# Paths under these folders that the docs name must exist; outputs the docs tell you to write need not.
NAMED = re.compile(r"(?<![\w./-])(?<!\]\()"
                   r"((?:tools|configs|models|deploy|tests|device_tests|\.ci|kernels|reports|edgefs)/[\w./+-]*)")
WRITTEN = re.compile(r"\.edgefs$|^reports/gpu/")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the marker
    commands: list[str]
    exit_status: int = 0
    expected: list[str] = field(default_factory=list)

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def nav_pages() -> list[str]:
    """The site's pages in the order of mkdocs.yml's navigation (paths under docs/)."""
    config = yaml.safe_load(MKDOCS_YML.read_text(encoding="utf-8"))
    pages: list[str] = []

    def walk(item: object) -> None:
        if isinstance(item, str):
            pages.append(item)
        elif isinstance(item, list):
            for x in item:
                walk(x)
        elif isinstance(item, dict):
            for x in item.values():
                walk(x)

    walk(config["nav"])
    return pages


def doc_files() -> list[Path]:
    """README.md, then the hand-written pages in navigation order, then any page not in it."""
    in_nav = [DOCS / p for p in nav_pages() if (DOCS / p).is_file()]
    rest = sorted(p for p in DOCS.rglob("*.md") if p not in in_nav)
    return [README, *in_nav, *rest]


def _fenced(lines: list[str], start: int, path: Path) -> tuple[str, list[str], int]:
    """The fenced block whose opening fence is the first non-blank line at or after ``start``:
    (info string, body lines, index after the closing fence)."""
    i = start
    while i < len(lines) and not lines[i].strip():
        i += 1
    m = FENCE.match(lines[i].strip()) if i < len(lines) else None
    if m is None:
        raise AssertionError(f"{path.relative_to(ROOT)}:{start}: a marker must be followed by a fenced block")
    fence, body = m.group("fence"), []
    for j in range(i + 1, len(lines)):
        if lines[j].strip() == fence:  # the same fence closes it (a longer one may enclose shorter ones)
            return m.group("info").strip(), body, j + 1
        body.append(lines[j])
    raise AssertionError(f"{path.relative_to(ROOT)}:{i + 1}: fenced block never closed")


def _commands(body: list[str]) -> list[str]:
    """Shell commands of a block: backslash continuations joined, blank and comment lines skipped."""
    commands, current = [], ""
    for line in body:
        text = line[2:] if line.startswith("$ ") else line
        if not current and (not text.strip() or text.lstrip().startswith("#")):
            continue
        if text.rstrip().endswith("\\"):
            current += text.rstrip()[:-1] + " "
            continue
        commands.append((current + text).strip())
        current = ""
    if current:
        commands.append(current.strip())
    return commands


def count_markers(lines: list[str]) -> int:
    """Runnable markers outside fenced blocks, counted without the parser below (which must find them all)."""
    count, fence = 0, None
    for line in lines:
        m = FENCE.match(line.strip())
        if m and (fence is None or line.strip() == fence):
            fence = m.group("fence") if fence is None else None
        elif fence is None and RUNNABLE.match(line):
            count += 1
    return count


def parse(path: Path) -> tuple[int, list[Block]]:
    """(markers found, runnable blocks) in one Markdown file. An output block belongs to the runnable
    block before it, with prose between them allowed but no other fenced block."""
    lines = path.read_text(encoding="utf-8").splitlines()
    where = path.relative_to(ROOT)
    blocks: list[Block] = []
    last: Block | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := RUNNABLE.match(line):
            marker = i + 1
            opts = dict(o.split("=", 1) for o in m.group("opts").split())
            unknown = set(opts) - {"exit"}
            assert not unknown, f"{where}:{marker}: unknown runnable option(s) {sorted(unknown)}"
            info, body, i = _fenced(lines, marker, path)
            language = info.split()[0] if info else ""
            assert language in SHELLS, f"{where}:{marker}: a runnable block is a shell block (```sh), not ```{info}"
            last = Block(path, marker, _commands(body), int(opts.get("exit", "0")))
            assert last.commands, f"{where}:{marker}: a runnable block without a command"
            blocks.append(last)
        elif OUTPUT.match(line):
            assert last is not None, f"{where}:{i + 1}: <!-- output --> must follow a runnable block"
            _info, expected, i = _fenced(lines, i + 1, path)
            last.expected += [e for e in expected if e.strip()]
            last = None
        elif FENCE.match(line.strip()):
            _info, _body, i = _fenced(lines, i, path)
            last = None
        else:
            i += 1
    return count_markers(lines), blocks


def _expected_pattern(line: str) -> re.Pattern:
    return re.compile(".*?".join(re.escape(part.strip()) for part in line.split("...")))


def tracked_top_level() -> set[str]:
    """The repository's own top-level files and folders (what git tracks), not what commands left there
    (the docs' commands write into runs/, a reader may have run them in the checkout)."""
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but the hidden
        return {p.name for p in ROOT.iterdir() if not p.name.startswith(".")}
    return {name.split(b"/")[0].decode() for name in names.split(b"\0") if name}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """An empty folder that links to the repository's folders and files, and an environment whose
    PATH finds this Python's ``edgefs`` first and whose HOME (caches, profiles) is a new folder."""
    work = tmp_path_factory.mktemp("docs-commands")
    for name in sorted(tracked_top_level() - NOT_LINKED):
        if (ROOT / name).exists():
            (work / name).symlink_to(ROOT / name)
    home = tmp_path_factory.mktemp("docs-home")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["HOME"] = str(home)
    env.pop("EDGEFS_CACHE", None)
    env.pop("XDG_CACHE_HOME", None)
    env.pop("XDG_CONFIG_HOME", None)
    env["PYTHONUNBUFFERED"] = "1"
    return work, env


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> tuple[list[str], str]:
    """Run a block's commands in order: (problems found, their output together)."""
    output = ""
    for i, command in enumerate(block.commands):
        want = block.exit_status if i == len(block.commands) - 1 else 0
        try:
            done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=COMMAND_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return [f"{block.where()}: `{command}` ran past {COMMAND_TIMEOUT_S} s"], output
        output += done.stdout
        if done.returncode != want:
            return [f"{block.where()}: `{command}` exited {done.returncode}, the docs say {want}:\n"
                    + done.stdout[-3000:]], output
    return [], output


def missing_output(block: Block, output: str) -> list[str]:
    return [f"{block.where()}: the output lacks {e!r}:\n{output[-3000:]}"
            for e in block.expected if not _expected_pattern(e).search(output)]


def test_markers_are_well_formed() -> None:
    markers = blocks = 0
    for path in doc_files():
        found, parsed = parse(path)
        markers += found
        blocks += len(parsed)
    assert markers == blocks, f"{markers} runnable markers but {blocks} blocks parsed"
    assert blocks >= 10, f"only {blocks} runnable blocks: the docs should run their journeys"


@pytest.mark.slow
def test_every_runnable_command_runs(workspace: tuple[Path, dict[str, str]]) -> None:
    needs("torch", "the docs' journeys (edgefs export)")
    needs("fontTools", "the docs' journeys (edgefs data glyphs)")
    cwd, env = workspace
    markers, blocks = 0, []
    for path in doc_files():
        found, parsed = parse(path)
        markers += found
        blocks += parsed
    done: dict[tuple[str, ...], tuple[list[str], str]] = {}
    problems: list[str] = []
    ran = commands = reused = 0
    start = time.monotonic()
    for block in blocks:
        key = (*block.commands, f"exit={block.exit_status}")
        if key in done:
            reused += 1
        else:
            done[key] = run_block(block, cwd, env)
            commands += len(block.commands)
        failed, output = done[key]
        problems += failed or missing_output(block, output)
        ran += 1
    print(f"docs: {ran} runnable blocks ({reused} identical to one already run), {commands} commands "
          f"in {time.monotonic() - start:.1f} s")
    assert not problems, "\n\n".join(problems)
    assert ran >= markers, f"{markers} runnable markers, {ran} blocks run"
    assert commands >= ran - reused


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}; the rest: docs/)"


def test_readme_links_resolve() -> None:
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text)
    assert links, "README.md links to nothing"
    broken = []
    for target in links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        path = (ROOT / target.split("#")[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"README.md links to files that do not exist: {broken}"


def test_named_repository_files_exist() -> None:
    missing = set()
    for path in doc_files():
        for m in NAMED.finditer(path.read_text(encoding="utf-8")):
            name = m.group(1).rstrip(".,;:")
            if not WRITTEN.search(name) and not (ROOT / name).exists():
                missing.add(f"{path.relative_to(ROOT)}: {name}")
    assert not missing, "the docs name files that do not exist:\n" + "\n".join(sorted(missing))


def test_every_page_is_in_the_navigation() -> None:
    listed = set(nav_pages())
    generated = {"design.md", "benchmarks/reports/index.md"}
    missing = [p.relative_to(DOCS).as_posix() for p in sorted(DOCS.rglob("*.md"))
               if p.relative_to(DOCS).as_posix() not in listed]
    assert not missing, f"pages not in mkdocs.yml's nav: {missing}"
    absent = [p for p in listed if not (DOCS / p).is_file() and p not in generated]
    assert not absent, f"mkdocs.yml's nav names pages that do not exist: {absent}"


def test_generated_pages_cover_every_report_and_repeat_exactly() -> None:
    tool = load_tool("docs_reports")
    docs = {p.relative_to(DOCS).as_posix(): p.read_text(encoding="utf-8") for p in sorted(DOCS.rglob("*.md"))}
    first, published = tool.generate(docs)
    again, _ = tool.generate(docs)
    assert first == again
    for folder in tool.report_folders():
        assert f"benchmarks/reports/{folder.name}/index.md" in first, folder
    assert "design.md" in first and first["design.md"].startswith("# ")
    assert all(path.is_file() for path in published.values())


@pytest.mark.slow
def test_site_builds_strictly(tmp_path: Path) -> None:
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        try:
            __import__(module)
        except ImportError:
            pytest.skip(f"{module} is not installed: pip install -e '.[dev]' (mkdocs, mkdocs-material, "
                        "mkdocstrings[python]) to build the site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout[-5000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "store" / "index.html").read_text(encoding="utf-8").count("ClassStore") > 0
    shutil.rmtree(tmp_path / "site")
