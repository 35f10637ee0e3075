"""A real Flower deployment on 127.0.0.1, as a user runs it: a SuperLink with TLS and node
authentication, three separately started SuperNodes that declare their ranks (2, 4, 8) and their
own data files, runs started with ``flwr run``; an unregistered node is refused; a node killed
after round 1 is recorded with Flower's reason and the run finishes; restarted, it takes part again
when a finished run is resumed (``resume=true``) for one more round; the SuperLink, killed in the
middle of a run and restarted with its database, gets its nodes back by themselves, and the run
resumed with ``resume=true`` continues from its last checkpoint.

Certificates and keys come from scripts/flower_certs.sh. Every process is started in its own
process group and killed with it at the end, also when a test fails; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

pytest.importorskip("flwr")

from .declared_data import config_data, split_reviews  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
NODES = {"ana": 2, "ben": 4, "chen": 8}

pytestmark = pytest.mark.skipif(
    shutil.which("flower-superlink", path=str(BIN)) is None
    or shutil.which("ssh-keygen") is None
    or shutil.which("openssl") is None,
    reason="needs flower-superlink (the flower extra), openssl and ssh-keygen",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")


class Deployment:
    """The processes of one deployment; :meth:`stop` ends all of them (process groups)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(ROOT),
            "FLWR_HOME": str(folder / "flwr-home"),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "OMP_NUM_THREADS": "1",
        }

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.folder / f"{name}.log").open("w")
        proc = subprocess.Popen(
            list(args), cwd=self.folder, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self.kill(name, signal.SIGTERM)

    def start_superlink(self, name: str) -> None:
        """The SuperLink on ``self.port``; its state (registered node keys, nodes, runs) lives in
        superlink.db, so that a restarted SuperLink knows the nodes (in memory, the default, a
        restart forgets every registration)."""
        certs = self.certs
        self.start(
            name,
            str(BIN / "flower-superlink"),
            "--ssl-ca-certfile",
            str(certs / "ca.crt"),
            "--ssl-certfile",
            str(certs / "server.pem"),
            "--ssl-keyfile",
            str(certs / "server.key"),
            "--enable-supernode-auth",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--database",
            str(self.folder / "superlink.db"),
            "--disable-runtime-dependency-installation",
        )
        wait_until(
            lambda: "Uvicorn running" in self.log(name) or self.procs[name].poll() is not None,
            120,
            "the SuperLink to listen",
        )
        assert self.procs[name].poll() is None, self.log(name)

    def restart_superlink(self) -> None:
        """A crash and a restart: SIGKILL to the SuperLink's process group, then the SuperLink again on
        the same port with the same database and certificates."""
        self.kill("superlink")
        self.start_superlink("superlink-restarted")

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "flwr"), *args], cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deployment")
    certs = folder / "certs"
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "flower_certs.sh"), str(certs), *NODES, "stranger"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    files = split_reviews(folder)
    d = Deployment(folder)
    try:
        port = free_port()
        d.port, d.certs = port, certs
        d.start_superlink("superlink")
        home = folder / "flwr-home"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(
            tomli_w.dumps(
                {
                    "superlink": {
                        "default": "loopback",
                        "loopback": {"address": f"127.0.0.1:{port}", "root-certificates": str(certs / "ca.crt")},
                    }
                }
            )
        )
        for name in NODES:
            done = d.flwr("supernode", "register", str(certs / f"{name}.pub"), "loopback")
            assert done.returncode == 0, done.stdout + done.stderr
        for name, rank in NODES.items():
            d.start(
                name,
                str(BIN / "flower-supernode"),
                "--root-certificates",
                str(certs / "ca.crt"),
                "--superlink",
                f"127.0.0.1:{port}",
                "--auth-supernode-private-key",
                str(certs / name),
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
                "--node-config",
                f"rank={rank} data-file='{files[name]}' client-id='{name}'",
            )
        d.files = files
        yield d
    finally:
        d.stop()


def flwr_run(
    d: Deployment, name: str, rounds: int, resume: bool = False, **federation
) -> tuple[Path, subprocess.Popen]:
    out = d.folder / name
    data = config_data(d.folder / "unused", d.files["server"], **federation)
    path = d.folder / f"{name}.toml"
    path.write_text(tomli_w.dumps(data))
    run_config = (
        f"config='{path}' out='{out}' num-server-rounds={rounds} min-nodes={len(NODES)} resume={str(resume).lower()}"
    )
    proc = d.start(
        f"flwr-run-{name}{'-resumed' if resume else ''}",
        str(BIN / "flwr"),
        "run",
        str(ROOT / "examples" / "flower_app"),
        "loopback",
        "--stream",
        "--run-config",
        run_config,
    )
    return out, proc


def finish(d: Deployment, proc: subprocess.Popen, name: str) -> str:
    """Wait (at most 600 s) for the ``flwr run`` started as ``name``; its log."""
    try:
        proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"flwr run did not finish in 600 s:\n{d.log(name)[-3000:]}") from None
    return d.log(name)


