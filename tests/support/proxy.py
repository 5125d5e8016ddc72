"""A TCP forwarder on a loopback port, standing for what sits between a process and Redis
(a virtual IP, a load balancer, a proxy): it can move to another server (a failover behind
a stable address) and can cut one connection's server side while keeping its client side
open and silent (a connection the network lost without telling the client)."""

from __future__ import annotations

import socket
import threading
from typing import Any

from . import free_port


class Link:
    """One client connection and its server side."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client, self.server = client, server
        self.server_port = server.getsockname()[1]  # the client's address as Redis sees it
        self.silent = False

    def pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self.silent:
                    target.sendall(data)
        except OSError:
            pass
        if not self.silent:
            self.close()

    def close(self) -> None:
        for sock in (self.client, self.server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def cut_server_side(self) -> None:
        """The server sees the connection close; the client sees nothing, ever."""
        self.silent = True
        try:
            self.server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.server.close()


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.links: list[Link] = []
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()  # nothing listens there: as a dead server would
                continue
            server.settimeout(None)
            link = Link(client, server)
            with self.lock:
                self.links.append(link)
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=link.pump, args=(source, target), daemon=True).start()

    def point_to(self, port: int) -> None:
        """Send new connections to ``port`` and close the existing ones (a failover)."""
        self.target_port = port
        with self.lock:
            links, self.links = self.links, []
        for link in links:
            link.close()

    def link_of(self, client_port: int) -> Link:
        """The link of the connection that Redis sees coming from ``client_port`` (``CLIENT LIST``'s addr)."""
        with self.lock:
            return next(link for link in self.links if link.server_port == client_port)

    def close(self, *args: Any) -> None:
        self.listener.close()
        self.point_to(self.target_port)
