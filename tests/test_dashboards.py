"""What users import on day one: the Grafana dashboard, the alert rules and the KEDA examples, checked statically.

The live proof (Prometheus scraping the exporter, every panel query and alert evaluated) is in
``test_prometheus_e2e.py``; the helpers it shares live here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from conftest import CI

from hirefire_exporter.prometheus import SnapshotCollector
from hirefire_exporter.queue_time import HISTOGRAM

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
DASHBOARD = DASHBOARDS / "hirefire-exporter.json"
RULES = DASHBOARDS / "hirefire-exporter.rules.yml"
RULE_TESTS = DASHBOARDS / "hirefire-exporter.rules.test.yml"
KUBERNETES = ROOT / "examples" / "kubernetes"
DEPLOY = ROOT / "deploy" / "kubernetes"

#: The job label the alert rules and examples assume for the exporter's scrape config.
JOB = "hirefire-exporter"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


# --- helpers shared with test_prometheus_e2e.py -------------------------------------------------------------------


def require_binary(name: str, install: str = "Debian: apt-get install --no-install-recommends prometheus") -> str:
    """Path of a tool (Prometheus's by default): a failure under CI, a skip elsewhere."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed ({install})"
        if CI:
            pytest.fail(message + " (CI=true: a missing tool is a failure, not a skip)")
        pytest.skip(message)
    return path


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel but rows, including those nested in collapsed rows."""
    out = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out += panel.get("panels", [])
        else:
            out.append(panel)
    return out


def panel_targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of the dashboard."""
    return [(panel, target) for panel in panels(dashboard) for target in panel["targets"]]


def query_variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"] if v["type"] == "query"}


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def keda_documents(name: str) -> dict[str, dict[str, Any]]:
    """The documents of a KEDA example, by kind."""
    documents = [d for d in yaml.safe_load_all((KUBERNETES / name).read_text()) if d]
    return {d["kind"]: d for d in documents}


def example_secret() -> dict[str, Any]:
    """The exporter's Secret as deploy/kubernetes/secret.example.yaml shows it."""
    return yaml.safe_load((DEPLOY / "secret.example.yaml").read_text())


def keda_token() -> str:
    """The token KEDA's metrics-api example sends: what its TriggerAuthentication reads from the exporter's Secret."""
    (ref,) = keda_documents("keda-metrics-api.yaml")["TriggerAuthentication"]["spec"]["secretTargetRef"]
    secret = example_secret()
    assert ref["name"] == secret["metadata"]["name"], ref
    return secret["stringData"][ref["key"]]


def rules_builder() -> ModuleType:
    """deploy/build_prometheusrule.py (a script, not a package module), imported."""
    spec = spec_from_file_location("build_prometheusrule", ROOT / "deploy" / "build_prometheusrule.py")
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def label_values_query(query: str) -> tuple[str, str]:
    """Grafana's ``label_values(selector, label)`` as (selector, label)."""
    match = re.fullmatch(r"label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)", query.strip())
    assert match, f"not a label_values() query: {query}"
    return match.group(1), match.group(2)


_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_KEYWORDS |= {"inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, ranges, grouping clauses and functions left out)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("(") or match.group(0).lower() in _KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def used_metric_names() -> dict[str, set[str]]:
    """Every metric name the dashboard, the rules and the KEDA prometheus example read, by where it is read."""
    dashboard = load_dashboard()
    used: dict[str, set[str]] = {}
    for panel, target in panel_targets(dashboard):
        used[f"panel {panel['title']!r} {target['refId']}"] = metric_names(target["expr"])
    for name, variable in query_variables(dashboard).items():
        used[f"variable {name}"] = metric_names(label_values_query(variable["query"])[0])
    for rule in alert_rules():
        used[f"alert {rule['alert']}"] = metric_names(rule["expr"])
    trigger = keda_documents("keda-prometheus.yaml")["ScaledObject"]["spec"]["triggers"][0]
    used["keda-prometheus.yaml"] = metric_names(trigger["metadata"]["query"])
    for trigger in keda_documents("keda-busy-guard.yaml")["ScaledObject"]["spec"]["triggers"]:
        used[f"keda-busy-guard.yaml {trigger['name']}"] = metric_names(trigger["metadata"]["query"])
    return used


def snapshot_metric_names() -> set[str]:
    """The gauges of the exporter's collector (``describe()`` does no I/O)."""
    return {family.name for family in SnapshotCollector(None).describe()}


def histogram_series_names() -> set[str]:
    """The series of the web middleware's request queue-time histogram (``_bucket``, ``_sum``, ``_count``...)."""
    return {sample.name for family in HISTOGRAM.collect() for sample in family.samples}


def exported_metric_names() -> set[str]:
    """Every series name the exporter exports, plus Prometheus's own ``up`` for the scrape."""
    return snapshot_metric_names() | histogram_series_names() | {"up"}


# --- the dashboard -------------------------------------------------------------------------------------------------


def test_dashboard_imports_through_ui_and_provisioning_alike():
    dashboard = load_dashboard()
    text = DASHBOARD.read_text()
    # No export-for-sharing leftovers: provisioning cannot fill __inputs, so the data source is a variable instead.
    assert "__inputs" not in dashboard and "__requires" not in dashboard
    assert "${DS_" not in text
    assert dashboard["id"] is None
    assert dashboard["uid"] == "hirefire-exporter"
    assert dashboard["title"] == "HireFire exporter"
    (source,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert source["name"] == "datasource" and source["query"] == "prometheus"


def test_dashboard_has_job_instance_proc_and_queue_variables_on_the_datasource_variable():
    variables = query_variables(load_dashboard())
    assert list(variables) == ["job", "instance", "proc", "queue"]
    assert {name: label_values_query(v["query"])[1] for name, v in variables.items()} == {
        "job": "job",
        "instance": "instance",
        "proc": "proc",
        "queue": "queue",
    }
    for name, variable in variables.items():
        assert variable["datasource"] == DATASOURCE, name
        assert variable["definition"] == variable["query"], name
        if variable["includeAll"]:
            assert variable["allValue"] == ".*", name  # so that All also matches procs and queues added later


def test_every_panel_query_filters_on_the_variables_and_reads_the_datasource_variable():
    dashboard = load_dashboard()
    for panel, target in panel_targets(dashboard):
        where = f"panel {panel['title']!r} {target['refId']}"
        assert panel["datasource"] == DATASOURCE and target["datasource"] == DATASOURCE, where
        selectors = re.findall(r"([A-Za-z_:][\w:]*)\{([^}]*)\}", target["expr"])
        assert selectors, where
        for metric, selector in selectors:
            assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, where
            if metric.startswith(("hirefire_proc_", "hirefire_queue_")):
                assert 'proc=~"$proc"' in selector, where
            if metric.startswith("hirefire_queue_"):
                assert 'queue=~"$queue"' in selector, where
        assert target["legendFormat"], where


def test_every_panel_reads_at_a_glance():
    """Title, description, unit and thresholds on every panel, and the unit each kind of figure needs."""
    dashboard = load_dashboard()
    ids = [p["id"] for p in dashboard["panels"]] + [n["id"] for p in dashboard["panels"] for n in p.get("panels", [])]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        defaults = panel["fieldConfig"]["defaults"]
        assert panel["title"] and panel["description"], panel["title"]
        assert defaults["unit"], panel["title"]
        assert defaults["thresholds"]["steps"][0]["value"] is None, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    units = {p["title"]: p["fieldConfig"]["defaults"]["unit"] for p in panels(dashboard)}
    assert units == {
        "Jobs HireFire sees, now": "short",
        "Jobs HireFire sees per proc": "short",
        "Oldest waiting job per proc": "s",
        "Backlog growth": "suffix: jobs/min",
        "Jobs per queue and state": "short",
        "Waiting jobs per queue, now": "short",
        "Oldest waiting job per queue": "s",
        "Queues found": "none",
        "Workers online": "short",
        "Worker utilization": "percentunit",
        "Busy workers vs jobs": "short",
        "Proc up": "none",
        "Exporter scraped": "none",
        "Snapshot age": "s",
        "Reading age": "s",
        "Collection duration": "s",
        "Processes serving the shared snapshot": "short",
        "Request queue time": "s",
        "Requests measured": "reqps",
    }


def test_dashboard_panels_do_not_overlap():
    dashboard = load_dashboard()
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_alert_thresholds_are_drawn_on_the_panels_that_show_them():
    steps = {
        p["title"]: [s["value"] for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"][1:]]
        for p in panels(load_dashboard())
    }
    rules = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert rules["HireFireOldestJobTooOld"].endswith("> 300") and 300 in steps["Oldest waiting job per queue"]
    assert rules["HireFireReadingStale"].endswith("> 30") and 30 in steps["Reading age"]
    assert rules["HireFireBacklogGrowing"].endswith("* 60 > 5") and 5 in steps["Backlog growth"]
    assert rules["HireFireJobsWaitingNoWorker"].endswith("hirefire_workers == 0") and 1 in steps["Workers online"]


def test_grafana_provisioning_example_is_a_file_provider():
    provider = yaml.safe_load((DASHBOARDS / "provisioning" / "dashboards.yaml").read_text())
    assert provider["apiVersion"] == 1
    (entry,) = provider["providers"]
    assert entry["type"] == "file" and entry["options"]["path"]
    source = yaml.safe_load((DASHBOARDS / "provisioning" / "datasource.yaml").read_text())
    assert source["datasources"][0]["type"] == "prometheus"


# --- metric names --------------------------------------------------------------------------------------------------


def test_metric_name_extraction_ignores_labels_functions_and_grouping():
    expr = (
        'histogram_quantile(0.9, sum by (le) (rate(a_bucket{job=~"$job", x="y{z}"}[$__rate_interval]))) '
        "/ on (job) group_left (instance) b_total and time() - c offset 5m > 1e3"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}
    assert metric_names('absent(up{job="hirefire-exporter"})') == {"up"}


def test_every_metric_name_in_dashboard_rules_and_examples_is_exported():
    exported = exported_metric_names()
    used = used_metric_names()
    unknown = {where: names - exported for where, names in used.items() if names - exported}
    assert unknown == {}
    assert all(used.values()), [where for where, names in used.items() if not names]


def test_the_dashboard_shows_every_metric_the_exporter_exports():
    dashboard_names = set().union(*(names for where, names in used_metric_names().items() if where.startswith("panel")))
    assert snapshot_metric_names() <= dashboard_names
    assert dashboard_names & histogram_series_names() == {
        "hirefire_request_queue_seconds_bucket",
        "hirefire_request_queue_seconds_sum",
        "hirefire_request_queue_seconds_count",
    }


# --- alert rules ---------------------------------------------------------------------------------------------------


def test_alert_rules_cover_the_issue_with_runbook_descriptions():
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert list(rules) == [
        "HireFireExporterAbsent",
        "HireFireExporterDown",
        "HireFireProcDown",
        "HireFireReadingStale",
        "HireFireBacklogGrowing",
        "HireFireOldestJobTooOld",
        "HireFireJobsWaitingNoWorker",
    ]
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        description = rule["annotations"]["description"]
        assert rule["annotations"]["summary"], name
        assert "\nCheck: " in description and "\nFix: " in description, name
    assert rules["HireFireExporterAbsent"]["expr"] == f'absent(up{{job="{JOB}"}})'
    assert rules["HireFireExporterDown"]["expr"] == f'up{{job="{JOB}"}} == 0'


def test_runbook_urls_point_at_a_heading_of_the_docs_page_they_name():
    from docs_samples import headings
    from markdown.extensions.toc import slugify  # the site's heading anchors (test_docs checks GitHub's agree)

    for rule in alert_rules():
        url = rule["annotations"].get("runbook_url")
        if url is None:
            continue
        match = re.fullmatch(r"https://hirefire-exporter\.readthedocs\.io/en/latest/([\w/-]+)/#([\w-]+)", url)
        assert match, (rule["alert"], url)
        page = ROOT / "docs" / f"{match.group(1)}.md"
        assert match.group(2) in {slugify(text, "-") for text in headings(page)}, (rule["alert"], url)


def test_promtool_checks_the_rules_and_the_example_config():
    promtool = require_binary("promtool")
    for args in (["check", "rules", RULES.name], ["check", "config", "prometheus.example.yml"]):
        result = subprocess.run([promtool, *args], cwd=DASHBOARDS, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_promtool_unit_tests_fire_and_silence_every_alert():
    promtool = require_binary("promtool")
    tests = yaml.safe_load(RULE_TESTS.read_text())
    checked = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"] if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"] if not case["exp_alerts"]}
    names = {rule["alert"] for rule in alert_rules()}
    assert checked == names and quiet == names
    result = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name], cwd=DASHBOARDS, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# --- KEDA examples -------------------------------------------------------------------------------------------------


def _metadata_is_strings(trigger: dict[str, Any]) -> None:
    # ScaledObject trigger metadata is a map of strings: an unquoted 10 is rejected by the API server.
    assert all(isinstance(value, str) for value in trigger["metadata"].values()), trigger["metadata"]


def test_keda_prometheus_example_is_a_scaled_object_on_the_hirefire_count():
    documents = keda_documents("keda-prometheus.yaml")
    assert list(documents) == ["ScaledObject"]
    scaled = documents["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    _metadata_is_strings(trigger)
    assert trigger["metadata"]["query"] == f'max(hirefire_proc_jobs{{job="{JOB}", proc="worker"}})'
    assert trigger["metadata"]["ignoreNullValues"] == "false"  # an unreadable broker is an error, not 0
    assert scaled["spec"]["fallback"]["replicas"] >= 1


def test_keda_busy_guard_example_never_scales_below_the_busy_workers():
    """Two triggers: the HPA KEDA feeds takes the largest replica count any metric asks for, so ceil(busy / 1) is a
    floor under ceil(jobs / 10)."""
    (scaled,) = keda_documents("keda-busy-guard.yaml").values()
    assert scaled["kind"] == "ScaledObject" and scaled["apiVersion"] == "keda.sh/v1alpha1"
    jobs, busy = scaled["spec"]["triggers"]
    for trigger in (jobs, busy):
        assert trigger["type"] == "prometheus"
        _metadata_is_strings(trigger)
        assert trigger["metadata"]["ignoreNullValues"] == "false"
    assert jobs["metadata"]["query"] == f'max(hirefire_proc_jobs{{job="{JOB}", proc="worker"}})'
    assert busy["metadata"]["query"] == f'max(hirefire_workers_busy{{job="{JOB}", proc="worker"}})'
    assert busy["metadata"]["threshold"] == "1"
    assert scaled["spec"]["fallback"]["replicas"] >= 1


def test_keda_metrics_api_example_keeps_the_token_in_a_secret():
    documents = keda_documents("keda-metrics-api.yaml")
    assert list(documents) == ["TriggerAuthentication", "ScaledObject"]
    secret, auth, scaled = example_secret(), documents["TriggerAuthentication"], documents["ScaledObject"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "metrics-api"
    _metadata_is_strings(trigger)
    meta = trigger["metadata"]
    assert (meta["authMode"], meta["method"], meta["keyParamName"]) == ("apiKey", "header", "HireFire-Token")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "apiKey" and ref["name"] == secret["metadata"]["name"]
    assert ref["key"] == "HIREFIRE_TOKEN" and ref["key"] in secret["stringData"]  # the exporter's own token
    assert "token" not in meta["url"].split("/")[-1]  # the path form would put the token in the ScaledObject