def metrics_of(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_tls_node_auth_declared_ranks_and_own_data(deployment):
    d = deployment
    out, proc = flwr_run(d, "declared", rounds=2)
    log = finish(d, proc, "flwr-run-declared")
    metrics = metrics_of(out)
    assert [m["round"] for m in metrics] == [1, 2], log[-3000:]
    for m in metrics:
        assert m["ranks"] == [2, 4, 8] and m["accepted"] == 3 and m["rejected"] == [], m
        assert m["accuracy"] is not None and m["bytes_up"] > 0
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["ranks"] == {
        "policy": "explicit",
        "ranks": [2, 4, 8],
        "r_max": 8,
        **{k: v for k, v in saved["ranks"].items() if k not in ("policy", "ranks", "r_max")},
    }
    assert saved["federation"]["num_clients"] == 3 and saved["run"]["runtime"] == "flower"
    # each node says who it is and how many rows its own file has (10 reviews per user)
    for client, (name, rank) in enumerate(NODES.items()):
        assert f"client {client}: {name!r}, rank {rank}, 10 examples" in log
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and (out / "adapter" / "adapter_model.safetensors").stat().st_size > 0
    # a node whose key was never registered is refused by the SuperLink
    stranger = d.start(
        "stranger",
        str(BIN / "flower-supernode"),
        "--root-certificates",
        str(d.certs / "ca.crt"),
        "--superlink",
        f"127.0.0.1:{d.port}",
        "--auth-supernode-private-key",
        str(d.certs / "stranger"),
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--max-retries",
        "0",
        "--node-config",
        f"rank=2 data-file='{d.files['ana']}' client-id='stranger'",
    )
    wait_until(
        lambda: stranger.poll() is not None or "Failed to activate" in d.log("stranger"),
        120,
        "the unregistered node to be refused",
    )
    assert "Failed to activate SuperNode" in d.log("stranger"), d.log("stranger")[-2000:]


def test_a_node_killed_after_round_1_is_recorded_with_flowers_reason(deployment):
    d = deployment
    out, proc = flwr_run(d, "killed", rounds=2, round_timeout=300.0)
    wait_until(lambda: len(metrics_of(out)) >= 1 or proc.poll() is not None, 600, "round 1")
    d.kill("chen")
    finish(d, proc, "flwr-run-killed")
    first, second = metrics_of(out)
    assert first["accepted"] == 3
    assert second["accepted"] == 2 and [r["client"] for r in second["rejected"]] == [2]
    assert "Node Unavailable" in second["rejected"][0]["reason"], second["rejected"]
    assert second["accuracy"] is not None


def test_the_killed_node_restarts_and_a_finished_run_resumes_for_one_more_round(deployment):
    # runs after the kill above: chen comes back with its key and client id; a new `flwr run` with
    # resume=true continues the first test's run folder from its last checkpoint
    d = deployment
    d.start(
        "chen-again",
        str(BIN / "flower-supernode"),
        "--root-certificates",
        str(d.certs / "ca.crt"),
        "--superlink",
        f"127.0.0.1:{d.port}",
        "--auth-supernode-private-key",
        str(d.certs / "chen"),
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--node-config",
        f"rank=8 data-file='{d.files['chen']}' client-id='chen'",
    )
    before = metrics_of(d.folder / "declared")
    out, proc = flwr_run(d, "declared", rounds=3, resume=True)
    finish(d, proc, "flwr-run-declared-resumed")
    metrics = metrics_of(out)
    assert [m["round"] for m in metrics] == [1, 2, 3], d.log("flwr-run-declared-resumed")[-3000:]
    assert metrics[:2] == before and metrics[2]["accepted"] == 3 and metrics[2]["ranks"] == [2, 4, 8]
    assert "resuming" in d.log("flwr-run-declared-resumed")


def server_apps_of(d: Deployment) -> list[str]:
    """The command lines of the ServerApp processes of this deployment's SuperLink."""
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, timeout=30, check=True).stdout
    return [line for line in ps.splitlines() if "flwr-serverapp" in line and f":{d.port}" in line]


def run_status(d: Deployment, run_id: str) -> str:
    listed = d.flwr("ls", "loopback", "--format", "json")
    runs = json.loads(listed.stdout).get("runs", []) if listed.returncode == 0 else []
    return next((r["status"] for r in runs if r["run-id"] == run_id), "")


def test_a_superlink_killed_mid_run_restarts_and_the_run_resumes_from_its_checkpoint(deployment):
    # runs last (ana, ben and the restarted chen are up). The SuperLink is killed once round 1 is
    # recorded and started again with its database: the running nodes reconnect by themselves under
    # their node ids, the killed run ends as failed and its ServerApp exits, and a new `flwr run` with
    # resume=true continues the run folder from round 1's checkpoint
    d = deployment
    out, proc = flwr_run(d, "relinked", rounds=3)
    wait_until(lambda: metrics_of(out) or proc.poll() is not None, 600, "round 1")
    assert server_apps_of(d), d.log("flwr-run-relinked")[-3000:]
    d.restart_superlink()
    try:
        proc.wait(timeout=120)  # it loses its SuperLink and exits with an error (measured: at once)
    except subprocess.TimeoutExpired:
        d.kill("flwr-run-relinked")
    started = re.search(r"Successfully started run (\d+)", d.log("flwr-run-relinked"))
    assert started, d.log("flwr-run-relinked")[-3000:]
    run_id = started.group(1)
    wait_until(lambda: run_status(d, run_id).startswith("finished"), 120, "the killed run to be marked finished")
    assert run_status(d, run_id) == "finished:failed"
    # no ServerApp of the killed run may still write to the run folder when the resumed one starts
    wait_until(lambda: not server_apps_of(d), 60, "the killed run's ServerApp to exit")
    before = metrics_of(out)
    assert [m["round"] for m in before] == [1], d.log("flwr-run-relinked")[-3000:]
    out, proc = flwr_run(d, "relinked", rounds=3, resume=True)
    log = finish(d, proc, "flwr-run-relinked-resumed")
    metrics = metrics_of(out)
    assert [m["round"] for m in metrics] == [1, 2, 3], log[-3000:]
    assert metrics[:1] == before and "resuming" in log
    for m in metrics[1:]:
        assert m["accepted"] == 3 and m["ranks"] == [2, 4, 8] and m["rejected"] == [], m
    assert (out / "adapter" / "adapter_model.safetensors").stat().st_size > 0
