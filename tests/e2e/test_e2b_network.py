"""E2B's network options on Ember: internet by default, allowOut/denyOut, updates, and other ports.

E2B gives a sandbox internet access unless told otherwise, and reaches any port
of it at ``{port}-{id}.{domain}`` (or with the E2b-Sandbox-Port header). Here the
"internet" is the netlab test hosts; the domain is the test daemon's E2B domain.
"""

from __future__ import annotations

import httpx
import pytest
from e2b import Sandbox
from e2b.exceptions import SandboxException
from e2b.sandbox.network import ALL_TRAFFIC
from e2e_support import Daemon, wait_until

FETCH = (
    'python3 -c "import sys, urllib.request\n'
    "try:\n"
    "    print(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode().strip())\n"
    "except Exception as exc:\n"
    "    print('ERR', type(exc).__name__, exc)\" "
)


def fetch(sandbox: Sandbox, url: str) -> str:
    return sandbox.commands.run(FETCH + url, timeout=60).stdout.strip()


def test_internet_by_default_and_denied_when_asked(e2b_env: None) -> None:
    with Sandbox.create(timeout=600) as open_box:
        assert fetch(open_box, "http://allowed.test/").startswith("netlab allowed.test")
    with Sandbox.create(timeout=600, allow_internet_access=False) as closed:
        answer = fetch(closed, "http://allowed.test/")
        assert answer.startswith("ERR") and "timed out" not in answer, answer


def test_allow_out_with_deny_all_is_an_allowlist_and_updates_apply(e2b_env: None) -> None:
    network = {"deny_out": [ALL_TRAFFIC], "allow_out": ["allowed.test"]}
    with Sandbox.create(timeout=600, network=network) as box:
        assert fetch(box, "http://allowed.test/").startswith("netlab allowed.test")
        assert fetch(box, "http://other.test/").startswith("ERR")
        box.update_network({"deny_out": [ALL_TRAFFIC], "allow_out": ["other.test"]})
        assert fetch(box, "http://other.test/").startswith("netlab other.test")
        assert fetch(box, "http://allowed.test/").startswith("ERR")
        box.update_network({})
        assert fetch(box, "http://allowed.test/").startswith("netlab allowed.test")
    with pytest.raises(SandboxException, match="400: Ember applies denyOut"):
        Sandbox.create(timeout=600, network={"deny_out": ["10.0.0.0/8"]})


def test_other_ports_reach_a_server_in_the_sandbox(e2b_env: None, daemon: Daemon) -> None:
    with Sandbox.create(timeout=600) as box:
        box.files.write("/home/user/site/index.html", "hello from the sandbox")
        box.commands.run("cd /home/user/site && python3 -m http.server 8000", background=True)
        host = box.get_host(8000)
        assert host == f"8000-{box.sandbox_id}.e2b.test"
        with httpx.Client(base_url=daemon.url, timeout=30, trust_env=False) as client:
            by_host = {"Host": host}
            wait_until(
                lambda: client.get("/index.html", headers=by_host).status_code == 200, what="the server"
            )
            assert client.get("/index.html", headers=by_host).text == "hello from the sandbox"
            by_header = {"E2b-Sandbox-Id": box.sandbox_id, "E2b-Sandbox-Port": "8000"}
            assert client.get("/index.html", headers=by_header).text == "hello from the sandbox"
            closed = client.get("/", headers={"E2b-Sandbox-Id": box.sandbox_id, "E2b-Sandbox-Port": "8001"})
            assert closed.status_code == 502 and "port 8001 is not open" in closed.json()["message"]
