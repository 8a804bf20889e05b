"""Decoding in a child process: a decoder that segfaults or hangs costs one clip, not the run.

FFmpeg and decord are C code fed untrusted bytes. `IsolatedDecoder` keeps one long-lived child
process that decodes clip after clip; if it dies the clip is `decoder_crash`, if it overruns the
time limit it is killed and the clip is `timeout`, and a fresh child serves the next clip.
Requests and replies cross the pipe as JSON and .npy bytes (never pickles).

`VTOK_DECODE_FAULTS` (tests and chaos drills only) makes the child crash or hang on purpose for
URIs containing a marker: "crash=MARKER,hang=MARKER".
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import time
from typing import Any

import numpy as np

from schemas.npy import from_npy, to_npy
from vtok.video import DecodeConfig, DecodedClip, DecodeError, VideoInfo, decode_clip

FAULTS_ENV = "VTOK_DECODE_FAULTS"


def _injected_fault(uri: str) -> None:
    for rule in filter(None, os.environ.get(FAULTS_ENV, "").split(",")):
        kind, _, marker = rule.partition("=")
        if marker and marker in uri:
            if kind == "crash":
                os.kill(os.getpid(), signal.SIGSEGV)
            if kind == "hang":
                time.sleep(3600)


def _serve(conn: Any) -> None:
    """Child loop: one JSON request in, one reply out, until the parent closes the pipe."""
    while True:
        try:
            request = json.loads(conn.recv_bytes())
        except EOFError:
            return
        uri = request["uri"]
        try:
            _injected_fault(uri)
            clip = decode_clip(
                uri,
                DecodeConfig(**request["cfg"]),
                request["clip_start_s"],
                request["clip_end_s"],
                storage_options=request["storage_options"],
                byte_range=tuple(request["byte_range"]) if request["byte_range"] else None,
            )
        except DecodeError as err:
            conn.send_bytes(json.dumps({"error": [err.uri, err.reason, err.message]}).encode())
            continue
        except Exception as err:  # noqa: BLE001 - reported to the parent as a crash of this clip
            conn.send_bytes(json.dumps({"error": [uri, "decoder_crash", f"{type(err).__name__}: {err}"]}).encode())
            continue
        header = {
            "info": dataclasses.asdict(clip.info),
            "clip_start_s": clip.clip_start_s,
            "clip_end_s": clip.clip_end_s,
        }
        conn.send_bytes(json.dumps(header).encode())
        conn.send_bytes(to_npy(clip.frames))
        conn.send_bytes(to_npy(clip.frame_indices))


class IsolatedDecoder:
    """`decode_clip` in a supervised child process, with a per-clip time limit."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._process: Any = None
        self._conn: Any = None

    def _start(self) -> None:
        # spawn, not fork: the parent (a Ray worker) runs threads, and a forked copy of them can deadlock.
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child,), daemon=True)
        self._process.start()
        child.close()
        self._conn = parent

    def _kill(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
        if self._process is not None:
            self._process.join(timeout=5)
        self._process = self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._kill()

    def decode(
        self,
        uri: str,
        cfg: DecodeConfig,
        clip_start_s: float | None = None,
        clip_end_s: float | None = None,
        storage_options: dict[str, Any] | None = None,
        byte_range: tuple[int, int] | None = None,
    ) -> DecodedClip:
        if self._process is None or not self._process.is_alive():
            self._start()
        request = {
            "uri": uri,
            "cfg": dataclasses.asdict(cfg),
            "clip_start_s": clip_start_s,
            "clip_end_s": clip_end_s,
            "storage_options": storage_options,
            "byte_range": list(byte_range) if byte_range else None,
        }
        self._conn.send_bytes(json.dumps(request).encode())
        try:
            if not self._conn.poll(self.timeout_s):
                self._kill()
                raise DecodeError(uri, "timeout", f"decoding took longer than {self.timeout_s:g} s; killed")
            header = json.loads(self._conn.recv_bytes())
            if "error" in header:
                raise DecodeError(*header["error"])
            frames = from_npy(self._conn.recv_bytes())
            indices = from_npy(self._conn.recv_bytes())
        except (EOFError, ConnectionResetError, BrokenPipeError) as err:
            code = None
            if self._process is not None:
                # The pipe breaks a moment before the dying child is reaped: exitcode would still be None.
                self._process.join(timeout=5)
                code = self._process.exitcode
            self._kill()
            raise DecodeError(uri, "decoder_crash", f"the decoder process died (exit code {code})") from err
        info = VideoInfo(**header["info"])
        return DecodedClip(
            frames=frames,
            frame_indices=indices,
            timestamps_s=indices.astype(np.float64) / info.source_fps,
            info=info,
            clip_start_s=header["clip_start_s"],
            clip_end_s=header["clip_end_s"],
        )
