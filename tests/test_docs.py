"""Every code sample of README.md and docs/ is run, loaded or checked against the real thing; a wrong sample fails.

Python samples run (project files are imported, fragments executed; every web app they build must answer
``/hirefire/test``), TOML samples are loaded as the exporter loads its settings file (procs built and validated),
dotted paths resolve, ``hirefire-exporter`` commands parse with the real command line, YAML and JSON parse, the
Prometheus configuration passes ``promtool``, the alert-rule commands run, and the Redis ACL lets every Redis backend
read. The conventions are in tests/docs_samples.py. Links and heading anchors are checked by ``mkdocs build --strict``
(.ci/run); headings are checked here to anchor alike on GitHub and in the site.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from docs_samples import LANGUAGES, PAGES, ROOT, Block, all_blocks, blocks, headings, page_name, shell_commands
from test_dashboards import require_binary

from hirefire_exporter import cli
from hirefire_exporter.app import create_app
from hirefire_exporter.procs import redis_script
from hirefire_exporter.procs.base import PROC_NAME

RUNNER = Path(__file__).with_name("docs_runner.py")
PAGE_IDS = [page_name(page) for page in PAGES]
#: What the samples' placeholders stand for when a sample is checked.
ENVIRONMENT = {"PORT": "9180", "HIREFIRE_TOKEN": "docs-token"}
#: Programs in samples that cannot run here (a Heroku app, a cluster, a container engine, a Redis of the reader's, the
#: reader's own processes in a Procfile): left unchecked.
UNCHECKED = {"heroku", "kubectl", "docker", "redis-cli", "grep", "gunicorn", "rq"}
#: ``prog[extras]`` or ``.[extras]`` in a pip command.
_EXTRAS = re.compile(r"^(?:\.|hirefire-exporter)\[([\w,\s-]+)\]")
_DOTTED = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+$")
_INLINE_PATH = re.compile(r"`(hirefire_exporter(?:\.[A-Za-z_]\w*)+)`")


def sampled(language: str) -> list[Block]:
    return [block for block in all_blocks() if block.language == language and block.skip is None]


def ids(items: list[Block]) -> list[str]:
    return [block.where for block in items]


def project(page: Path, directory: Path) -> Path:
    """Write the page's project files (blocks whose first line names a file) into ``directory``."""
    files: dict[str, Block] = {}
    for block in blocks(page):
        if block.file is None or block.skip is not None:
            continue
        if block.file in files and files[block.file].code != block.code:
            pytest.fail(f"{block.where}: {block.file} is shown differently at {files[block.file].where}")
        files[block.file] = block
        path = directory / block.file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.code, encoding="utf-8")
        if block.language == "python":
            for parent in path.relative_to(directory).parents:
                if parent != Path("."):
                    (directory / parent / "__init__.py").touch()
    return directory


def top_packages(page: Path) -> set[str]:
    return {block.module.split(".")[0] for block in blocks(page) if block.module}


# --- every block is tested ------------------------------------------------------------------------------------------


def test_every_code_block_names_a_language_the_tests_check():
    wrong = [f"{b.where}: {b.language or '(none)'}" for b in all_blocks() if b.language not in LANGUAGES]
    assert not wrong, f"give each block one of {sorted(LANGUAGES)}: {wrong}"


def test_skipped_blocks_say_why_and_stay_rare():
    skipped = [b for b in all_blocks() if b.skip is not None]
    assert all(b.skip for b in skipped), [b.where for b in skipped if not b.skip]
    assert len(skipped) <= 3, [b.where for b in skipped]


# --- Python and TOML: run in a process of the page's own, with its project files -----------------------------------


