"""The code samples of README.md and docs/: parsed once, shared by test_docs.py and test_example.py.

Conventions (docs/development.md explains them to authors):

- every fenced block names its language: ``python``, ``toml``, ``yaml``, ``json``, ``sh``, ``procfile`` or ``redis``;
- a block whose first line is a comment naming a file (``# myapp/procs.py``, ``# hirefire.toml``) is that file of the
  reader's project: the tests write every such block of a page into one project directory, which is on the import
  path and is the working directory for the page's other samples; one page may show one file twice only identically;
- ``<!-- test: skip <reason> -->`` on the line before a block leaves it out (keep this rare).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LANGUAGES = {"python", "toml", "yaml", "json", "sh", "procfile", "redis"}

_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w-]*)\s*$")
_SKIP = re.compile(r"^\s*<!--\s*test:\s*skip\b\s*(.*?)\s*-->\s*$")
_FILE_COMMENT = re.compile(r"^#\s+([\w./-]+\.(?:py|toml|ya?ml))\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    skip: str | None  # the reason given in <!-- test: skip ... -->, None when the block is tested
    section: str  # the nearest heading above the block

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def file(self) -> str | None:
        """The project file this block is (``myapp/procs.py``), from its first line, or None."""
        first = self.code.split("\n", 1)[0]
        match = _FILE_COMMENT.match(first)
        return match.group(1) if match else None

    @property
    def module(self) -> str | None:
        """The module name of a Python file block (``myapp.procs``)."""
        if self.language != "python" or not self.file:
            return None
        return self.file.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def page_name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a page, in order."""
    out: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    section, index = "", 0
    while index < len(lines):
        line = lines[index]
        heading = _HEADING.match(line)
        if heading:
            section = heading.group(2)
        fence = _FENCE.match(line)
        if not fence:
            index += 1
            continue
        indent, marker, language = fence.groups()
        skip = None
        if index > 0 and (match := _SKIP.match(lines[index - 1])):
            skip = match.group(1) or ""
        body: list[str] = []
        index += 1
        while index < len(lines) and lines[index].strip() != marker:
            body.append(lines[index].removeprefix(indent))
            index += 1
        out.append(Block(page, index - len(body), language, "\n".join(body) + "\n", skip, section))
        index += 1
    return out


def headings(page: Path) -> list[str]:
    """The text of every heading outside code blocks."""
    out, fenced = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and (match := _HEADING.match(line)):
            out.append(match.group(2))
    return out


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in blocks(page)]


def shell_commands(code: str) -> list[list[str]]:
    """The simple commands of a shell sample: comments dropped, lines joined at ``\\``, split at ``&&``, ``||``,
    ``;`` and ``|``. Quoting is kept out of the words, as the shell does; ``$VAR`` stays as written."""
    text = re.sub(r"\\\n", " ", code)
    commands: list[list[str]] = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        current: list[str] = []
        for token in lexer:
            if token and set(token) <= set(";&|"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
        if current:
            commands.append(current)
    return commands
