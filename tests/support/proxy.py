"""A TCP forwarder on a loopback port, standing for what sits between a process and Redis
or a database (a virtual IP, a load balancer, a proxy): it can move to another server (a
failover behind a stable address), can cut one connection's server side while keeping its
client side open and silent (a connection the network lost without telling the client),
and can lose the answer to a COMMIT (the server commits; the client sees its connection
cut before the answer).

It runs in a process of its own, one event loop forwarding every connection, as a real
proxy does: what Redis sends in one pass (a write's reply, and the announcement of that
write to another process) is forwarded in one pass too. Run in the test's process, with a
thread per connection and direction, it delayed announcements by up to 22 ms behind the
replies they came with (docs/security.md, section 2).

    python -m tests.support.proxy TARGET_PORT   (prints "ready PORT"; then reads commands)
"""

from __future__ import annotations

import selectors
import socket
import subprocess
import sys
import threading
from typing import Any

from . import ROOT


class Proxy:
    """The forwarder's process, driven from the test's."""

    def __init__(self, target_port: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.proxy", str(target_port)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lock = threading.Lock()
        ready = self._readline().split()
        if ready[:1] != ["ready"]:
            raise RuntimeError(f"the proxy did not start: {ready}")
        self.port = int(ready[1])

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def point_to(self, port: int) -> None:
        """Send new connections to ``port`` and close the existing ones (a failover)."""
        self._ask(f"point {port}")

    def link_of(self, client_port: int) -> Link:
        """The link of the connection that Redis sees coming from ``client_port`` (``CLIENT
        LIST``'s addr); StopIteration when there is none."""
        if self._ask(f"has {client_port}") != "yes":
            raise StopIteration(client_port)
        return Link(self, client_port)

    def lose_next_commit_answer(self) -> None:
        """The next COMMIT a client sends reaches the server; its answer is dropped and the
        client's side of that connection closed."""
        self._ask("lose-commit-answer")

    def close(self, *args: Any) -> None:
        if self.process.poll() is None:
            self._ask("close")
            self.process.wait(10)

    def _ask(self, command: str) -> str:
        assert self.process.stdin is not None
        with self.lock:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
            return self._readline()

    def _readline(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()


class Link:
    def __init__(self, proxy: Proxy, client_port: int) -> None:
        self.proxy, self.client_port = proxy, client_port

    def cut_server_side(self) -> None:
        """The server sees the connection close; the client sees nothing, ever."""
        self.proxy._ask(f"cut {self.client_port}")


# --- the forwarder's process ----------------------------------------------------------------


class Forwarder:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.selector = selectors.DefaultSelector()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(sys.stdin, selectors.EVENT_READ, "command")
        # Redis's view of a connection's address (its port) -> [client, server, silent]
        self.links: dict[int, list[Any]] = {}
        self.lose_commit_answer = False
        self.running = True

    def run(self) -> None:
        print(f"ready {self.listener.getsockname()[1]}", flush=True)
        while self.running:
            for key, _ in self.selector.select():
                if key.data == "accept":
                    self._accept()
                elif key.data == "command":
                    self._command(sys.stdin.readline().split())
                else:
                    self._forward(*key.data)

    def _command(self, words: list[str]) -> None:
        answer = "ok"
        if not words or words[0] == "close":
            self._point(self.target_port)
            self.running = False
        elif words[0] == "point":
            self._point(int(words[1]))
        elif words[0] == "lose-commit-answer":
            self.lose_commit_answer = True
        elif words[0] == "has":
            answer = "yes" if int(words[1]) in self.links else "no"
        elif words[0] == "cut":
            link = self.links.get(int(words[1]))
            if link is not None:
                link[2] = True
                self._drop(link[1])
        print(answer, flush=True)

    def _point(self, port: int) -> None:
        self.target_port = port
        links, self.links = self.links, {}
        for client, server, _ in links.values():
            self._drop(client)
            self._drop(server)

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        client.setblocking(True)
        try:
            server = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
        except OSError:
            client.close()  # nothing listens there: as a dead server would
            return
        server.settimeout(None)
        for sock in (client, server):
            # As Redis and redis-py do, and real proxies: Nagle's algorithm would hold a small
            # write (an announcement) until the previous one is acknowledged.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        port = server.getsockname()[1]
        self.links[port] = [client, server, False]
        self.selector.register(client, selectors.EVENT_READ, (port, client, server))
        self.selector.register(server, selectors.EVENT_READ, (port, server, client))

    def _forward(self, port: int, source: socket.socket, target: socket.socket) -> None:
        link = self.links.get(port)
        silent = link is None or link[2]
        try:
            data = source.recv(65536)
            if data and not silent:
                target.sendall(data)
        except OSError:
            data = b""
        if data and link is not None and source is link[0] and self.lose_commit_answer and b"COMMIT" in data:
            # Sent on; from now on the server's side is silent and the client's is closed.
            self.lose_commit_answer = False
            link[2] = True
            self._drop(source)
            return
        if data:
            return
        # One side closed: a silent link keeps its client side open; else both close.
        self._drop(source)
        if not silent:
            self._drop(target)
            self.links.pop(port, None)

    def _drop(self, sock: socket.socket) -> None:
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


if __name__ == "__main__":
    Forwarder(int(sys.argv[1])).run()
