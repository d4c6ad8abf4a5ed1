"""Keystone authentication: `sbnet serve` behind keystonemiddleware with a real Keystone."""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from oscrun import run_cli



@pytest.fixture(scope="module")
def cloud(keystone_sbnet: tuple) -> dict:
    """Two projects, each with a member; a reader in the first; passwords known."""
    ks, url = keystone_sbnet
    tag = uuid.uuid4().hex[:6]
    out = {"ks": ks, "url": url, "tag": tag}
    for name in ("alpha", "beta"):
        pid = ks.project(f"{name}-{tag}")
        ks.user(f"{name}-member-{tag}", "pw-" + name, pid, "member")
        out[name] = pid
    ks.user(f"alpha-reader-{tag}", "pw-reader", out["alpha"], "reader")
    return out


def _token(cloud: dict, who: str, password: str, project: str) -> str:
    return cloud["ks"].token(f"{who}-{cloud['tag']}", password, f"{project}-{cloud['tag']}")


def _get(cloud: dict, path: str, token: str | None) -> httpx.Response:
    headers = {"X-Auth-Token": token} if token else {}
    return httpx.get(cloud["url"] + path, headers=headers, timeout=60)


def test_version_document_needs_no_token(cloud: dict) -> None:
    r = _get(cloud, "/", None)
    assert r.status_code == 200 and r.json()["versions"][0]["id"] == "v2.0"


@pytest.mark.parametrize("token", [None, "forged", "gAAAAABnot-a-real-fernet-token"])
def test_missing_or_forged_token_is_401(cloud: dict, token: str | None) -> None:
    for path in ("/v2.0/networks", "/v2.0/extensions", "/v2.0/"):
        r = _get(cloud, path, token)
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"].startswith("Keystone uri=")


def test_revoked_token_is_401(cloud: dict) -> None:
    token = _token(cloud, "alpha-member", "pw-alpha", "alpha")
    cloud["ks"].revoke(token)
    assert _get(cloud, "/v2.0/networks", token).status_code == 401


def test_expired_token_is_401(cloud: dict) -> None:
    """A token from an application credential expires with it (Keystone caps the token)."""
    ks = cloud["ks"]
    token = _token(cloud, "beta-member", "pw-beta", "beta")
    user_id = ks.call("GET", "/auth/tokens", token=token, headers={"X-Subject-Token": token}
                      )["token"]["user"]["id"]
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=8)
    cred = ks.call("POST", f"/users/{user_id}/application_credentials", token=token, body={
        "application_credential": {"name": "short", "expires_at": expires.strftime(
            "%Y-%m-%dT%H:%M:%S")}})["application_credential"]
    short = ks.app_cred_token(cred["id"], cred["secret"])
    assert _get(cloud, "/v2.0/networks", short).status_code == 200  # now cached by auth_token
    time.sleep(max(0.0, (expires - datetime.datetime.now(datetime.timezone.utc)).total_seconds()))
    deadline = time.monotonic() + 2         # refused by then, as soon as it is
    while (status := _get(cloud, "/v2.0/networks", short).status_code) == 200:
        assert time.monotonic() < deadline, "the expired token still served"
        time.sleep(0.25)
    assert status == 401


def test_token_project_and_roles_decide_what_is_seen(cloud: dict) -> None:
    url = cloud["url"]
    alpha = _token(cloud, "alpha-member", "pw-alpha", "alpha")
    beta = _token(cloud, "beta-member", "pw-beta", "beta")
    # A client claiming another project in X-Project-Id is still itself: the token decides.
    r = httpx.post(url + "/v2.0/networks", json={"network": {"name": "alpha-net"}}, timeout=60,
                   headers={"X-Auth-Token": alpha, "X-Project-Id": cloud["beta"], "X-Roles": "admin"})
    assert r.status_code == 201, r.text
    net = r.json()["network"]
    assert net["project_id"] == cloud["alpha"]
    assert "provider:network_type" not in net  # not an admin, whatever X-Roles said
    assert _get(cloud, f"/v2.0/networks/{net['id']}", beta).status_code == 404
    seen = [n["id"] for n in _get(cloud, "/v2.0/networks", beta).json()["networks"]]
    assert net["id"] not in seen
    admin = cloud["ks"].admin_token
    assert _get(cloud, f"/v2.0/networks/{net['id']}", admin).json()["network"][
        "provider:network_type"] == "vxlan"


