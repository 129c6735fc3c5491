"""Loopback ports for child processes (Envoy, nginx, the sidecar) that a test harness must
name before starting them.

Binding 127.0.0.1:0 and closing the socket frees the port at once, and the kernel may hand the
same port to this process's next bind: two children told one port, one of them fails to start
and the suite reports a "not ready" that has nothing to do with the product. The ports handed
out are remembered and a repeat is drawn again. (Rust tests do better: the sidecar binds port 0
itself and its start line names the address; see tests/support ChildSidecar.)
"""
import os
import socket
import sys
import threading

_GIVEN: set[int] = set()
_LOCK = threading.Lock()


def free_port() -> int:
    """A loopback port free a moment ago and never before returned by this process."""
    with _LOCK:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _GIVEN:
                _GIVEN.add(port)
                return port


if __name__ == "__main__":
    # Self-check: many ports in a row, all distinct and bindable.
    ports = [free_port() for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)]
    assert len(set(ports)) == len(ports), "a port was handed out twice"
    print(f"{len(ports)} distinct ports ({os.path.basename(__file__)})")
