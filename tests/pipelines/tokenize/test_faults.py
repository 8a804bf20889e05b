"""Transient S3 faults: a fault-injecting proxy in front of the S3 server; the run completes, nothing lost."""

from __future__ import annotations

import http.client
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import fsspec
import pytest

from pipelines.tokenize.pipeline import TokenizeConfig, run_tokenize
from pipelines.tokenize.sink import SinkConfig
from vtok.dataset import read_shard, shard_uris, table_tensors, validate_dataset
from vtok.video import DecodeConfig

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultProxy:
    """Forwards HTTP to the S3 server; every `every`-th request gets 503 SlowDown or a dropped connection."""

    def __init__(self, upstream: str, every: int = 4) -> None:
        self.upstream = urlparse(upstream)
        self.every = every
        self.count = 0
        self.faults: Counter[str] = Counter()
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    proxy.count += 1
                    n = proxy.count
                if n % proxy.every == 0:
                    if (n // proxy.every) % 2:
                        proxy.faults["503 SlowDown"] += 1
                        self.send_response(503)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(SLOW_DOWN)))
                        self.end_headers()
                        self.wfile.write(SLOW_DOWN)
                    else:
                        proxy.faults["connection reset"] += 1
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                        self.close_connection = True
                        self.connection.close()
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = f"{proxy.upstream.hostname}:{proxy.upstream.port}"
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    # HEAD answers carry the object's length with no body: keep the upstream header.
                    if k.lower() not in ("transfer-encoding", "connection") and (
                        k.lower() != "content-length" or self.command == "HEAD"
                    ):
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _tokens(uri: str, **fs_opts: object) -> dict[str, bytes]:
    out = {}
    for shard in shard_uris(uri, fs_opts or None):
        table = read_shard(shard, fs_opts or None)
        tensors = table_tensors(table)
        for i, src in enumerate(table.column("source_uri").to_pylist()):
            out[src.rsplit("/", 1)[-1]] = tensors["key_tokens"][i].tobytes() + tensors["residual_features"][i].tobytes()
    return out


def test_run_through_flaky_s3_completes_with_nothing_lost(
    ray_local, s3_bucket: str, s3_endpoint: str, shapes_corpus: Path
) -> None:
    fsspec.filesystem("s3").put(str(shapes_corpus) + "/", f"{s3_bucket}/raw/", recursive=True)
    cfg = dict(input=f"s3://{s3_bucket}/raw/manifest.jsonl", decode=DecodeConfig(fps=4.0, max_frames=8),
               sink=SinkConfig(rows_per_shard=2))
    run_tokenize(TokenizeConfig(output=f"s3://{s3_bucket}/clean", **cfg), progress=False)  # type: ignore[arg-type]
    with FaultProxy(s3_endpoint, every=4) as proxy:
        summary = run_tokenize(
            TokenizeConfig(output=f"s3://{s3_bucket}/flaky", endpoint_url=proxy.url, **cfg),  # type: ignore[arg-type]
            progress=False,
        )
        assert summary.clips_out == 6 and summary.quarantined == 0
        assert proxy.faults["503 SlowDown"] >= 3 and proxy.faults["connection reset"] >= 3, proxy.faults
    assert validate_dataset(f"s3://{s3_bucket}/flaky")[0] == []
    assert _tokens(f"s3://{s3_bucket}/flaky") == _tokens(f"s3://{s3_bucket}/clean")
    assert len(_tokens(f"s3://{s3_bucket}/clean")) == 6


@pytest.fixture(autouse=True)
def _fresh_s3fs_instances() -> None:
    # s3fs caches filesystems by options: a client pointed at the proxy must not outlive it.
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
