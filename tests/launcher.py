"""A warm launcher for the ``retain`` commands that the examples' shell scripts run (tests/test_examples.py).

Every ``retain`` line of an example would start a new interpreter and import torch, transformers, peft and
datasets again: 3.5-4 s of one core each, about ten times per run of the examples. Instead the test starts
one :func:`serve` process per worker that imports that stack once (``retain.utils.startup.import_ml_stack``,
then ``retain.cli``) and waits on a Unix socket. The examples' ``retain`` on PATH is :data:`CLIENT`, a
stdlib-only script that sends its argv, working folder and environment, and its stdin, stdout and stderr
(file descriptors, ``SCM_RIGHTS``). The server forks; the child takes them over and runs
``retain.cli.main(argv)`` exactly as ``python -m retain`` would; the client forwards SIGINT, SIGTERM and
SIGHUP to the child and exits with its exit code (or dies of its signal). A child whose client died (a
timeout's SIGKILL) ends itself.

What differs from a new interpreter: the stack's modules are already imported, with the environment the
server started with (the tests' ``HF_HUB_OFFLINE``, ``OMP_NUM_THREADS``...); an example's own variables reach
the child's ``os.environ``. The entry point itself (``python -m retain``, the console script) runs as a real
process in tests/test_cli.py and the subprocess tests.
"""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import struct
import sys
import threading

CLIENT = r'''#!{python}
import array, json, os, signal, socket, struct, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect({path!r})
msg = json.dumps({{"argv": ["retain"] + sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
sock.sendmsg([struct.pack("!I", len(msg)) + msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
f = sock.makefile("rb")
pid = struct.unpack("!i", f.read(4))[0]
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, lambda sig, _frame: os.kill(pid, sig))
raw = f.read(4)
status = struct.unpack("!i", raw)[0] if len(raw) == 4 else 1
if status < 0:  # killed by a signal: die of the same one, as the process itself would have
    signal.signal(-status, signal.SIG_DFL)
    os.kill(os.getpid(), -status)
sys.exit(status)
'''


def write_client(path: str, socket_path: str) -> None:
    """Write the ``retain`` client script at ``path`` (executable), talking to the server at ``socket_path``."""
    with open(path, "w") as f:
        f.write(CLIENT.format(python=sys.executable, path=socket_path))
    os.chmod(path, 0o755)


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    header, fds = b"", []
    fd_size = array.array("i").itemsize
    while len(header) < 4:
        data, anc, _flags, _addr = conn.recvmsg(4 - len(header), socket.CMSG_SPACE(3 * fd_size))
        if not data:
            raise ConnectionError("client went away")
        header += data
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += array.array("i", payload[: len(payload) - len(payload) % fd_size]).tolist()
    size = struct.unpack("!I", header)[0]
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("client went away")
        body += chunk
    return json.loads(body), fds


def _run_child(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: become the command, run it, exit with its code (never returns)."""
    code = 1
    try:
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
        for fd in fds:
            os.close(fd)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False, buffering=1)
        sys.stderr = open(2, "w", closefd=False, buffering=1)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = request["argv"]

        def end_when_client_dies() -> None:
            while conn.recv(1):
                pass
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=end_when_client_dies, daemon=True).start()
        from retain.cli import main

        try:
            result = main(sys.argv[1:])
            code = result if isinstance(result, int) else 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # what an uncaught exception does in a real interpreter: a traceback and exit 1
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _handle(conn: socket.socket) -> None:
    try:
        request, fds = _recv_request(conn)
    except (ConnectionError, ValueError):
        conn.close()
        return
    pid = os.fork()
    if pid == 0:
        _run_child(conn, request, fds)
    for fd in fds:
        os.close(fd)

    def wait() -> None:
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)  # negative: killed by that signal
        try:
            conn.sendall(struct.pack("!i", code))
        except OSError:
            pass
        conn.close()

    conn.sendall(struct.pack("!i", pid))
    threading.Thread(target=wait, daemon=True).start()


def serve(socket_path: str) -> None:
    """Import the stack, listen on ``socket_path``, fork one child per client, forever."""
    from retain.utils.startup import import_ml_stack

    import_ml_stack()
    import retain.cli  # noqa: F401  (the command table; each command's module loads in the child)

    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(socket_path)
    srv.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        _handle(conn)


if __name__ == "__main__":
    serve(sys.argv[1])
