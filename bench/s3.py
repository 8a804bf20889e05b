"""Tokenize the same corpus from local files and from S3 (moto's server on loopback), side by side.

    .venv/bin/python -m bench.s3 [--quick] [--repeats N]

The S3 run reads the mp4s and the manifest over the S3 protocol and writes the shards, commits,
manifest and report back over it; the local run does the same on disk. Both share one local Ray
(started once, not timed), the tiny default encoder and the same config. The ratio shows what the
object-store round trips cost on top of decode + encode; a real bucket adds network latency that
loopback does not have.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from bench.common import interleaved, log, machine_info, median, parser, summary, table, write_results


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=64)
    args = p.parse_args()
    videos = 16 if args.quick else args.videos
    repeats = args.repeats or (1 if args.quick else 3)

    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=endpoint, RAY_AUTH_MODE="disabled")
    import logging

    import boto3
    import fsspec
    import ray
    from moto.server import ThreadedMotoServer

    from pipelines.tokenize.pipeline import TokenizeConfig, run_tokenize
    from pipelines.tokenize.sink import SinkConfig
    from vtok.shapes import write_corpus

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    work = Path(tempfile.mkdtemp(prefix="vtok-bench-s3-"))
    try:
        corpus = work / "corpus"
        write_corpus(str(corpus), videos, seed=0)
        boto3.client("s3").create_bucket(Bucket="bench-raw")
        fsspec.filesystem("s3").put(str(corpus) + "/", "bench-raw/corpus/", recursive=True)
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="vtok-ray-", dir="/tmp"),
                 log_to_driver=False)
        counter = {"n": 0}

        def run(input_uri: str, output_root: str) -> float:
            counter["n"] += 1
            out = f"{output_root}/run{counter['n']}"
            summary_ = run_tokenize(
                TokenizeConfig(input=input_uri, output=out, sink=SinkConfig(rows_per_shard=32)), progress=False
            )
            assert summary_.clips_out == videos
            return summary_.videos_per_s

        times = interleaved(
            {
                "local": lambda: run(str(corpus / "manifest.jsonl"), str(work / "tokens")),
                "s3": lambda: run("s3://bench-raw/corpus/manifest.jsonl", "s3://bench-raw/tokens"),
            },
            repeats,
        )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    rates = {name: videos / median(t) for name, t in times.items()}
    rows = [[name, videos, median(t), rates[name], rates[name] / rates["local"]] for name, t in times.items()]
    print(table(["run", "videos", "median s", "videos/s", "x local"], rows))
    write_results("s3", {
        "machine": machine_info(),
        "videos": videos,
        "repeats": repeats,
        "seconds": {name: summary(t) for name, t in times.items()},
        "videos_per_s": rates,
        "s3_over_local": rates["s3"] / rates["local"],
    }, args.out)
    log("done")


if __name__ == "__main__":
    main()
