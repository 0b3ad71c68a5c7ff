"""A local stand-in for Segment's HTTP tracking API (``POST /v1/batch``), as documented:
write key as basic-auth user, batches <= 500 KB and <= 2,500 messages, messages <= 32 KB,
de-duplication by messageId; and for its Public API's workspace regulations (``POST
/regulations``: a bearer token, at most 5,000 subject ids, ``{"data": {"regulateId"}}``;
``GET /regulations/{id}``: its ``overallStatus``, as set in ``status``).
Failures are scripted per request, for either."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeSegment:
    REGULATION_TYPES = (
        "DELETE_INTERNAL",
        "DELETE_ONLY",
        "SUPPRESS_ONLY",
        "SUPPRESS_WITH_DELETE",
        "SUPPRESS_WITH_DELETE_INTERNAL",
        "UNSUPPRESS",
    )

    def __init__(self, write_key: str = "wk-test", api_token: str = "sgp-test") -> None:
        self.write_key = write_key
        self.api_token = api_token
        self.regulations: list[dict[str, Any]] = []  # accepted: id, type, subject type, subject ids
        self.status: dict[str, str] = {}  # regulation id -> overallStatus (default INITIALIZED)
        self.status_asked: Counter = Counter()  # regulation id -> GET /regulations/{id} calls
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
                if self.path not in ("/v1/batch", "/regulations"):
                    return self._reply(404, {"error": "not found"})
                if self.path == "/regulations":
                    expected = f"Bearer {outer.api_token}"
                else:
                    expected = "Basic " + base64.b64encode(f"{outer.write_key}:".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    return self._reply(401, {"error": "invalid write key or token"})
                if action == "500":
                    return self._reply(500, {"error": "internal"})
                if isinstance(action, tuple) and action[0] == "429":
                    return self._reply(429, {"error": "rate limited"}, {"Retry-After": str(action[1])})
                if isinstance(action, tuple) and action[0] == "timeout":
                    time.sleep(action[1])
                    return self._reply(504, {"error": "gateway timeout"})
                if self.path == "/regulations":
                    return self._regulation(raw)
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

            def do_GET(self) -> None:  # noqa: N802
                if self.headers.get("Authorization") != f"Bearer {outer.api_token}":
                    return self._reply(401, {"error": "invalid token"})
                regulate_id = self.path.removeprefix("/regulations/")
                with outer.lock:
                    known = any(r["id"] == regulate_id for r in outer.regulations)
                    outer.status_asked[regulate_id] += 1
                if not self.path.startswith("/regulations/") or not known:
                    return self._reply(404, {"errors": [{"type": "not-found", "message": "Resource not found"}]})
                regulation = {
                    "id": regulate_id,
                    "workspaceId": "ws-test",
                    "overallStatus": outer.status.get(regulate_id, "INITIALIZED"),
                    "createdAt": "2026-12-04T00:00:00Z",
                    "streamStatus": [],
                }
                return self._reply(200, {"data": {"regulation": regulation}})

            def _regulation(self, raw: bytes) -> None:
                body = json.loads(raw)
                ids = body.get("subjectIds")
                if (
                    body.get("regulationType") not in outer.REGULATION_TYPES
                    or body.get("subjectType") not in ("USER_ID", "OBJECT_ID")
                    or not isinstance(ids, list)
                    or not ids
                    or len(ids) > 5000
                    or not all(isinstance(i, str) and i for i in ids)
                ):
                    return self._reply(422, {"errors": [{"type": "validation", "message": "invalid regulation"}]})
                with outer.lock:
                    regulate_id = f"reg-{len(outer.regulations) + 1}"
                    outer.regulations.append(
                        {
                            "id": regulate_id,
                            "type": body["regulationType"],
                            "subject_type": body["subjectType"],
                            "subject_ids": ids,
                        }
                    )
                return self._reply(200, {"data": {"regulateId": regulate_id}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/batch"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def deleted(self) -> list[str]:
        """Every user id of every accepted regulation, in order (repeats kept)."""
        return [i for r in self.regulations for i in r["subject_ids"]]

    def users(self) -> dict[str, dict[str, Any]]:
        """Latest accepted traits per user."""
        return {m["userId"]: m["traits"] for m in self.accepted.values()}

    def __enter__(self) -> FakeSegment:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
