"""Protected ``/metrics``: basic auth (exporter-toolkit web configuration, bcrypt) and a bearer token, over real
requests; the probes and the HireFire routes stay as they are."""

from __future__ import annotations

import base64
import hmac
import logging
import subprocess
import sys
import threading

import bcrypt
import pytest
from conftest import free_port
from support import http_get
from test_missing_packages import WITHOUT
from test_settings import ROOT, assert_refused, clean_env, run
from werkzeug.test import Client

from hirefire_exporter import auth
from hirefire_exporter.app import create_app
from hirefire_exporter.procs.base import Proc, ProcConfigError
from hirefire_exporter.server import close_server

PASSWORD = "corr3ct-horse"
TOKEN = "scrape-token-0123456789abcdef"
CHALLENGES = ['Basic realm="hirefire-exporter", charset="UTF-8"', 'Bearer realm="hirefire-exporter"']


class Constant(Proc):
    queues = ["default"]

    def quantity(self, **kwargs):
        return 7


def hashed(password: str, prefix: str = "$2y$") -> str:
    """A bcrypt hash as ``htpasswd -nBC 4`` writes it (cost 4: the tests stay quick)."""
    return prefix + bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()[4:]


def web_config(tmp_path, users: dict[str, str], text: str | None = None) -> str:
    path = tmp_path / "web.yml"
    lines = "".join(f'  {user}: "{hash_}"\n' for user, hash_ in users.items())
    path.write_text(text if text is not None else "basic_auth_users:\n" + lines)
    return str(path)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def client(tmp_path) -> Client:
    path = web_config(tmp_path, {"prometheus": hashed(PASSWORD), "other": hashed("pw2", "$2b$")})
    return Client(create_app([Constant("worker")], "hf-token", web_config=path, metrics_token=TOKEN))


def test_the_right_user_or_token_reads_metrics(client):
    for header in (basic("prometheus", PASSWORD), basic("other", "pw2"), f"Bearer {TOKEN}", f"bearer  {TOKEN} "):
        response = client.get("/metrics", headers={"Authorization": header})
        assert response.status_code == 200, header
        assert 'hirefire_proc_jobs{proc="worker"} 7.0' in response.get_data(as_text=True)
    filtered = client.get("/metrics?name[]=hirefire_proc_up", headers={"Authorization": f"Bearer {TOKEN}"})
    assert filtered.status_code == 200 and "hirefire_proc_up" in filtered.get_data(as_text=True)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        basic("prometheus", "wrong"),
        basic("prometheus", PASSWORD + "x"),
        basic("nobody", PASSWORD),
        basic("", PASSWORD),
        basic("prometheus", "p" * 100),  # over bcrypt's 72 bytes
        "Bearer wrong-token-0123456789abcdef",
        f"Bearer {TOKEN[:-1]}",
        "Bearer",
        "Bearer tökén",
        "Basic",
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon-here").decode(),
        "Basic " + base64.b64encode(b"prometheus:\xff\xfe").decode(),  # not UTF-8
        "Basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()[:-2],  # cut short
        "Basic " + "A" * 10_000,  # huge
        "Digest username=prometheus",
        basic("prometheus", PASSWORD)[6:],  # no scheme
        f"Token {TOKEN}",
    ],
)
def test_anything_else_is_a_401_with_both_challenges_never_a_500(client, header, caplog):
    with caplog.at_level(logging.DEBUG):
        response = client.get("/metrics", headers={} if header is None else {"Authorization": header})
        filtered = client.get(
            "/metrics?name[]=hirefire_proc_up", headers={} if header is None else {"Authorization": header}
        )
    for answer in (response, filtered):
        assert answer.status_code == 401
        assert answer.headers.getlist("WWW-Authenticate") == CHALLENGES
        assert answer.get_data(as_text=True) == "Unauthorized\n"
    assert PASSWORD not in caplog.text and TOKEN not in caplog.text and "Traceback" not in caplog.text