def _openstack(cloud: dict, password: str, cmd: str) -> tuple[int, str, str]:
    """The openstack CLI (in this process, as its binary runs it, no OS_* variables): the
    client finds sbnet through Keystone's catalog.  (exit status, stdout, stderr)"""
    ks = cloud["ks"]
    auth = ["--os-auth-url", ks.url, "--os-identity-api-version", "3",
            "--os-username", f"alpha-member-{cloud['tag']}", "--os-password", password,
            "--os-project-name", f"alpha-{cloud['tag']}", "--os-user-domain-id", "default",
            "--os-project-domain-id", "default", "--os-region-name", "RegionOne"]
    saved = {k: os.environ.pop(k) for k in [k for k in os.environ if k.startswith("OS_")]}
    try:
        return run_cli([*auth, *shlex.split(cmd)])
    finally:
        os.environ.update(saved)


def test_openstack_cli_with_password_authentication(cloud: dict) -> None:
    def ok(cmd: str):
        rc, out, err = _openstack(cloud, "pw-alpha", cmd)
        assert rc == 0, f"{cmd!r} failed: {err}"
        return json.loads(out)

    net = ok("network create cli-net -f json")
    assert net["project_id"] == cloud["alpha"]
    sub = ok(f"subnet create cli-sub --network {net['id']} --subnet-range 10.9.0.0/24 -f json")
    assert sub["cidr"] == "10.9.0.0/24"
    assert net["id"] in {n["ID"] for n in ok("network list -f json")}
    rc, _, err = _openstack(cloud, "wrong", "network list")
    assert rc != 0
    assert "401" in err or "authentication" in err.lower()


def test_reader_lists_but_cannot_change(cloud: dict) -> None:
    url = cloud["url"]
    member = _token(cloud, "alpha-member", "pw-alpha", "alpha")
    reader = _token(cloud, "alpha-reader", "pw-reader", "alpha")
    r = httpx.post(url + "/v2.0/networks", json={"network": {"name": "read-me"}}, timeout=60,
                   headers={"X-Auth-Token": member})
    assert r.status_code == 201, r.text
    net = r.json()["network"]
    assert net["id"] in {n["id"] for n in _get(cloud, "/v2.0/networks", reader).json()["networks"]}
    assert _get(cloud, f"/v2.0/networks/{net['id']}", reader).status_code == 200
    for method, path, body in (("POST", "/v2.0/networks", {"network": {"name": "no"}}),
                               ("PUT", f"/v2.0/networks/{net['id']}", {"network": {"name": "no"}}),
                               ("DELETE", f"/v2.0/networks/{net['id']}", None)):
        r = httpx.request(method, url + path, json=body, timeout=60, headers={"X-Auth-Token": reader})
        assert r.status_code == 403, (method, path, r.status_code, r.text)
    assert _get(cloud, f"/v2.0/networks/{net['id']}", member).json()["network"]["name"] == "read-me"


def test_a_keystone_config_file_works_as_the_url_shortcut_does(cloud: dict, tmp_path) -> None:
    """The suite's server runs `sbnet serve --keystone URL`; a [keystone_authtoken] file too."""
    from sbnet.api.openstack import serve_behind
    from sbnet.api.process import stop
    proc, url = serve_behind(cloud["ks"], tmp_path, config_file=True)
    try:
        token = _token(cloud, "alpha-member", "pw-alpha", "alpha")
        assert httpx.get(url + "/v2.0/networks", timeout=60).status_code == 401
        r = httpx.get(url + "/v2.0/networks", headers={"X-Auth-Token": token}, timeout=60)
        assert r.status_code == 200 and r.json() == {"networks": []}
    finally:
        stop(proc)
    # Without the service user's password the shortcut refuses to start, with one line.
    res = subprocess.run([sys.executable, "-m", "sbnet", "serve", "--keystone", cloud["ks"].url],
                         capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "SBNET_KEYSTONE_PASSWORD"})
    assert res.returncode == 2 and "SBNET_KEYSTONE_PASSWORD" in res.stderr
