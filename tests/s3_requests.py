"""Count the requests a moto S3 server received, by operation, from the server's own record.

Counting at the server (moto's recorder, `/moto-api/recorder/*`) sees every request any
process made: the test process, a subprocess, dataloader workers. A client-side count would miss
the requests of other processes and could be fooled by a client cache.

The recorder is global to the server: do not nest `count_requests` or run two at once on the
same server.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

# Query parameters of ListObjects(V2): a bucket-level GET with only these lists keys; any other
# (`?location`, `?versioning`, ...) reads a bucket setting.
_LIST_PARAMETERS = {
    "list-type", "prefix", "delimiter", "max-keys", "encoding-type", "continuation-token",
    "start-after", "fetch-owner", "marker",
}  # fmt: skip


def _call(endpoint_url: str, action: str, method: str = "POST") -> bytes:
    body = b"" if method == "POST" else None
    request = urllib.request.Request(f"{endpoint_url}/moto-api/recorder/{action}", data=body, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def operation(method: str, url: str) -> str | None:
    """An S3 request as an operation name; None for moto's own API.

    Path-style addressing (what botocore uses for an IP endpoint): `/bucket` is a bucket-level
    request, `/bucket/key` an object request.
    """
    parts = urlsplit(url)
    if parts.path.startswith("/moto-api/"):
        return None
    key = parts.path.lstrip("/").partition("/")[2]
    query = parse_qs(parts.query, keep_blank_values=True)
    if method == "HEAD":
        return "HEAD object" if key else "HEAD bucket"
    if method == "GET":
        if key:
            return "GET object"
        return "LIST" if not set(query) - _LIST_PARAMETERS else "GET bucket"
    if method == "PUT":
        return "PUT object" if key else "CREATE bucket"
    return f"{method} {'object' if key else 'bucket'}"


@contextlib.contextmanager
def count_requests(endpoint_url: str) -> Iterator[Counter]:
    """Record the server's requests inside the block; the Counter is filled when it exits.

    >>> with count_requests(moto.endpoint_url) as counts:
    ...     read_something()
    >>> counts["GET object"]
    """
    counts: Counter = Counter()
    _call(endpoint_url, "reset-recording")
    _call(endpoint_url, "start-recording")
    try:
        yield counts
    finally:
        _call(endpoint_url, "stop-recording")
        for line in _call(endpoint_url, "download-recording", method="GET").decode().splitlines():
            if line.strip():
                entry = json.loads(line)
                name = operation(entry["method"], entry["url"])
                if name:
                    counts[name] += 1