def test_probes_and_the_hirefire_routes_need_no_metrics_credentials(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/hirefire/hf-token/info").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/hirefire", headers={"HireFire-Token": "hf-token"}).status_code == 200
    assert client.get("/hirefire/test").status_code == 200
    assert client.get("/hirefire/wrong/info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


def test_an_unknown_user_costs_one_bcrypt_check_like_a_known_one(client, monkeypatch):
    """No early exit: whether a user exists cannot be told from how long a refusal takes."""
    checked: list[bytes] = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda password, hashed: checked.append(hashed) or real(password, hashed))
    assert client.get("/metrics", headers={"Authorization": basic("nobody", PASSWORD)}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": basic("prometheus", "wrong")}).status_code == 401
    app_auth = client.application.auth
    assert checked == [app_auth._dummy, app_auth.users["prometheus"]]
    cost = lambda h: h.split(b"$")[2]  # noqa: E731
    assert cost(app_auth._dummy) == cost(app_auth.users["prometheus"])  # the dummy costs as much


def test_a_user_with_a_cheaper_hash_is_refused_as_slowly_as_an_unknown_one(monkeypatch):
    """Hashes of different costs in one file: a refusal for the cheaper user is padded with the costliest check."""
    users = {"fast": bcrypt.hashpw(b"pw-fast", bcrypt.gensalt(4)), "slow": bcrypt.hashpw(b"pw-slow", bcrypt.gensalt(6))}
    guard = auth.Auth(users)
    checked: list[bytes] = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda password, hashed: checked.append(hashed) or real(password, hashed))
    assert not guard.allows(basic("fast", "wrong"))
    assert checked == [users["fast"], guard._dummy] and guard._dummy.split(b"$")[2] == b"06"
    checked.clear()
    assert not guard.allows(basic("nobody", "wrong")) and not guard.allows(basic("slow", "wrong"))
    assert checked == [guard._dummy, users["slow"]]  # one check each at the top cost
    assert guard.allows(basic("fast", "pw-fast"))


def test_while_one_bcrypt_check_runs_another_is_refused_at_once():
    """A flood of wrong passwords must not hold every server thread (HireFire's route, the probes): one check at a
    time, and a request that finds one running is refused without waiting."""
    guard = auth.Auth({"prometheus": bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4))})
    with guard._checking:  # a check in progress
        assert not guard.allows(basic("prometheus", PASSWORD))
    assert guard.allows(basic("prometheus", PASSWORD))
    with guard._checking:  # remembered: no check needed, so nothing refuses it
        assert guard.allows(basic("prometheus", PASSWORD))


