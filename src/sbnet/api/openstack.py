"""Real OpenStack peers for tests and the conformance run: a private Keystone and tempest."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx

from sbnet.api.keystone import authtoken_section
from sbnet.api.process import free_port, spawn, stop

REPO = Path(__file__).resolve().parents[3]
REGION = "RegionOne"
ADMIN_PASSWORD = "sbnet-admin-pw"
SERVICE_PASSWORD = "sbnet-service-pw"


def venv() -> Path:
    """The separate virtualenv with Keystone and tempest, created by scripts/openstack-venv."""
    path = Path(os.environ.get("SBNET_OPENSTACK_VENV", REPO / ".venv" / "openstack"))
    subprocess.run([str(REPO / "scripts" / "openstack-venv")], check=True,
                   env={**os.environ, "SBNET_OPENSTACK_VENV": str(path)})
    return path


def _wait(url: str, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer at {url}")


def _schema(env_dir: Path, manage: list[str], db: Path) -> None:
    """Keystone's tables in the SQLite file `db`: `keystone-manage db_sync` once per Keystone
    release in the venv (seconds of imports and migrations), a copy of its result after."""
    release = sorted(env_dir.glob("lib/python*/site-packages/keystone-*.dist-info"))
    template = env_dir / f"sbnet-schema-{release[-1].name}.sqlite" if release else None
    if template is not None and template.exists():
        shutil.copyfile(template, db)
        return
    subprocess.run(manage + ["db_sync"], check=True, capture_output=True, timeout=300)
    if template is not None:              # whole or not at all, for other checkouts' runs
        fd, tmp = tempfile.mkstemp(dir=env_dir, suffix=".sqlite")
        os.close(fd)
        shutil.copyfile(db, tmp)
        os.replace(tmp, template)


def _fernet_keys(repo: Path) -> None:
    """What `keystone-manage fernet_setup` makes: a private key repository holding a staged
    key (0) and a primary one (1), each a Fernet key (32 random bytes, URL-safe base64)."""
    repo.mkdir(mode=0o700, exist_ok=True)
    for name in ("0", "1"):
        fd = os.open(repo / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.urlsafe_b64encode(os.urandom(32)))


@dataclass
class Keystone:
    """A private Keystone (SQLite, fernet tokens) served by gunicorn from the separate venv."""

    workdir: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    admin_token: str = ""
    ids: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v3"

    def start(self) -> "Keystone":
        env_dir = venv()
        self.port = free_port()
        conf = self.workdir / "keystone.conf"
        keys = self.workdir / "fernet-keys"
        conf.write_text(
            f"[DEFAULT]\nlog_file = {self.workdir / 'keystone.log'}\n"
            # One request at a time (one sync worker) and a patient SQLite: concurrent writers
            # otherwise meet "database is locked" and Keystone answers 500.
            f"[database]\nconnection = sqlite:///{self.workdir / 'keystone.db'}?timeout=30\n"
            "[token]\nprovider = fernet\nexpiration = 3600\n"
            # Test users need no costly hashes (bcrypt's default 12 rounds cost ~0.3 s a user).
            "[identity]\npassword_hash_rounds = 4\n"
            f"[fernet_tokens]\nkey_repository = {keys}\n"
            f"[fernet_receipts]\nkey_repository = {keys}\n")
        manage = [str(env_dir / "bin" / "keystone-manage"), "--config-file", str(conf)]
        _schema(env_dir, manage, self.workdir / "keystone.db")
        _fernet_keys(keys)
        subprocess.run(manage + ["bootstrap", "--bootstrap-password", ADMIN_PASSWORD,
                                 "--bootstrap-admin-url", self.url, "--bootstrap-public-url",
                                 self.url, "--bootstrap-internal-url", self.url,
                                 "--bootstrap-region-id", REGION],
                       check=True, capture_output=True, timeout=300)
        env = {**os.environ, "OS_KEYSTONE_CONFIG_FILES": str(conf)}
        # Keystone parses sys.argv when its app is built: keep gunicorn's options away from it.
        (self.workdir / "keystone_wsgi.py").write_text(
            "import sys\nsys.argv = sys.argv[:1]\n"
            "from keystone.server.wsgi import initialize_public_application\n"
            "application = initialize_public_application()\n")
        self.proc = subprocess.Popen(
            [str(env_dir / "bin" / "gunicorn"), "--bind", f"127.0.0.1:{self.port}", "--workers", "1",
             "--threads", "1", "--timeout", "120", "--log-file", str(self.workdir / "gunicorn.log"),
             "--pythonpath", str(self.workdir), "keystone_wsgi:application"], env=env, stdin=subprocess.DEVNULL)
        _wait(self.url, self.proc, 120, "keystone")
        self.admin_token = self.token("admin", ADMIN_PASSWORD, "admin")
        self.ids["admin_project"] = self.find("projects", "admin")
        self.ids["roles"] = {r["name"]: r["id"] for r in self.call("GET", "/roles")["roles"]}
        for role in ("member", "reader", "service"):
            if role not in self.ids["roles"]:
                self.ids["roles"][role] = self.call("POST", "/roles", {"role": {"name": role}})["role"]["id"]
        self.ids["service_project"] = self.project("service")
        self.user("sbnet", SERVICE_PASSWORD, self.ids["service_project"], "service", "admin")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    # --- the identity API, as an admin ---

    def call(self, method: str, path: str, body: dict | None = None, token: str | None = None,
             headers: dict | None = None) -> dict:
        r = httpx.request(method, self.url + path, json=body, timeout=60,
                          headers={"X-Auth-Token": token or self.admin_token, **(headers or {})})
        r.raise_for_status()
        return r.json() if r.content else {}

    def find(self, collection: str, name: str) -> str:
        return self.call("GET", f"/{collection}?name={name}")[collection][0]["id"]

    def project(self, name: str) -> str:
        return self.call("POST", "/projects", {"project": {"name": name, "domain_id": "default"}}
                         )["project"]["id"]

    def user(self, name: str, password: str, project_id: str, *roles: str) -> str:
        uid = self.call("POST", "/users", {"user": {"name": name, "password": password,
                                                    "domain_id": "default"}})["user"]["id"]
        for role in roles:
            self.call("PUT", f"/projects/{project_id}/users/{uid}/roles/{self.ids['roles'][role]}")
        return uid

    def token(self, user: str, password: str, project: str) -> str:
        """A project-scoped token for a user of the default domain (password authentication)."""
        r = httpx.post(self.url + "/auth/tokens", timeout=60, json={"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "password": password, "domain": {"id": "default"}}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}}}})
        r.raise_for_status()
        return r.headers["X-Subject-Token"]

    def app_cred_token(self, cred_id: str, secret: str) -> str:
        r = httpx.post(self.url + "/auth/tokens", timeout=60, json={"auth": {"identity": {
            "methods": ["application_credential"],
            "application_credential": {"id": cred_id, "secret": secret}}}})
        r.raise_for_status()
        return r.headers["X-Subject-Token"]

    def revoke(self, token: str) -> None:
        r = httpx.delete(self.url + "/auth/tokens", timeout=60,
                         headers={"X-Auth-Token": self.admin_token, "X-Subject-Token": token})
        r.raise_for_status()

    def register_network(self, endpoint: str) -> None:
        """Put sbnet in the catalog as the network service, where clients look for Neutron."""
        sid = self.call("POST", "/services", {"service": {"name": "neutron", "type": "network"}}
                        )["service"]["id"]
        for interface in ("public", "internal", "admin"):
            self.call("POST", "/endpoints", {"endpoint": {
                "service_id": sid, "interface": interface, "url": endpoint, "region_id": REGION}})

    def authtoken_conf(self, path: Path, cache_seconds: int = 300) -> Path:
        """The [keystone_authtoken] section `sbnet serve --keystone-config` reads (as neutron.conf)."""
        path.write_text(authtoken_section(self.url, "sbnet", SERVICE_PASSWORD, "service",
                                          cache_seconds))
        return path


def serve_behind(ks: Keystone, workdir: Path, cache_seconds: int = 300,
                 config_file: bool = False) -> tuple[subprocess.Popen, str]:
    """`sbnet serve` checking tokens with `ks`: by the `--keystone URL` shortcut (the service
    user's password in its environment), or by a `--keystone-config` file."""
    if config_file or cache_seconds != 300:
        extra = ["--keystone-config", str(ks.authtoken_conf(
            workdir / "sbnet-authtoken.conf", cache_seconds))]
        env = None
    else:
        extra, env = ["--keystone", ks.url], {"SBNET_KEYSTONE_PASSWORD": SERVICE_PASSWORD}
    return spawn(f"sqlite:///{workdir / 'sbnet.db'}", via_cli=True, extra=extra, env=env)


@contextmanager
def keystone_and_sbnet(cache_seconds: int = 300) -> Iterator[tuple[Keystone, str]]:
    """A private Keystone and `sbnet serve` behind auth_token, sbnet in the catalog."""
    workdir = Path(tempfile.mkdtemp(prefix="sbnet-keystone-"))
    ks = Keystone(workdir)
    proc = None
    try:
        ks.start()
        proc, url = serve_behind(ks, workdir, cache_seconds)
        ks.register_network(url)
        yield ks, url
    finally:
        # Side by side: gunicorn's graceful stop of Keystone takes seconds of its own.
        stoppers = [threading.Thread(target=ks.stop)]
        if proc is not None:
            stoppers.append(threading.Thread(target=stop, args=(proc,)))
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        shutil.rmtree(workdir, ignore_errors=True)


# --- tempest ---

@dataclass
class TempestResult:
    passed: int
    failed: int
    skipped: int
    failures: list[str]
    skips: dict[str, str]
    seconds: float

    def summary(self) -> str:
        return f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped"


def tempest_conf(ks: Keystone, public_network_id: str, extensions: list[str], log: Path) -> str:
    return (
        f"[DEFAULT]\nlog_file = {log}\n"
        "[auth]\nuse_dynamic_credentials = True\nadmin_username = admin\n"
        f"admin_password = {ADMIN_PASSWORD}\nadmin_project_name = admin\n"
        "admin_domain_name = Default\ncreate_isolated_networks = False\n"
        f"[identity]\nuri_v3 = {ks.url}\nauth_version = v3\nregion = {REGION}\n"
        "disable_ssl_certificate_validation = True\n"
        "[identity-feature-enabled]\napi_v3 = True\n"
        "[service_available]\nneutron = True\nnova = False\nglance = False\ncinder = False\n"
        "swift = False\nheat = False\n"
        f"[network]\npublic_network_id = {public_network_id}\nfloating_network_name = public\n"
        "project_network_cidr = 10.100.0.0/16\nproject_network_mask_bits = 28\n"
        "project_network_v6_cidr = 2001:db8::/48\nproject_network_v6_mask_bits = 64\n"
        "project_networks_reachable = False\nbuild_timeout = 60\nbuild_interval = 1\n"
        f"[network-feature-enabled]\napi_extensions = {','.join(extensions)}\n"
        "ipv6 = True\nipv6_subnet_attributes = True\n"
        "[validation]\nrun_validation = False\n")


def public_network(url: str, token: str) -> str:
    """The external network tempest's floating IP and gateway tests use."""
    h = {"X-Auth-Token": token}
    net = httpx.post(url + "/v2.0/networks", headers=h, timeout=30, json={"network": {
        "name": "public", "router:external": True, "provider:network_type": "flat",
        "provider:physical_network": "physnet1"}}).raise_for_status().json()["network"]
    httpx.post(url + "/v2.0/subnets", headers=h, timeout=30, json={"subnet": {
        "network_id": net["id"], "cidr": "172.24.4.0/24", "ip_version": 4,
        "name": "public-subnet"}}).raise_for_status()
    return net["id"]


_TOTAL = re.compile(r"^ - (Passed|Skipped|Failed): (\d+)", re.M)
_LINE = re.compile(r"^\{\d+\} (.+?)(?: \[[\d.]+s\])? \.\.\. (ok|FAILED|SKIPPED: (.*))$", re.M)


def run_tempest(ks: Keystone, url: str, regex: str, workdir: Path, concurrency: int = 2,
                timeout: float = 3600) -> TempestResult:
    """`tempest run --regex REGEX` against sbnet; returns the counts and the names that failed."""
    env_dir = venv()
    tempest = str(env_dir / "bin" / "tempest")
    ws = workdir / "tempest"  # not `tempest init`: that registers a workspace in ~/.tempest
    (ws / "etc").mkdir(parents=True, exist_ok=True)
    extensions = [e["alias"] for e in httpx.get(url + "/v2.0/extensions", timeout=30, headers={
        "X-Auth-Token": ks.admin_token}).raise_for_status().json()["extensions"]]
    public = public_network(url, ks.admin_token)
    (ws / "etc" / "tempest.conf").write_text(tempest_conf(ks, public, extensions, ws / "tempest.log"))
    start = time.monotonic()
    proc = subprocess.run([tempest, "run", "--config-file", str(ws / "etc" / "tempest.conf"),
                           "--regex", regex, "--concurrency", str(concurrency)], cwd=ws, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    (workdir / "tempest-output.txt").write_text(out)
    totals = {k: int(v) for k, v in _TOTAL.findall(out)}
    failures = sorted({m[0] for m in _LINE.findall(out) if m[1] == "FAILED"})
    skips = {m[0]: m[2] for m in _LINE.findall(out) if m[1].startswith("SKIPPED")}
    if not totals:
        raise RuntimeError(f"tempest printed no totals (exit {proc.returncode}):\n{out[-3000:]}")
    return TempestResult(totals.get("Passed", 0), totals.get("Failed", 0),
                         totals.get("Skipped", 0), failures, skips, time.monotonic() - start)
