#!/usr/bin/env python3
"""tcp_proxy.py LISTEN_PORT TARGET_HOST TARGET_PORT — forwards 127.0.0.1:LISTEN_PORT
to the target until killed. Killing it cuts every link at once (the kernel
closes the sockets), which is how the CLI tests make a broker "go away"
without touching the shared broker; starting it again on the same port lets
the client reconnect."""
import socket
import sys
import threading


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main():
    port, host, tport = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(16)
    print("listening", flush=True)
    while True:
        c, _ = ls.accept()
        try:
            u = socket.create_connection((host, tport))
        except OSError:
            c.close()
            continue
        for a, b in ((c, u), (u, c)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()


if __name__ == "__main__":
    main()
