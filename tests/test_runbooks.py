"""Every alert links a runbook a pager can follow: an absolute URL on the documentation site whose page and anchor
are a section of docs/runbooks.md saying what the alert means, its likely causes, what to do and how to check.

Alertmanager needs absolute URLs, so the rules carry the site's address (mkdocs.yml's ``site_url``); the path and
anchor part is checked here against the local docs, with the anchors MkDocs makes (``mkdocs build --strict`` in CI
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

RUNBOOKS = ROOT / "docs" / "runbooks.md"
PARTS = ("**Meaning.**", "**Likely causes.**", "**What to do.**", "**How to check.**")


def mkdocs_config() -> dict:
    # mkdocs.yml holds no custom tags: plain YAML.
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def site_page(page: Path) -> str:
    """The URL path of a docs page on the site, relative to ``site_url`` (directory URLs, MkDocs' default)."""
    assert mkdocs_config().get("use_directory_urls", True) is True
    return page.relative_to(ROOT / "docs").with_suffix("").as_posix() + "/"


def sections(page: Path) -> dict[str, str]:
    """The text under each level-2 heading of a page, by the heading's anchor."""
    parts = re.split(r"^## (.+)$", page.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {slugify(plain(title.strip()), "-"): body for title, body in zip(parts[1::2], parts[2::2])}


def test_every_alert_has_a_runbook_url_on_the_docs_site():
    config = mkdocs_config()
    assert config["site_url"].startswith("https://") and config["site_url"].endswith("/")
    base = rules_builder().RUNBOOKS
    assert base == config["site_url"] + site_page(RUNBOOKS)
    assert "runbooks.md" in str(config["nav"])
    for rule in alert_rules():
        url = rule["annotations"].get("runbook_url")
        assert url, f"{rule['alert']} has no runbook_url"
        page, _, anchor = url.partition("#")
        assert page == base, rule["alert"]
        assert anchor == slugify(rule["alert"], "-"), rule["alert"]


def test_each_runbook_url_resolves_to_a_section_that_says_what_to_do():
    found = sections(RUNBOOKS)
    anchors = {slugify(plain(heading), "-") for heading in headings(RUNBOOKS)}
    for rule in alert_rules():
        anchor = rule["annotations"]["runbook_url"].partition("#")[2]
        assert anchor in anchors and anchor in found, f"{rule['alert']}: no heading #{anchor} in docs/runbooks.md"
        body = found[anchor]
        positions = [body.find(part) for part in PARTS]
        assert all(p >= 0 for p in positions) and positions == sorted(positions), (rule["alert"], PARTS)
    assert set(found) == {slugify(rule["alert"], "-") for rule in alert_rules()}  # no runbook without its alert
