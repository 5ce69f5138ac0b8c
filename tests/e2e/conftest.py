"""A real daemon (``ember serve`` in a subprocess) for end-to-end tests through the SDK and the CLI.

The daemon gets its own data directory (sharing only the built images) and run
directory, a known admin key and a free loopback port. Factories own every
sandbox a test makes and kill them at teardown. At session end the daemon must
hold no running sandbox, it is stopped, and no QEMU process of its run directory
may remain. On failure the daemon log's tail is attached to the test report.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from e2e_support import (
    PORTS_DOMAIN,
    AsyncSandboxFactory,
    Daemon,
    SandboxFactory,
    free_port,
    run_cli,
    spawn_daemon,
    stop_process,
)

from ember.client import AsyncSandbox, Sandbox
from ember.images import ensure_guest_images
from ember.settings import Settings
from leaks import jail_leftovers, qemu_pids_under, sandbox_networks_of
from netlab import TestInternet, test_internet

#: The test daemon's E2B domain: ``{port}-{sandbox_id}.e2b.test`` reaches a sandbox by Host header.
E2B_DOMAIN = "e2b.test"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def internet() -> Iterator[TestInternet]:
    """Test hosts in a network namespace, named by their own DNS, which the daemon resolves through."""
    with test_internet() as lab:
        yield lab


@pytest.fixture(scope="session")
def daemon(internet: TestInternet) -> Iterator[Daemon]:
    base = Settings.from_env()
    ensure_guest_images(base)  # at once when built; the daemon must not build in its first request
    run_dir = Path(tempfile.mkdtemp(prefix="ember-e2e-", dir="/dev/shm"))
    scratch = Path(tempfile.mkdtemp(prefix="ember-e2e-"))
    data_dir = scratch / "data"
    data_dir.mkdir()
    (data_dir / "images").symlink_to(base.images_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api_key = "e2e-" + secrets.token_hex(16)
    env = {key: value for key, value in os.environ.items() if key not in ("EMBER_URL", "EMBER_API_KEY")}
    env.update(
        EMBER_DATA_DIR=str(data_dir),
        EMBER_RUN_DIR=str(run_dir),
        XDG_CONFIG_HOME=str(scratch / "config"),
        EMBER_DNS_UPSTREAM=f"{internet.dns_server}:{internet.dns_port}",
        EMBER_DOMAIN=PORTS_DOMAIN,
        EMBER_E2B_DOMAIN=E2B_DOMAIN,
    )
    cli_env = {**env, "EMBER_URL": url, "EMBER_API_KEY": api_key}
    running = Daemon(url, api_key, data_dir, run_dir, scratch / "daemon.log", cli_env)
    process = None
    try:
        # Template base, as setup makes it: plain creates then come from the warm pool or a
        # restore (about a second under TCG) instead of a cold boot each (7-15 s).
        built = run_cli(running, "image", "build", timeout_s=900)
        assert built.returncode == 0, built.stdout + built.stderr
        process = spawn_daemon(running, port)
        yield running
        left = [info.id for info in Sandbox.list(base_url=url, api_key=api_key)]
        assert not left, f"sandboxes outlived the tests: {left}"
    finally:
        if process is not None:
            stop_process(process)
        leaked = qemu_pids_under(run_dir)
        networks = sandbox_networks_of(data_dir)
        jails = jail_leftovers(data_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
        assert not leaked, f"QEMU processes outlived the daemon: {leaked}"
        assert not networks, f"sandbox networks outlived the daemon: {networks}"
        assert not jails, f"cgroups or uid claims outlived the daemon: {jails}"


def _attach_log(request: pytest.FixtureRequest, daemon: Daemon) -> None:
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        request.node.add_report_section("call", "daemon log (tail)", daemon.log_tail())


def _defaults(kwargs: dict[str, object]) -> dict[str, object]:
    # The shape of template base: such sandboxes resume it rather than boot.
    return {"vcpus": 2, "memory_mb": 512, "timeout": 900, **kwargs}


@pytest.fixture
def sandbox_factory(daemon: Daemon, request: pytest.FixtureRequest) -> Iterator[SandboxFactory]:
    """Makes sync sandboxes on the test daemon; every one is killed at teardown."""
    made: list[Sandbox] = []

    def make(**kwargs: object) -> Sandbox:
        sandbox = Sandbox(base_url=daemon.url, api_key=daemon.api_key, **_defaults(kwargs))  # type: ignore[arg-type]
        made.append(sandbox)
        return sandbox

    yield make
    _attach_log(request, daemon)
    for sandbox in made:
        sandbox.close()
    running = {info.id for info in Sandbox.list(base_url=daemon.url, api_key=daemon.api_key)}
    assert not running & {sandbox._info.id for sandbox in made if sandbox._info}, "a sandbox survived close()"


@pytest.fixture
async def async_sandbox_factory(
    daemon: Daemon, request: pytest.FixtureRequest
) -> AsyncIterator[AsyncSandboxFactory]:
    """Makes async sandboxes on the test daemon; every one is killed at teardown."""
    made: list[AsyncSandbox] = []

    async def make(**kwargs: object) -> AsyncSandbox:
        sandbox = await AsyncSandbox.create(base_url=daemon.url, api_key=daemon.api_key, **_defaults(kwargs))  # type: ignore[arg-type]
        made.append(sandbox)
        return sandbox

    yield make
    _attach_log(request, daemon)
    for sandbox in made:
        await sandbox.close()


@pytest.fixture(scope="module")
def shared_sandbox(daemon: Daemon) -> Iterator[Sandbox]:
    """One sandbox for a module's tests that only add state of their own."""
    with Sandbox(
        vcpus=2,
        memory_mb=512,
        env={"MODE": "test"},
        timeout=1800,
        base_url=daemon.url,
        api_key=daemon.api_key,
    ) as sandbox:
        yield sandbox


TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def build_recipe(daemon: Daemon, name: str) -> str:
    """Run the shipped recipe ``templates/NAME.sh`` against the test daemon, as a user would.

    A recipe downloads Debian packages on the host (apt, as on any machine that runs
    setup) and builds the template on the test daemon: minutes under TCG, so every
    test that needs a template shares one build (the session fixtures below).
    """
    env = {**daemon.cli_env, "PYTHON": sys.executable, "EMBER": f"{sys.executable} -m ember"}
    recipe = TEMPLATES / f"{name}.sh"
    built = subprocess.run(["bash", str(recipe)], env=env, capture_output=True, text=True, timeout=2400)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert f"template {name} saved" in built.stderr
    return name


@pytest.fixture(scope="session")
def data_template(daemon: Daemon) -> Iterator[str]:
    """Template ``data`` (templates/data.sh: numpy, pandas, matplotlib), built once for the session."""
    base = run_cli(daemon, "template", "build", "base", timeout_s=600)
    assert base.returncode == 0, base.stderr
    yield build_recipe(daemon, "data")
    for name in ("data", "base"):
        Sandbox.delete_template(name, base_url=daemon.url, api_key=daemon.api_key)


@pytest.fixture(scope="session")
def browser_template(daemon: Daemon) -> Iterator[str]:
    """Template ``browser`` (templates/browser.sh: Chromium and Playwright), built once for the session."""
    yield build_recipe(daemon, "browser")
    Sandbox.delete_template("browser", base_url=daemon.url, api_key=daemon.api_key)


@pytest.fixture(scope="module")
def e2b_env(daemon: Daemon) -> Iterator[dict[str, str]]:
    """The environment ``ember e2b-env`` prints, set as a user would: E2B's SDKs then reach this daemon."""
    printed = run_cli(daemon, "e2b-env")
    assert printed.returncode == 0, printed.stderr
    exports = dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in printed.stdout.splitlines()
    )
    assert exports == {
        "E2B_API_URL": daemon.url,
        "E2B_SANDBOX_URL": daemon.url,
        "E2B_API_KEY": daemon.api_key,
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in exports.items():
            patch.setenv(name, value)
        yield exports
