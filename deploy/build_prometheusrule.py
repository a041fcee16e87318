"""Build the Prometheus Operator's PrometheusRule from ``dashboards/hirefire-exporter.rules.yml``.

The rules file is the one source of the alerts (``promtool test rules`` and the real-Prometheus tests prove it);
``deploy/kubernetes/prometheusrule.yaml`` is what this script prints from it, never a copy kept by hand
(``tests/test_kubernetes.py`` fails when the two differ). Regenerate it after editing the rules::

    python deploy/build_prometheusrule.py > deploy/kubernetes/prometheusrule.yaml

The rules select the exporter's scrape job in one way only, ``job="hirefire-exporter"`` (:data:`SELECTOR`), as
kube-prometheus mixins do with their ``selector`` setting. For a job of another name (the exporter embedded in a web
app scraped as ``web``), build your own copy with ``--selector``, as a PrometheusRule or, with ``--format rules``, as
a plain rules file for ``rule_files``::

    python deploy/build_prometheusrule.py --selector 'job="web"' --format rules > hirefire-exporter.rules.yml

``--docs`` points the alerts' ``runbook_url`` links (docs/runbooks.md) at your own copy of the documentation site.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "dashboards" / "hirefire-exporter.rules.yml"
OUTPUT = ROOT / "deploy" / "kubernetes" / "prometheusrule.yaml"
#: The label matchers that pick the exporter's scrape job, as the rules file writes them.
SELECTOR = 'job="hirefire-exporter"'
#: The documentation site (mkdocs.yml's ``site_url``), where the rules' ``runbook_url`` annotations point.
DOCS = "https://hirefire-exporter.readthedocs.io/en/latest/"
NAME = "hirefire-exporter"


def load_groups(path: Path = RULES) -> list[dict[str, Any]]:
    """The rule groups of a Prometheus rules file."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]


def _map_strings(value: Any, change: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {key: _map_strings(item, change) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_strings(item, change) for item in value]
    return value


def configured(groups: list[dict[str, Any]], selector: str = SELECTOR, docs: str = DOCS) -> list[dict[str, Any]]:
    """``groups`` with ``selector`` in place of :data:`SELECTOR` (in expressions and the annotations that quote it)
    and ``docs`` in place of :data:`DOCS`."""
    rules = [rule for group in groups for rule in group["rules"]]
    if selector != SELECTOR and not any(SELECTOR in rule["expr"] for rule in rules):
        raise SystemExit(f"no rule selects {SELECTOR}: the rules file and SELECTOR disagree")
    return _map_strings(groups, lambda text: text.replace(SELECTOR, selector).replace(DOCS, docs))


def prometheus_rule(groups: list[dict[str, Any]], name: str = NAME) -> dict[str, Any]:
    """A ``monitoring.coreos.com/v1`` PrometheusRule holding ``groups``."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": NAME}},
        "spec": {"groups": groups},
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (alert descriptions) as literal blocks, as the rules file writes them."""


_Dumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def render(document: dict[str, Any], header: str) -> str:
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1_000_000, allow_unicode=True)
    return "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) + body


def build(selector: str = SELECTOR, docs: str = DOCS, output_format: str = "prometheusrule") -> str:
    """The text this script prints."""
    groups = configured(load_groups(), selector, docs)
    source = RULES.relative_to(ROOT).as_posix()
    flags = [("--selector", selector, SELECTOR), ("--docs", docs, DOCS)]
    words = ["python", "deploy/build_prometheusrule.py"] + [
        w for flag, value, default in flags if value != default for w in (flag, value)
    ]
    command = shlex.join(words)
    if output_format == "rules":
        return render({"groups": groups}, f"Generated from {source} by `{command} --format rules`: do not edit.")
    return render(prometheus_rule(groups), f"Generated from {source} by `{command}`: do not edit.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--selector", default=SELECTOR, help=f"label matchers of the exporter's job (default: {SELECTOR})"
    )
    parser.add_argument("--docs", default=DOCS, help=f"base URL of the documentation site (default: {DOCS})")
    parser.add_argument("--format", default="prometheusrule", choices=["prometheusrule", "rules"], dest="output_format")
    args = parser.parse_args(argv)
    sys.stdout.write(build(args.selector, args.docs, args.output_format))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
