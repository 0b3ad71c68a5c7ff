"""A local stand-in for Segment's HTTP tracking API (``POST /v1/batch``), as documented:
write key as basic-auth user, batches <= 500 KB and <= 2,500 messages, messages <= 32 KB,
de-duplication by messageId. Failures are scripted per request."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeSegment:
    def __init__(self, write_key: str = "wk-test") -> None:
        self.write_key = write_key
        self.script: list[Any] = []  # per request: "500", ("429", seconds), ("timeout", seconds), "accept-then-hang"
        self.accepted: dict[str, dict[str, Any]] = {}  # messageId -> message
        self.received = Counter()  # messageId -> times received in a 200 response or processed
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                with outer.lock:
                    action = outer.script.pop(0) if outer.script else None
                    outer.requests.append({"bytes": len(raw), "action": action})
                if self.path != "/v1/batch":
                    return self._reply(404, {"error": "not found"})
                expected = "Basic " + base64.b64encode(f"{outer.write_key}:".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    return self._reply(401, {"error": "invalid write key"})
                if action == "500":
                    return self._reply(500, {"error": "internal"})
                if isinstance(action, tuple) and action[0] == "429":
                    return self._reply(429, {"error": "rate limited"}, {"Retry-After": str(action[1])})
                if isinstance(action, tuple) and action[0] == "timeout":
                    time.sleep(action[1])
                    return self._reply(504, {"error": "gateway timeout"})
                if length > 500 * 1024:
                    return self._reply(400, {"error": "batch over 500 KB"})
                batch = json.loads(raw)["batch"]
                if len(batch) > 2500:
                    return self._reply(400, {"error": "batch over 2,500 messages"})
                if any(len(json.dumps(m).encode()) > 32 * 1024 for m in batch):
                    return self._reply(400, {"error": "message over 32 KB"})
                with outer.lock:
                    for message in batch:
                        outer.received[message["messageId"]] += 1
                        outer.accepted.setdefault(message["messageId"], message)  # Segment de-duplicates
                if action == "accept-then-hang":
                    time.sleep(2)
                return self._reply(200, {"success": True})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/batch"

    def users(self) -> dict[str, dict[str, Any]]:
        """Latest accepted traits per user."""
        return {m["userId"]: m["traits"] for m in self.accepted.values()}

    def __enter__(self) -> FakeSegment:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
