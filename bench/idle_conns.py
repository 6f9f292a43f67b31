#!/usr/bin/env python3
"""Hold N idle keep-alive HTTP/1.1 connections open against one server (bench/run.sh's idle rows).

Opens N TCP connections to HOST:PORT, sends one GET on each (with the given headers, keep-alive),
reads each full response and checks its status, then leaves every connection open and idle. At
most --concurrency connections are being set up at a time, so that the server's listen backlog is
never overrun and the figure measures held connections, not a connect storm. When all are done it
prints one JSON line starting with "ready" (open, failed, statuses, first error) and holds the
connections until --hold expires, stdin closes (--hold stdin) or SIGTERM/SIGINT arrives; then it
prints a "done" JSON line (how many the server closed meanwhile) and closes them all.
Standard library only (selectors, nonblocking sockets): a connection costs a socket and a few
bytes here, so the client itself stays small at 10,000 connections.
"""

import argparse
import errno
import json
import resource
import selectors
import signal
import socket
import sys
import time


def raise_fd_limit(need):
    """Soft RLIMIT_NOFILE up to the hard limit; exit 2 with a clear message if N cannot fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(max(need, soft), hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        sys.exit(f"idle_conns.py: open files limit is {soft} (hard {hard}); {need} needed "
                 "(raise it with ulimit -n, or ask for fewer connections)")


class Conn:
    """One connection's state: connecting -> sending -> reading -> idle (or failed)."""

    __slots__ = ("sock", "state", "out", "buf", "status")

    def __init__(self, sock, request):
        self.sock = sock
        self.state = "connecting"
        self.out = request
        self.buf = b""
        self.status = None


def response_complete(buf):
    """(status, keep_alive) once buf holds one whole response, else None. Content-Length and
    chunked bodies; a response without either on a keep-alive connection has no body here."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = buf[:head_end].decode("latin-1").split("\r\n")
    parts = head[0].split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip().lower()
    body = buf[head_end + 4:]
    if "chunked" in headers.get("transfer-encoding", ""):
        if not body.endswith(b"0\r\n\r\n"):
            return None
    elif len(body) < int(headers.get("content-length", "0") or 0):
        return None
    keep_alive = headers.get("connection", "") != "close"
    return status, keep_alive


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("-n", "--connections", type=int, default=10000)
    ap.add_argument("--path", default="/")
    ap.add_argument("-H", "--header", action="append", default=[], help="'Name: value', repeatable")
    ap.add_argument("--concurrency", type=int, default=500, help="connections set up at a time")
    ap.add_argument("--hold", default="stdin",
                    help="seconds to hold the idle connections, 'stdin' (until stdin closes; "
                         "the default) or 'signal' (until SIGTERM/SIGINT); a signal always ends it")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds allowed to set every connection up")
    args = ap.parse_args()

    n = args.connections
    raise_fd_limit(n + 64)
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))

    headers = "".join(f"{h}\r\n" for h in args.header)
    request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n{headers}"
               "Connection: keep-alive\r\n\r\n").encode()
    sel = selectors.DefaultSelector()
    started = idle = failed = 0
    busy = 0
    statuses = {}
    first_error = None
    closed_by_server = 0
    conns = []

    def fail(c, why):
        nonlocal failed, busy, first_error
        if first_error is None:
            first_error = why
        failed += 1
        busy -= 1
        c.state = "failed"
        sel.unregister(c.sock)
        c.sock.close()

    t0 = time.monotonic()
    while (idle + failed) < n and not stop:
        while started < n and busy < args.concurrency:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            c = Conn(s, request)
            conns.append(c)
            started += 1
            busy += 1
            err = s.connect_ex((args.host, args.port))
            if err not in (0, errno.EINPROGRESS):
                sel.register(s, selectors.EVENT_WRITE, c)
                fail(c, f"connect: {errno.errorcode.get(err, err)}")
                continue
            sel.register(s, selectors.EVENT_WRITE, c)
        if time.monotonic() - t0 > args.timeout:
            for c in conns:
                if c.state in ("connecting", "sending", "reading"):
                    fail(c, f"not done after {args.timeout:.0f} s")
            break
        for key, _ in sel.select(timeout=1.0):
            c = key.data
            try:
                if c.state == "connecting":
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        fail(c, f"connect: {errno.errorcode.get(err, err)}")
                        continue
                    c.state = "sending"
                if c.state == "sending":
                    c.out = c.out[c.sock.send(c.out):]
                    if not c.out:
                        c.state = "reading"
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                    continue
                if c.state == "reading":
                    data = c.sock.recv(65536)
                    if not data:
                        fail(c, "closed by the server before the response ended")
                        continue
                    c.buf += data
                    done = response_complete(c.buf)
                    if done is None:
                        continue
                    c.status, keep_alive = done
                    statuses[c.status] = statuses.get(c.status, 0) + 1
                    if c.status != 200 or not keep_alive:
                        fail(c, f"status {c.status}" + ("" if keep_alive else ", Connection: close"))
                        continue
                    c.state = "idle"
                    c.buf = b""
                    idle += 1
                    busy -= 1
                    continue
                if c.state == "idle":  # the server closed (or wrote to) an idle connection
                    if not c.sock.recv(65536):
                        c.state = "closed"
                        closed_by_server += 1
                        sel.unregister(c.sock)
            except OSError as e:
                fail(c, f"{c.state}: {e.strerror or e}")

    setup_s = time.monotonic() - t0
    print("ready " + json.dumps({"open": sum(1 for c in conns if c.state == "idle"), "failed": failed, "wanted": n,
                                 "statuses": {str(k): v for k, v in sorted(statuses.items())},
                                 "first_error": first_error, "setup_seconds": round(setup_s, 1)}),
          flush=True)

    # Hold: watch the idle connections for the server closing them, and stdin for EOF.
    deadline = None
    if args.hold not in ("stdin", "signal"):
        deadline = time.monotonic() + float(args.hold)
    if args.hold == "stdin":
        sel.register(sys.stdin, selectors.EVENT_READ, None)
    while not stop and (deadline is None or time.monotonic() < deadline):
        for key, _ in sel.select(timeout=0.5):
            if key.data is None:
                if not sys.stdin.buffer.read1(4096):
                    stop.append(1)
                    sel.unregister(sys.stdin)
                continue
            c = key.data
            try:
                if not c.sock.recv(65536):
                    c.state = "closed"
                    closed_by_server += 1
                    sel.unregister(c.sock)
            except OSError:
                c.state = "closed"
                closed_by_server += 1
                sel.unregister(c.sock)
    still_open = sum(1 for c in conns if c.state == "idle")
    print("done " + json.dumps({"still_open": still_open, "closed_by_server": closed_by_server}),
          flush=True)
    for c in conns:
        try:
            c.sock.close()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
