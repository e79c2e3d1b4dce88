"""A real Ray cluster on loopback for the replica tests: a head on 127.0.0.2 and, for the failure tests, a
second node on 127.0.0.3, both with token authentication. Each node is a `ray start --block` process in a
session of its own, so a node is killed (as a lost machine would be) by killing its process group.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time

from browser_support import free_port

RAY = os.path.join(os.path.dirname(sys.executable), "ray")
HEAD_IP = "127.0.0.2"


class Node:
    """One `ray start --block` process and its process group."""

    def __init__(self, arguments: list[str], env: dict, log_path: str):
        self.log = open(log_path, "w")  # noqa: SIM115 - kept for the node's life
        self.process = subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", *arguments],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        """The node gone at once, as when its machine fails."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(30)
        self.log.close()


class Cluster:
    def __init__(self, folder):
        self.folder = folder
        self.token = secrets.token_hex(32)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        self.port = free_port()
        self.address = f"{HEAD_IP}:{self.port}"
        self.nodes: list[Node] = []
        self.head = self._start(
            ["--head", f"--node-ip-address={HEAD_IP}", f"--port={self.port}", "--num-cpus=2",
             "--object-store-memory=200000000", "--include-dashboard=false",
             f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"],
            "head",
        )  # fmt: skip
        self.wait_for_nodes(1)

    def _start(self, arguments: list[str], name: str) -> Node:
        node = Node(arguments, self.env, os.path.join(self.folder, f"ray-{name}.log"))
        self.nodes.append(node)
        return node

    def add_node(self, ip: str = "127.0.0.3", cpus: int = 1) -> Node:
        node = self._start(
            [f"--address={self.address}", f"--node-ip-address={ip}", f"--num-cpus={cpus}",
             "--object-store-memory=100000000", f"--dashboard-agent-listen-port={free_port()}"],
            ip,
        )  # fmt: skip
        self.wait_for_nodes(len([n for n in self.nodes if n.process.poll() is None]))
        return node

    def alive_nodes(self) -> int:
        done = subprocess.run(
            [RAY, "status", f"--address={self.address}"], env=self.env, capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            return 0
        text = done.stdout
        active = text.split("Active:", 1)[1].split("Pending:", 1)[0] if "Active:" in text else ""
        return sum(1 for line in active.splitlines() if "node_" in line)

    def wait_for_nodes(self, count: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                assert node.process.poll() is None or node.process.returncode == -signal.SIGKILL, open(
                    node.log.name
                ).read()
            if self.alive_nodes() >= count:
                return
            time.sleep(0.5)
        raise AssertionError(f"the Ray cluster did not reach {count} node(s) in {timeout:g} s")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