def dotted_paths(page: Path) -> list[tuple[str, str]]:
    """(where, path) of every dotted path a page hands to the exporter or a tool: string constants of its Python
    samples and TOML values naming a module of the page's project or hirefire_exporter, ``--procs`` and
    ``huey_consumer`` arguments, and every `hirefire_exporter....` in its text."""
    packages = top_packages(page) | {"hirefire_exporter"}
    found: list[tuple[str, str]] = []

    def add(where: str, value: object) -> None:
        if isinstance(value, str) and _DOTTED.match(value) and value.split(".")[0] in packages:
            found.append((where, value))

    for block in blocks(page):
        if block.skip is not None:
            continue
        if block.language == "python":
            for node in ast.walk(ast.parse(block.code)):
                if isinstance(node, ast.Constant):
                    add(block.where, node.value)
        elif block.language == "toml":
            stack: list[object] = [tomllib.loads(block.code)]
            while stack:
                item = stack.pop()
                if isinstance(item, dict):
                    stack += item.values()
                elif isinstance(item, list):
                    stack += item
                else:
                    add(block.where, item)
        elif block.language in ("sh", "procfile"):
            for command in commands_of(block):
                if "--procs" in command[:-1]:
                    for path in command[command.index("--procs") + 1].split(","):
                        found.append((block.where, path))
                if command[0] == "huey_consumer" and len(command) > 1:
                    found.append((block.where, command[1]))
    text = page.read_text(encoding="utf-8")
    for match in _INLINE_PATH.finditer(text):
        found.append((f"{page_name(page)}:{text.count(chr(10), 0, match.start()) + 1}", match.group(1)))
    return found


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_python_and_toml_samples_run_and_their_dotted_paths_resolve(page, tmp_path, redis_url):
    directory = project(page, tmp_path)
    jobs = []
    for block in blocks(page):
        if block.skip is not None:
            continue
        if block.language == "python":
            jobs.append({"kind": "python", "where": block.where, "code": block.code, "module": block.module})
        elif block.language == "toml":
            file = block.file or f"sample-{block.line}.toml"
            (directory / file).write_text(block.code, encoding="utf-8")
            jobs.append({"kind": "toml", "where": block.where, "file": file})
    jobs += [{"kind": "resolve", "where": f"{where}: {path}", "path": path} for where, path in dotted_paths(page)]
    if not jobs:
        return  # nothing on this page to run
    env = {**os.environ, **ENVIRONMENT, "REDIS_URL": redis_url}
    env.pop("HIREFIRE_PROCS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, str(RUNNER), str(directory), str(ROOT)],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        cwd=directory,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    failures = [f"{r['where']}\n{r['error']}" for r in results if r["error"]]
    assert not failures, "\n\n".join(failures)
    assert len(results) == len(jobs)


def test_a_wrong_sample_fails(tmp_path):
    """The runner reports a sample that raises, a web app that does not serve HireFire's routes, a TOML typo and a
    dotted path that does not resolve: a wrong sample cannot pass."""
    (tmp_path / "bad.toml").write_text('[[procs]]\nname = "worker"\nbackend = "rq"\nqueue = ["default"]\n')
    jobs = [
        {"kind": "python", "where": "raises", "code": "import hirefire_exporter.nope\n", "module": None},
        {"kind": "python", "where": "no routes", "code": "def app(environ, start_response):\n    return []\n"},
        {"kind": "toml", "where": "typo", "file": "bad.toml"},
        {"kind": "resolve", "where": "path", "path": "hirefire_exporter.procs.rq.RQProcess"},
    ]
    done = subprocess.run(
        [sys.executable, str(RUNNER), str(tmp_path), str(ROOT)],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    results = json.loads(done.stdout.strip().splitlines()[-1])
    errors = {r["where"]: r["error"] for r in results}
    assert "No module named 'hirefire_exporter.nope'" in errors["raises"]
    assert "/hirefire/test" in errors["no routes"]
    assert "queue" in errors["typo"]
    assert "RQProcess" in errors["path"]


# --- shell and Procfile samples -------------------------------------------------------------------------------------


def commands_of(block: Block) -> list[list[str]]:
    if block.language == "procfile":
        lines = [line for line in block.code.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        return [cmd for line in lines for cmd in shell_commands(line.partition(":")[2])]
    return shell_commands(block.code)


def expand(word: str) -> str:
    return re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: ENVIRONMENT.get(m.group(1) or m.group(2), m.group(0)), word)


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """The real ``hirefire-exporter`` parser; an unknown flag or bad value is a failure naming it."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return cli._parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"hirefire-exporter {shlex.join(argv)}: {stderr.getvalue().strip()}") from None


def extras() -> set[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(data["project"]["optional-dependencies"])


def check_command(command: list[str], block: Block, cwd: Path, project_dir: Path) -> Path:
    """Check one command of a sample; returns the working directory for the next one (``cd``)."""
    program, args = command[0], [expand(word) for word in command[1:]]
    if program == "hirefire-exporter":
        options = parse_cli(args)
        if options.config:
            assert (project_dir / options.config).is_file(), f"--config {options.config}: no such sample on the page"
    elif program == "pip":
        assert args[:1] == ["install"], command
        for word in args[1:]:
            if match := _EXTRAS.match(word):
                unknown = {e.strip() for e in match.group(1).split(",")} - extras()
                assert not unknown, f"{shlex.join(command)}: no extra {sorted(unknown)} in pyproject.toml"
    elif program == "python":
        script = cwd / args[0]
        assert script.is_file(), f"{shlex.join(command)}: no {args[0]} in the repository"
        flags = {word.partition("=")[0] for word in args[1:] if word.startswith("--")}
        if flags:
            usage = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=cwd)
            missing = {flag for flag in flags if flag not in usage.stdout}
            assert usage.returncode == 0 and not missing, f"{shlex.join(command)}: {args[0]} has no {missing}"
    elif program == "huey_consumer":
        assert len(args) == 1, command  # the dotted path is resolved with the page's other dotted paths
    elif program == "curl":
        check_curl(args)
    elif program == "promtool":
        done = subprocess.run([require_binary("promtool"), *args], capture_output=True, text=True, cwd=cwd)
        assert done.returncode == 0, f"{shlex.join(command)} in {cwd}:\n{done.stdout}{done.stderr}"
    elif program == "pytest":
        assert not args and "\npytest\n" in (ROOT / ".ci" / "run").read_text(), "CI must run the same test command"
    elif program == "cd":
        cwd = cwd / args[0]
        assert cwd.is_dir(), f"cd {args[0]}: no such directory in the repository"
    else:
        assert program in UNCHECKED, f"{block.where}: the tests do not know how to check {program!r}"
    return cwd


def check_curl(args: list[str]) -> None:
    """A request to one of the exporter's routes must be one it answers (the placeholders standing for the token)."""
    url = next(word for word in args if "localhost" in word or "://" in word)
    path = "/" + url.split("://")[-1].partition("/")[2].partition("?")[0]
    if not path.startswith(("/hirefire", "/metrics", "/healthz")):
        return  # the reader's own app
    path = re.sub(r"<[^>]*token[^>]*>|\$HIREFIRE_TOKEN|docs-token", "development", path, flags=re.IGNORECASE)
    headers = {}
    for flag, value in itertools.pairwise(args):
        if flag == "-H":
            name, _, header = value.partition(":")
            headers[name] = header.strip()
    from werkzeug.test import Client

    from hirefire_exporter.procs import Proc

    class One(Proc):
        name, queues = "worker", ["default"]

        def quantity(self, **kwargs):
            return 1

    app = create_app([One()], token=None)
    try:
        response = Client(app).get(path, headers=headers)
        assert response.status_code == 200, f"curl {url}: the exporter answers {response.status_code}"
    finally:
        app.collection.close()


SHELL = [b for b in all_blocks() if b.language in ("sh", "procfile") and b.skip is None]


@pytest.mark.parametrize("block", SHELL, ids=ids(SHELL))
def test_shell_commands_are_ones_the_tools_accept(block, tmp_path):
    project_dir = project(block.page, tmp_path)
    if block.language == "procfile":
        for line in block.code.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                name, colon, command = line.partition(":")
                assert colon and PROC_NAME.fullmatch(name) and command.strip(), f"{block.where}: not a Procfile line"
    cwd = ROOT
    for command in commands_of(block):
        cwd = check_command(command, block, cwd, project_dir)


def test_a_wrong_command_fails(tmp_path):
    block = Block(ROOT / "README.md", 1, "sh", "", None, "")
    for command, message in [
        (["hirefire-exporter", "serve", "--max-age", "5", "--portt", "1"], "--portt"),
        (["hirefire-exporter", "serve", "--config", "nope.toml"], "nope.toml"),
        (["pip", "install", "-e", ".[rq,celeryy]"], "celeryy"),
        (["python", "bench/soak.py", "--durations", "1"], "--durations"),
        (["curl", "localhost:8000/hirefire/development/infos"], "404"),
        (["make", "all"], "'make'"),
    ]:
        with pytest.raises(AssertionError, match=re.escape(message)):
            check_command(command, block, ROOT, tmp_path)


def test_every_command_line_option_is_in_the_settings_table_and_back():
    """configuration.md's settings table names every option of ``serve`` and ``collect``, and only real ones."""
    parser = cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    real = {
        option
        for sub in commands.choices.values()
        for action in sub._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    table = text[text.index("## Settings") : text.index("## The standalone exporter")]
    documented = set(re.findall(r"`(--[a-z-]+)`", table))
    assert real - documented == set(), "options missing from docs/configuration.md's settings table"
    assert documented - real == set(), "options in docs/configuration.md's settings table that do not exist"


def test_every_setting_s_environment_variable_and_toml_key_is_in_the_settings_table_and_back():
    """One row per setting of config.OPTIONS, naming its TOML key and its environment variable."""
    from hirefire_exporter.config import OPTIONS

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    table = text[text.index("## Settings") : text.index("## The standalone exporter")]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ") and "`" in line]
    documented = {(row[3].strip(" `"), tuple(re.findall(r"`([a-z_]+)`", row[1]))) for row in rows}
    assert documented == {(o.env, (o.name,) if o.toml else ()) for o in OPTIONS}


# --- YAML, JSON, Redis ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", sampled("yaml"), ids=ids(sampled("yaml")))
def test_yaml_samples_parse_and_prometheus_accepts_its_configuration(block, tmp_path):
    documents = list(yaml.safe_load_all(block.code))
    assert documents and all(d is not None for d in documents)
    if any(isinstance(d, dict) and "scrape_configs" in d for d in documents):
        config = tmp_path / "prometheus.yml"
        config.write_text(block.code)
        for rule_file in documents[0].get("rule_files", []):
            shutil.copy(ROOT / "dashboards" / Path(rule_file).name, tmp_path / rule_file)
        done = subprocess.run(
            [require_binary("promtool"), "check", "config", str(config)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("block", sampled("json"), ids=ids(sampled("json")))
def test_json_samples_parse(block):
    json.loads(block.code)


def test_the_read_only_redis_user_lets_every_redis_backend_read(private_redis, private_redis_server):
    """operations.md's ACL: a user with only read and connection commands reads every Redis backend's queues."""
    (block,) = sampled("redis")
    host, port = private_redis_server
    users = []
    for command in block.code.strip().splitlines():
        words = shlex.split(command)
        private_redis.execute_command(*words)
        if words[:2] == ["ACL", "SETUSER"]:
            users.append((words[2], next(w[1:] for w in words if w.startswith(">"))))
    ((user, password),) = users
    url = f"redis://{user}:{password}@{host}:{port}/0"
    try:
        from hirefire_exporter.loading import proc_from_table

        private_redis.rpush("rq:queue:default", "job")  # a live job: its hash exists (an id without one is expired)
        private_redis.hset("rq:job:job", mapping={"enqueued_at": "2026-12-01T00:00:00.000000Z", "status": "queued"})
        dramatiq_message = {"queue_name": "default", "actor_name": "a", "args": [], "kwargs": {}, "options": {}}
        dramatiq_message |= {"message_id": "m", "message_timestamp": 1764547200000}  # 2025-12-01
        for key, eta in (("dramatiq:default.msgs", None), ("dramatiq:default.DQ.msgs", 1)):  # waiting, and due
            body = json.dumps({**dramatiq_message, "options": {"eta": eta}} if eta else dramatiq_message)
            private_redis.hset(key, "m", body)
        private_redis.rpush("dramatiq:default", "m")
        tables = [
            {"backend": "rq"},
            {"backend": "celery"},
            {"backend": "huey", "storage": "redis"},
            {"backend": "huey", "storage": "priority_redis"},
            {"backend": "hotqueue"},
            {"backend": "queues"},
            {"backend": "dramatiq"},
        ]
        procs = [
            proc_from_table({"name": f"p{i}", "url": url, "queues": ["default"], **table}, i)
            for i, table in enumerate(tables)
        ]
        app = create_app(procs)
        try:
            snapshot = app.collection.collect()
        finally:
            app.collection.close()
        failed = {status.name: status.error for status in snapshot.procs if not status.up}
        assert not failed
        assert snapshot.value(snapshot.procs[0]) == 1
        assert snapshot.procs[0].reading.latency > 0  # the RQ head-job script runs under the ACL too
        assert snapshot.value(snapshot.procs[6]) == 2  # Dramatiq's scripts too: one waiting message, one due
        assert snapshot.procs[6].reading.latency > 0
        assert not redis_script._server(procs[0].redis_client()).refused  # read in the server-side script
    finally:
        private_redis.execute_command("ACL", "DELUSER", user)


# --- headings -------------------------------------------------------------------------------------------------------


_MARKUP = re.compile(r"`([^`]*)`|\*\*([^*]*)\*\*")


def plain(heading: str) -> str:
    """A heading's text without code and bold markup (what both anchor rules start from)."""
    return _MARKUP.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(2), heading)


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but ``-`` and ``_`` removed, each space a ``-``."""
    return re.sub(r"[^\w\- ]", "", plain(heading).lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_headings_anchor_alike_on_github_and_in_the_site(page):
    from markdown.extensions.toc import slugify

    names = headings(page)
    assert len(names) == len(set(names)), f"two headings of {page_name(page)} share a name (and an anchor)"
    for heading in names:
        assert slugify(plain(heading), "-") == github_anchor(heading), f"{heading!r}: pick words that anchor alike"
