"""MkDocs hooks: build the site from the pages exactly as the repository shows them.

The pages are written to be read in the repository: README.md links ``docs/configuration.md``, a page under docs/
links ``../README.md`` and repository files such as ``../dashboards/hirefire-exporter.json``. For the site:

- README.md becomes the home page (``index.md``);
- every relative link is rewritten to the site's path of its target, so MkDocs' own validation (``--strict``, with
  anchors) checks links and headings between the pages, README included;
- a link to a repository file outside docs/ must name a file that exists (else a warning, which ``--strict`` turns
  into a failure); the file is copied into the site under ``repository/``, so the link works there too.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path

from mkdocs.structure.files import File, Files, InclusionLevel

log = logging.getLogger("mkdocs.hooks.repository_links")

ROOT = Path(__file__).resolve().parent
README = "README.md"
HOME = "index.md"
COPIES = "repository"

#: An inline Markdown link or image target: ``[text](target)``.
_LINK = re.compile(r"(\]\()([^)\s]+)(\))")
_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")


class _Copy(File):
    """A repository file copied into the site verbatim (a Markdown file there is a file, not a page)."""

    def is_documentation_page(self) -> bool:
        return False


def _repository_path(src_uri: str) -> str:
    return README if src_uri == HOME else f"docs/{src_uri}"


def _site_path(repository_path: str) -> str | None:
    """Where a repository file is in the site: a page, or ``None`` for a file outside docs/ (copied)."""
    if repository_path == README:
        return HOME
    if repository_path.startswith("docs/"):
        return repository_path.removeprefix("docs/")
    return None


def _targets(markdown: str) -> Iterator[tuple[int, re.Match[str]]]:
    """(line number, match) of every link target outside fenced code blocks and code spans."""
    fenced = False
    for number, line in enumerate(markdown.splitlines(keepends=True)):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        spans = [m.span() for m in _CODE_SPAN.finditer(line)]
        for match in _LINK.finditer(line):
            if not any(start <= match.start() < end for start, end in spans):
                yield number, match


def _resolve(page_repository_path: str, target: str) -> tuple[str, str] | None:
    """(repository path, '#anchor' or '') of a relative link, ``None`` for external links and same-page anchors."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
        return None
    path, _, anchor = target.partition("#")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(page_repository_path), path))
    return resolved, f"#{anchor}" if anchor else ""


def on_files(files: Files, config) -> Files:
    readme = File.generated(config, HOME, abs_src_path=str(ROOT / README))
    files.append(readme)
    copied: set[str] = set()
    for page in files.documentation_pages():
        page_path = _repository_path(page.src_uri)
        for _, match in _targets(Path(page.abs_src_path).read_text(encoding="utf-8")):
            resolved = _resolve(page_path, match.group(2))
            if resolved is None or _site_path(resolved[0]) is not None or resolved[0] in copied:
                continue
            source = ROOT / resolved[0]
            if resolved[0].startswith("../") or not source.is_file():
                continue  # reported by on_page_markdown, with the page's name
            files.append(
                _Copy.generated(
                    config, f"{COPIES}/{resolved[0]}", abs_src_path=str(source), inclusion=InclusionLevel.INCLUDED
                )
            )
            copied.add(resolved[0])
    return files


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    page_path = _repository_path(page.file.src_uri)
    lines = markdown.splitlines(keepends=True)
    for number, match in sorted(_targets(markdown), key=lambda item: (item[0], -item[1].start())):
        resolved = _resolve(page_path, match.group(2))
        if resolved is None:
            continue
        path, anchor = resolved
        site = _site_path(path)
        if site is None:
            if path.startswith("../") or not (ROOT / path).is_file():
                log.warning(f"{page_path} links to {match.group(2)!r}: no such file in the repository")
                continue
            site = f"{COPIES}/{path}"
        relative = posixpath.relpath(site, posixpath.dirname(page.file.src_uri) or ".")
        line = lines[number]
        lines[number] = line[: match.start(2)] + relative + anchor + line[match.end(2) :]
    return "".join(lines)
