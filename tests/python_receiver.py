#!/usr/bin/env python3
"""An OpenMail webhook receiver written from the documented formula alone.

It shares no code with the crate, so a delivery it accepts is one that any receiver
implementing the documentation accepts:

    X-Signature = hex(HMAC-SHA256(key = secret, msg = X-Timestamp + "." + raw_body))

with the secret's UTF-8 bytes as the key, the timestamp exactly as received, and a
replay window of 300 seconds either way.

Usage: OPENMAIL_WEBHOOK_SECRET=whsec_... python3 tests/python_receiver.py [PORT]

It listens on 127.0.0.1 (PORT 0, the default, picks a free port) and prints
"listening on PORT" as its first line. Each POST gets 200 with a JSON report of what
arrived, or 400 with {"ok": false, "reason": "..."}. Standard library only.
"""

import hashlib
import hmac
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE = 300
SECRET = os.environ.get("OPENMAIL_WEBHOOK_SECRET", "").encode("utf-8")
SEEN = {}
SEEN_LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        timestamp = self.headers.get("X-Timestamp")
        signature = self.headers.get("X-Signature")
        if timestamp is None or signature is None:
            return self.answer(400, {"ok": False, "reason": "missing header"})
        if not re.fullmatch(r"-?[0-9]+", timestamp):
            return self.answer(400, {"ok": False, "reason": "malformed timestamp"})
        age = int(time.time()) - int(timestamp)
        if abs(age) > TOLERANCE:
            return self.answer(400, {"ok": False, "reason": "stale", "age": age})
        expected = hmac.new(
            SECRET, timestamp.encode("ascii") + b"." + body, hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return self.answer(400, {"ok": False, "reason": "signature mismatch"})

        try:
            event = json.loads(body)
        except ValueError:
            event = None
        event_id = event.get("event_id") if isinstance(event, dict) else None
        with SEEN_LOCK:
            SEEN[event_id] = SEEN.get(event_id, 0) + 1
            seen = SEEN[event_id]
        self.answer(
            200,
            {
                "ok": True,
                "path": self.path,
                "content_type": self.headers.get("Content-Type"),
                "x_event_id": self.headers.get("X-Event-Id"),
                "x_timestamp": timestamp,
                "x_signature": signature,
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body": body.decode("utf-8", "replace"),
                "event": event.get("event") if isinstance(event, dict) else None,
                "event_id": event_id,
                "attempt": event.get("attempt") if isinstance(event, dict) else None,
                "times_seen": seen,
            },
        )

    def answer(self, status, report):
        payload = json.dumps(report).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):
        pass


def main():
    if not SECRET:
        print("OPENMAIL_WEBHOOK_SECRET is not set", file=sys.stderr)
        sys.exit(2)
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
