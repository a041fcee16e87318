"""Every alert links a runbook a pager can follow: an absolute URL on the documentation site whose page and anchor
are a heading of the docs; a section of docs/runbooks.md says what the alert means, its likely causes, what to do
and how to check.

Alertmanager needs absolute URLs, so the rules carry the site's address (mkdocs.yml's ``site_url``); the path and
anchor part is checked here against the local pages, with the anchors MkDocs makes (``mkdocs build --strict`` in CI
checks the links between pages the same way).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from docs_samples import ROOT, headings
from markdown.extensions.toc import slugify
from test_dashboards import alert_rules, rules_builder
from test_docs import plain

DOCS = ROOT / "docs"
RUNBOOKS = DOCS / "runbooks.md"
PARTS = ("**Meaning.**", "**Likely causes.**", "**What to do.**", "**How to check.**")


def mkdocs_config() -> dict:
    # mkdocs.yml holds no custom tags: plain YAML.
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def page_of(url_path: str) -> Path:
    """The docs page a site path shows (directory URLs, MkDocs' default: ``runbooks/`` is docs/runbooks.md)."""
    assert mkdocs_config().get("use_directory_urls", True) is True
    assert url_path.endswith("/") and url_path != "/", url_path
    return DOCS / f"{url_path.removesuffix('/')}.md"


def anchors(page: Path) -> set[str]:
    return {slugify(plain(heading), "-") for heading in headings(page)}


def sections(page: Path) -> dict[str, str]:
    """The text under each level-2 heading of a page, by the heading's anchor."""
    parts = re.split(r"^## (.+)$", page.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {slugify(plain(title.strip()), "-"): body for title, body in zip(parts[1::2], parts[2::2])}


def runbook(rule: dict) -> tuple[Path, str]:
    """(docs page, anchor) of an alert's ``runbook_url``, which must be on the documentation site."""
    url = rule["annotations"].get("runbook_url")
    assert url, f"{rule['alert']} has no runbook_url"
    site = rules_builder().DOCS
    assert url.startswith(site), f"{rule['alert']}: {url} is not on the documentation site {site}"
    path, _, anchor = url.removeprefix(site).partition("#")
    return page_of(path), anchor


def test_the_rules_link_the_documentation_site():
    config = mkdocs_config()
    assert rules_builder().DOCS == config["site_url"]
    assert config["site_url"].startswith("https://") and config["site_url"].endswith("/")
    assert "runbooks.md" in str(config["nav"])


def test_every_alert_has_a_runbook_url_that_resolves_to_a_heading_of_the_docs():
    for rule in alert_rules():
        page, anchor = runbook(rule)
        assert page.is_file(), f"{rule['alert']}: no page {page.relative_to(ROOT)}"
        assert anchor == slugify(rule["alert"], "-"), f"{rule['alert']}: link its own heading"
        assert anchor in anchors(page), f"{rule['alert']}: no heading #{anchor} in {page.relative_to(ROOT)}"


def test_each_runbook_says_what_it_means_what_causes_it_what_to_do_and_how_to_check():
    found = sections(RUNBOOKS)
    linked = [runbook(rule) for rule in alert_rules()]
    for page, anchor in linked:
        if page == RUNBOOKS:
            positions = [found[anchor].find(part) for part in PARTS]
            assert all(p >= 0 for p in positions) and positions == sorted(positions), (anchor, PARTS)
    assert set(found) <= {anchor for page, anchor in linked if page == RUNBOOKS}  # no runbook without its alert
