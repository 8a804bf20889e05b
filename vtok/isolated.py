"""Decoding in a child process: a decoder that segfaults or hangs costs one clip, not the run.

FFmpeg and decord are C code fed untrusted bytes. `IsolatedDecoder` keeps one long-lived child
process that decodes clip after clip; if it dies the clip is `decoder_crash`, if it overruns the
time limit it is killed and the clip is `timeout`, and a fresh child serves the next clip.

The child is a fresh `python` running this module (`child_command`), started with subprocess: it
imports numpy and vtok.video and nothing else. (A multiprocessing "spawn" child re-imports the
parent's main module, which in a Ray worker is Ray's worker: over a run of the demo a child used 0.72
CPU-s, its start-up and its share of the decoding, against 0.40 now; BENCHMARKS.md "First clip".)
Requests go to its stdin and replies come from its stdout as frames (an 8-byte little-endian length,
then the bytes):

- request: one frame of JSON (the uri, the DecodeConfig as a dict, the clip range, storage options
  and byte range);
- reply: one frame of JSON, `{"error": [uri, reason, message]}` or `{"info": ..., "clip_start_s": ...,
  "clip_end_s": ..., "blobs": 2}` followed by the frames and the frame indices as two frames of .npy
  bytes (`allow_pickle=False` on both sides: never pickles).

The child moves its stdout to another descriptor and points descriptor 1 at stderr, so nothing a
library prints can corrupt the replies. A reply cut short (the child died mid-message), a malformed
one or a broken pipe all mean `decoder_crash`; the time limit covers the whole reply.

`VTOK_DECODE_FAULTS` (tests and chaos drills only) makes the child misbehave on purpose for URIs
containing a marker: "crash=MARKER" (SIGSEGV), "hang=MARKER" (sleeps for an hour), "truncate=MARKER"
(sends half a reply, then exits).
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from schemas.npy import from_npy, to_npy
from vtok.video import DecodeConfig, DecodedClip, DecodeError, VideoInfo, decode_clip

FAULTS_ENV = "VTOK_DECODE_FAULTS"
_LENGTH = struct.Struct("<Q")
MAX_FRAME_BYTES = 1 << 40
"""A length prefix above this is not a reply but garbage (no clip comes near a TiB)."""
PIPE_BYTES = 1 << 20

# The folder that holds the vtok and schemas packages, put first on the child's path so that it imports the
# same code as its parent (a git worktree, an editable install or a Ray job's working dir alike). The child
# inherits the parent's environment, VTOK_DECODE_FAULTS and PYTHONPATH included.
_CODE_ROOT = str(Path(__file__).resolve().parents[1])


class _ChildDied(Exception):
    """The child's stdout reached end-of-file: it exited or was killed."""


# --------------------------------------------------------------------------------------------------
# The child (`child_command`; `python -m vtok.isolated` runs the same loop by hand).