def test_tokens_are_compared_in_constant_time(client, monkeypatch):
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    assert client.get("/metrics", headers={"Authorization": "Bearer x"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert compared == [(b"x", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


def test_a_successful_check_is_remembered_in_a_bounded_table_without_the_password(client, monkeypatch):
    calls: list[bytes] = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda password, hashed: calls.append(hashed) or real(password, hashed))
    monkeypatch.setattr(auth, "CACHE_SIZE", 1)
    right, other = basic("prometheus", PASSWORD), basic("other", "pw2")
    for _ in range(3):
        assert client.get("/metrics", headers={"Authorization": right}).status_code == 200
    assert len(calls) == 1  # checked once, then remembered
    assert client.get("/metrics", headers={"Authorization": basic("prometheus", "wrong")}).status_code == 401
    assert len(calls) == 2  # a failure is never remembered as a success
    assert client.get("/metrics", headers={"Authorization": other}).status_code == 200  # evicts the first
    assert client.get("/metrics", headers={"Authorization": right}).status_code == 200
    assert len(calls) == 4
    remembered = client.application.auth._verified
    assert len(remembered) == 1 and all(PASSWORD.encode() not in key for key in remembered)


def test_basic_auth_and_bearer_over_the_real_server(tmp_path):
    from waitress.server import create_server

    path = web_config(tmp_path, {"prometheus": hashed(PASSWORD)})
    app = create_app([Constant("worker")], "hf-token", web_config=path, metrics_token=TOKEN)
    server = create_server(app, host="127.0.0.1", port=free_port(), threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    port = server.effective_port
    try:
        assert http_get(port, "/metrics", headers={"Authorization": basic("prometheus", PASSWORD)})[0] == 200
        assert http_get(port, "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert http_get(port, "/metrics")[0] == 401
        assert http_get(port, "/metrics", headers={"Authorization": "Basic " + "=" * 5000})[0] == 401
        assert http_get(port, "/healthz")[0] == 200
    finally:
        close_server(server, thread)


# Start-up: a bad web configuration or token stops the real command with one line, quoting no hash nor token


def refused(tmp_path, text: str, names: str, *secrets: str) -> None:
    path = web_config(tmp_path, {}, text)
    assert_refused(
        run("serve", "--procs", "nowhere.P", "--web-config", path), f"--web-config {path}: {names}", *secrets
    )
    env = clean_env(HIREFIRE_WEB_CONFIG=path)
    assert_refused(run("serve", "--procs", "nowhere.P", env=env), f"HIREFIRE_WEB_CONFIG {path}: {names}", *secrets)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('basic_auth_users:\n  prometheus: "hunter2-plain"\n', "basic_auth_users: 'prometheus' needs a bcrypt hash"),
        ('basic_auth_users:\n  prometheus: "$2y$10$short"\n', "basic_auth_users: 'prometheus' needs a bcrypt hash"),
        (  # a YAML block keeps the newline: the hash would never match the right password
            f"basic_auth_users:\n  prometheus: |\n    $2y$10${'a' * 53}\n",
            "basic_auth_users: 'prometheus' needs a bcrypt hash",
        ),
        (
            f'basic_auth_users:\n  prometheus: "$2y$99${"a" * 53}"\n',
            "basic_auth_users: 'prometheus' needs a bcrypt hash",
        ),
        (
            f'basic_auth_users:\n  prometheus: "$2x$10${"a" * 53}"\n',
            "basic_auth_users: 'prometheus' needs a bcrypt hash",
        ),
        ("basic_auth_users:\n  prometheus: 5\n", "basic_auth_users: 'prometheus' needs a bcrypt hash"),
        ("basic_auth_users: [a, b]\n", "basic_auth_users must map user names to bcrypt hashes"),
        ("basic_auth_user:\n  a: b\n", "unknown key 'basic_auth_user'; did you mean 'basic_auth_users'?"),
        ("tls_server_config:\n  cert_file: x.crt\n", "tls_server_config is not supported"),
        ("basic_auth_users: {a: [\n", "not valid YAML"),
        ("- a\n- b\n", "must be a YAML mapping"),
    ],
)
def test_a_bad_web_configuration_stops_start_up_with_one_line(tmp_path, text, names):
    refused(tmp_path, text, names, "hunter2")


def test_a_missing_web_configuration_file_is_one_line(tmp_path):
    missing = str(tmp_path / "nope.yml")
    assert_refused(run("serve", "--procs", "x.P", "--web-config", missing), f"--web-config {missing}: cannot read it")


def test_basic_auth_without_bcrypt_installed_says_what_to_install(tmp_path):
    path = web_config(tmp_path, {"prometheus": hashed(PASSWORD)})
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT, "bcrypt", "serve", "--procs", "x.P", "--web-config", path],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        cwd=ROOT,
    )
    assert_refused(done, "basic_auth_users needs the bcrypt package: pip install 'hirefire-exporter[auth]'")


@pytest.mark.parametrize(
    ("token", "names"),
    [
        ("short-token", "a bearer token needs at least 16 characters"),
        ("with space 0123456789", "a bearer token may hold only printable ASCII"),
        ("tökén" * 5, "a bearer token may hold only printable ASCII"),
    ],
)
def test_a_bad_metrics_token_is_refused_without_quoting_it(token, names):
    secret = token.split()[-1]
    assert_refused(run("serve", "--procs", "x.P", "--metrics-token", token), f"--metrics-token: {names}", secret)
    env = clean_env(HIREFIRE_METRICS_TOKEN=token)
    assert_refused(run("serve", "--procs", "x.P", env=env), f"HIREFIRE_METRICS_TOKEN: {names}", secret)


def test_the_python_api_refuses_the_same(tmp_path):
    with pytest.raises(ProcConfigError, match=r"^metrics_token: a bearer token needs at least 16 characters"):
        create_app([Constant("worker")], metrics_token="short")
    path = web_config(tmp_path, {"prometheus": "plain"})
    with pytest.raises(ProcConfigError, match=r"^web_config .*: basic_auth_users: 'prometheus' needs a bcrypt hash"):
        create_app([Constant("worker")], web_config=path)


def test_the_documented_web_configuration_admits_its_documented_password(tmp_path):
    from docs_samples import ROOT as DOCS_ROOT
    from docs_samples import blocks

    (sample,) = [b for b in blocks(DOCS_ROOT / "docs" / "security.md") if b.file == "web.yml"]
    path = tmp_path / "web.yml"
    path.write_text(sample.code)
    client = Client(create_app([Constant("worker")], web_config=str(path)))
    assert client.get("/metrics", headers={"Authorization": basic("prometheus", "the password")}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": basic("prometheus", "the passwor")}).status_code == 401


@pytest.mark.parametrize(
    ("line", "names"),
    [
        ("web_config = 5", ": web_config must be a file name, got 5"),
        ('web_config = ""', ": web_config must be a file name, got ''"),
        ("metrics_token = 5", ": metrics_token must be a string, got int"),
        ('metrics_token = "short"', ": metrics_token: a bearer token needs at least 16 characters"),
    ],
)
def test_the_toml_keys_are_checked_alike(tmp_path, line, names):
    path = tmp_path / "exporter.toml"
    path.write_text(line + "\n")
    assert_refused(run("serve", "--procs", "x.P", "--config", str(path)), f"--config {path}{names}")
