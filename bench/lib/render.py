#!/usr/bin/env python3
"""Render deploy/nginx.conf or deploy/haproxy.cfg for bench/run: loopback ports, no TLS,
logs and temp files in the run's temp dir. Every rewrite must apply, so a change to the
deploy files that the bench no longer understands fails loudly instead of benchmarking
something else.

usage: render.py nginx|haproxy SRC DST TMP LISTEN_PORT GW1_PORT GW2_PORT
"""
import re
import sys


def sub(text, pattern, repl, flags=re.M):
    new, n = re.subn(pattern, repl, text, flags=flags)
    if n == 0:
        sys.exit(f"render.py: pattern not found in the deploy file: {pattern!r}")
    return new


def nginx(s, tmp, listen, gw1, gw2):
    s = sub(s, r"^user .*;$", "user root;")
    s = sub(s, r"^worker_rlimit_nofile .*;\n", "")
    s = sub(s, r"^pid .*;$", f"pid {tmp}/nginx-lb.pid;")
    s = sub(s, r"^error_log .*;$", f"error_log {tmp}/nginx-lb.error.log warn;")
    s = sub(s, r"^(\s*)access_log .*;$",
            r"\1access_log off;\n"
            + "".join(f"\\1{d}_temp_path {tmp}/nginx-lb/{d};\n" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")))
    s = sub(s, r"server 127\.0\.0\.1:8001 ", f"server 127.0.0.1:{gw1} ")
    s = sub(s, r"server 127\.0\.0\.1:8002 ", f"server 127.0.0.1:{gw2} ")
    s = sub(s, r"^(\s*)listen 443 ssl http2;.*$", rf"\1listen 127.0.0.1:{listen};")
    s = sub(s, r"^\s*ssl_.*\n", "")
    # drop the plain-HTTP redirect server
    s = sub(s, r"\n    server \{\n        listen 80;\n.*?\n    \}\n", "\n", flags=re.S)
    return s


def haproxy(s, tmp, listen, gw1, gw2):
    s = sub(s, r"^\s*log /dev/log.*\n", "")
    # the run's HAProxy is the benchmark's own process: no privilege drop, chroot or stats socket
    for directive in ("user", "group", "chroot", "stats socket"):
        s = sub(s, rf"^\s*{directive} .*\n", "")
    s = sub(s, r"^(\s*)maxconn 20000$", r"\1maxconn 4000")  # within an unprivileged FD limit
    s = sub(s, r"^\s*option httplog\n", "")
    s = sub(s, r"^\s*ssl-default-bind-options.*\n", "")
    s = sub(s, r"^\s*bind :443 .*\n", "")
    s = sub(s, r"^(\s*)bind :80$", rf"\1bind 127.0.0.1:{listen}")
    s = sub(s, r"^\s*http-request redirect scheme https.*\n", "")
    s = sub(s, r"server gw1 127\.0\.0\.1:8001 ", f"server gw1 127.0.0.1:{gw1} ")
    s = sub(s, r"server gw2 127\.0\.0\.1:8002 ", f"server gw2 127.0.0.1:{gw2} ")
    return s


def main():
    kind, src, dst, tmp, listen, gw1, gw2 = sys.argv[1:8]
    text = open(src).read()
    text = (nginx if kind == "nginx" else haproxy)(text, tmp, listen, gw1, gw2)
    open(dst, "w").write(text)


if __name__ == "__main__":
    main()