def _injected_fault(uri: str, out_fd: int) -> None:
    for rule in filter(None, os.environ.get(FAULTS_ENV, "").split(",")):
        kind, _, marker = rule.partition("=")
        if marker and marker in uri:
            if kind == "crash":
                os.kill(os.getpid(), signal.SIGSEGV)
            if kind == "hang":
                time.sleep(3600)
            if kind == "truncate":
                header = json.dumps({"info": {}, "blobs": 2}).encode()
                os.write(out_fd, _LENGTH.pack(len(header)) + header[: len(header) // 2])
                os._exit(3)


def _write_frames(fd: int, *payloads: bytes) -> None:
    for payload in payloads:
        for chunk in (_LENGTH.pack(len(payload)), payload):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]


def _read_exact_blocking(fd: int, n: int) -> bytes | None:
    """n bytes from fd, or None at end-of-file before the first byte (the parent closed the pipe)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            if got == 0:
                return None
            raise EOFError("request cut short")
        got += k
    return bytes(buf)


def _decode_request(request: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
    uri = request["uri"]
    try:
        clip = decode_clip(
            uri,
            DecodeConfig(**request["cfg"]),
            request["clip_start_s"],
            request["clip_end_s"],
            storage_options=request["storage_options"],
            byte_range=tuple(request["byte_range"]) if request["byte_range"] else None,
        )
    except DecodeError as err:
        return {"error": [err.uri, err.reason, err.message]}, []
    except Exception as err:  # noqa: BLE001 - reported to the parent as a crash of this clip
        return {"error": [uri, "decoder_crash", f"{type(err).__name__}: {err}"]}, []
    header = {
        "info": dataclasses.asdict(clip.info),
        "clip_start_s": clip.clip_start_s,
        "clip_end_s": clip.clip_end_s,
        "blobs": 2,
    }
    return header, [to_npy(clip.frames), to_npy(clip.frame_indices)]


def serve(in_fd: int, out_fd: int) -> None:
    """Child loop: one JSON request in, one reply out, until the parent closes the pipe."""
    while True:
        prefix = _read_exact_blocking(in_fd, _LENGTH.size)
        if prefix is None:
            return
        body = _read_exact_blocking(in_fd, _LENGTH.unpack(prefix)[0])
        if body is None:
            return
        request = json.loads(body)
        _injected_fault(request["uri"], out_fd)
        header, blobs = _decode_request(request)
        _write_frames(out_fd, json.dumps(header).encode(), *blobs)


def _child_main() -> None:
    # Replies go to the original stdout only; anything else that writes to descriptor 1 (a print, a C
    # library) lands on stderr instead of inside a reply.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(0, out_fd)


# --------------------------------------------------------------------------------------------------
# The parent.

_live: weakref.WeakSet[IsolatedDecoder] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for decoder in list(_live):
        decoder.close()


def child_command() -> list[str]:
    """The command line of a decoder child: `python -m vtok.isolated`, with this vtok's folder first on its path
    (not the working directory's, which `-m` would put first), so the child runs the parent's code."""
    boot = "import sys; sys.path.insert(0, sys.argv[1]); from vtok.isolated import _child_main; _child_main()"
    return [sys.executable, "-c", boot, _CODE_ROOT]


def _widen_pipe(fd: int) -> None:
    """A 1 MiB pipe buffer where Linux allows it (64 KiB by default): a clip's frames (2.4 MB for 16 frames at
    224x224) then cross in a few dozen fewer reads, writes and wake-ups."""
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass


class IsolatedDecoder:
    """`decode_clip` in a supervised child process, with a per-clip time limit."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        _live.add(self)

    @property
    def pid(self) -> int | None:
        """The current child's pid (None before the first clip and after a crash)."""
        return self._process.pid if self._process is not None else None

    def _start(self) -> subprocess.Popen[bytes]:
        self._process = subprocess.Popen(
            child_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
        assert self._process.stdout is not None
        _widen_pipe(self._process.stdout.fileno())
        return self._process

    def _kill(self) -> int | None:
        """Kill and reap the child; its exit code (negative: the signal that ended it)."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        try:
            code = process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()
        return code

    def _died(self) -> int | None:
        """The child broke the pipe: wait for it to be reaped (the pipe breaks a moment before) and kill it."""
        process = self._process
        if process is not None:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        return self._kill()

    def close(self) -> None:
        process = self._process
        if process is None:
            return
        if process.stdin is not None:
            try:
                process.stdin.close()  # the child reads end-of-file and exits
            except OSError:
                pass
        try:
            process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        self._kill()

    def _read_exact(self, fd: int, n: int, deadline: float) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
            k = os.readv(fd, [view[got:]])
            if k == 0:
                raise _ChildDied
            got += k
        return buf

    def _read_frame(self, fd: int, deadline: float) -> bytearray:
        (length,) = _LENGTH.unpack(self._read_exact(fd, _LENGTH.size, deadline))
        if length > MAX_FRAME_BYTES:
            raise ValueError(f"a frame of {length} bytes")
        return self._read_exact(fd, length, deadline)

    def _send(self, message: bytes) -> int:
        """Send a request, to a fresh child if there is none or it has died; the fd to read the reply from.

        A child found dead while the request is written died before it saw this clip: one fresh child
        gets the request instead.
        """
        for attempt in (1, 2):
            process = self._process
            if process is None or process.poll() is not None:
                self._kill()
                process = self._start()
            assert process.stdin is not None and process.stdout is not None
            try:
                _write_frames(process.stdin.fileno(), message)
                return process.stdout.fileno()
            except BrokenPipeError:
                if attempt == 2:
                    raise
                self._died()
        raise AssertionError("unreachable")

    def decode(
        self,
        uri: str,
        cfg: DecodeConfig,
        clip_start_s: float | None = None,
        clip_end_s: float | None = None,
        storage_options: dict[str, Any] | None = None,
        byte_range: tuple[int, int] | None = None,
    ) -> DecodedClip:
        request = {
            "uri": uri,
            "cfg": dataclasses.asdict(cfg),
            "clip_start_s": clip_start_s,
            "clip_end_s": clip_end_s,
            "storage_options": storage_options,
            "byte_range": list(byte_range) if byte_range else None,
        }
        message = json.dumps(request).encode()
        deadline = time.monotonic() + self.timeout_s
        try:
            out = self._send(message)
            header = json.loads(self._read_frame(out, deadline))
            if "error" in header:
                raise DecodeError(*header["error"])
            blobs = [self._read_frame(out, deadline) for _ in range(int(header["blobs"]))]
            frames, indices = (from_npy(b) for b in blobs)
            info = VideoInfo(**header["info"])
        except TimeoutError:
            self._kill()
            raise DecodeError(uri, "timeout", f"decoding took longer than {self.timeout_s:g} s; killed") from None
        except (_ChildDied, BrokenPipeError, ConnectionResetError) as err:
            code = self._died()
            raise DecodeError(uri, "decoder_crash", f"the decoder process died (exit code {code})") from err
        except DecodeError:
            raise
        except Exception as err:  # noqa: BLE001 - a reply that does not parse: the child is not trusted again
            self._kill()
            raise DecodeError(uri, "decoder_crash", f"the decoder process sent a malformed reply ({err})") from err
        return DecodedClip(
            frames=frames,
            frame_indices=indices,
            timestamps_s=indices.astype(np.float64) / info.source_fps,
            info=info,
            clip_start_s=header["clip_start_s"],
            clip_end_s=header["clip_end_s"],
        )


if __name__ == "__main__":
    _child_main()
