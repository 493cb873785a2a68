"""Real servers on localhost for the storage tests: an HTTP server over a folder (with chosen faults) and
moto's standalone S3-protocol server."""

from __future__ import annotations

import contextlib
import http.server
import os
import threading
from pathlib import Path
from typing import ClassVar


class _Handler(http.server.SimpleHTTPRequestHandler):
    faults: ClassVar[dict[str, str]] = {}
    served: ClassVar[dict[str, int]] = {}

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        name = self.path.lstrip("/")
        count = self.served[name] = self.served.get(name, 0) + 1
        fault = self.faults.get(name)
        if fault == "404":
            self.send_error(404)
            return
        if fault == "drop" or (fault == "drop-once" and count == 1):
            # the whole length announced, a third of it sent, then the connection closed
            data = (Path(self.directory) / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 3])
            self.wfile.flush()
            self.connection.shutdown(2)
            self.close_connection = True
            return
        super().do_GET()


@contextlib.contextmanager
def http_server(folder: Path, faults: dict[str, str] | None = None):
    """`http://127.0.0.1:<port>` serving `folder`; `faults` maps a file's path to `404`, `drop` (every
    time) or `drop-once`. Yields (base URL, the handler's count of requests per path)."""
    handler = type("Handler", (_Handler,), {"faults": dict(faults or {}), "served": {}})

    def make(*args, **kwargs):
        return handler(*args, directory=str(folder), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.served
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def s3_server(bucket: str = "literate"):
    """moto's S3-protocol server on localhost with one empty bucket; the environment points the AWS
    libraries at it while it runs. Yields the environment to give child processes."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "literate-test",
        "AWS_SECRET_ACCESS_KEY": "literate-test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket=bucket)
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def upload(folder: Path, url: str) -> None:
    """Copy every file under `folder` to the S3 prefix `url` (s3://bucket/prefix)."""
    from data_pipeline.storage import filesystem

    fs, prefix = filesystem(url)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{prefix}/{path.relative_to(folder).as_posix()}", path.read_bytes())
