#!/usr/bin/env python3
"""A tether exec adapter (protocol v1, docs/plugins.md) that bridges a local TCP socket.

Connect with `nc 127.0.0.1 7010` (or any line-based client) and chat with the agent:

    ann> hello                  each line you type is a message to the agent
    /as ann                     first line (optional): who you are (default: "local")
    !press perm:1:once          press a button (buttons are shown as "[buttons] label=data | ...")

Each connection is its own chat ("tcp-<user>"); the bot's messages come back as lines, a
message of several lines as several lines, followed by a line with a single ".".

Environment:
    BRIDGE_LISTEN     address to listen on (default 127.0.0.1:7010; port 0 picks one)
    BRIDGE_PORT_FILE  if set, the port actually listened on is written there
                      (as "<port> <pid>\\n", written atomically)

Standard library only. stdout carries protocol lines only; diagnostics go to stderr.
"""

import json
import os
import socket
import sys
import threading
import time

VERSION = 1
out_lock = threading.Lock()
clients_lock = threading.Lock()
clients = {}  # chat id -> list of sockets
counter = {"message": 0, "sent": 0, "callback": 0}


def out(obj):
    """Write one protocol line to tether (one write, flushed)."""
    obj["v"] = VERSION
    line = json.dumps(obj, ensure_ascii=False) + "\n"
    with out_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def log(text, level="info"):
    out({"type": "log", "level": level, "text": text})


def next_id(kind):
    with clients_lock:
        counter[kind] += 1
        return "%s-%d" % (kind[0], counter[kind])


def write_to_chat(chat_id, text):
    """Write text to every connection of a chat; false when there is none."""
    data = (text.rstrip("\n") + "\n.\n").encode("utf-8")
    with clients_lock:
        conns = list(clients.get(chat_id, []))
    delivered = False
    for conn in conns:
        try:
            conn.sendall(data)
            delivered = True
        except OSError:
            pass
    return delivered


def serve_client(conn, addr):
    user = "local"
    chat_id = None
    reader = conn.makefile("r", encoding="utf-8", errors="replace", newline="\n")

    def join(new_user):
        nonlocal user, chat_id
        with clients_lock:
            if chat_id and conn in clients.get(chat_id, []):
                clients[chat_id].remove(conn)
            user = new_user
            chat_id = "tcp-" + user
            clients.setdefault(chat_id, []).append(conn)

    join(user)
    try:
        for raw in reader:
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            if line.startswith("/as "):
                join(line[4:].strip() or "local")
                continue
            if line.startswith("!press "):
                out({"type": "callback", "callbackId": next_id("callback"), "chatId": chat_id,
                     "senderId": user, "senderName": user, "isGroup": False, "data": line[7:].strip()})
                continue
            out({"type": "message", "messageId": next_id("message"), "chatId": chat_id,
                 "senderId": user, "senderName": user, "isGroup": False, "mentioned": True,
                 "text": line, "sentAt": int(time.time() * 1000)})
    except OSError:
        pass
    finally:
        with clients_lock:
            if chat_id and conn in clients.get(chat_id, []):
                clients[chat_id].remove(conn)
        conn.close()


def accept_loop(server):
    while True:
        try:
            conn, addr = server.accept()
        except OSError:
            return
        threading.Thread(target=serve_client, args=(conn, addr), daemon=True).start()


def handle(request):
    """One line from tether."""
    kind = request.get("type")
    if kind == "hello":
        if VERSION not in request.get("versions", [VERSION]):
            log("tether does not speak protocol version %d" % VERSION, "error")
        return
    if kind in ("send", "buttons", "edit"):
        text = request.get("text", "")
        if kind == "buttons":
            labels = " | ".join("%s=%s" % (b.get("label", ""), b.get("data", "")) for b in request.get("buttons", []))
            text = text + "\n[buttons] " + labels
        if kind == "edit":
            text = "(edited %s) %s" % (request.get("messageId", ""), text)
        if write_to_chat(request.get("chatId"), text):
            out({"type": "sent", "ref": request.get("ref"), "messageId": next_id("sent")})
        else:
            out({"type": "sent", "ref": request.get("ref"), "error": "nobody is connected to this chat"})
        return
    if kind == "ack":
        return  # Nothing to show: the next message says what the press did.
    # "typing" is not declared in ready, and unknown types are ignored.


def main():
    listen = os.environ.get("BRIDGE_LISTEN", "127.0.0.1:7010")
    host, _, port = listen.rpartition(":")
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind((host or "127.0.0.1", int(port)))
    except (OSError, ValueError) as e:
        log("cannot listen on %s: %s" % (listen, e), "error")
        out({"type": "health", "ok": False, "error": "cannot listen on %s" % listen})
        return 1
    server.listen(16)
    actual = server.getsockname()[1]
    port_file = os.environ.get("BRIDGE_PORT_FILE")
    if port_file:
        tmp = port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d %d\n" % (actual, os.getpid()))
        os.replace(tmp, port_file)
    threading.Thread(target=accept_loop, args=(server,), daemon=True).start()
    out({"type": "ready", "capabilities": {"edit": True, "typing": False, "buttons": True, "maxLength": 2000}})
    log("listening on %s:%d" % (host or "127.0.0.1", actual))
    for line in sys.stdin:  # EOF: tether asks us to stop.
        line = line.strip()
        if not line:
            continue
        try:
            request = json.loads(line)
        except ValueError:
            print("not JSON from tether: %r" % line[:200], file=sys.stderr)
            continue
        if isinstance(request, dict) and request.get("v", VERSION) == VERSION:
            handle(request)
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
