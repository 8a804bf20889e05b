"""`vtok judge FILE [FILE ...]`: the shapes-world judge's reading of videos, one JSON object per line.

Its own module (registered like those of jobs/commands.py), imported by jobs/cli.py.
"""

from __future__ import annotations

import argparse

# Imported first so that `vtok --help` keeps listing the original commands first.
import jobs.commands  # noqa: F401
from jobs.registry import Command, register


def judge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="shapes-world videos (local paths or fsspec URIs)")
    p.add_argument("--speed", type=float, default=None,
                   help="px per frame that objects move in a 128 px render (default: the generator's speed); "
                        "a net move under a quarter of that speed's travel (at most a tenth of the frame) "
                        "reads as static")


def cmd_judge(args: argparse.Namespace) -> int:
    """Print {"uri": FILE, ...the reading...} per readable file; exit 2 naming the unreadable ones."""
    import json

    from vtok.errors import InputError
    from vtok.eval.judge import read_attributes
    from vtok.media import read_frames
    from vtok.video import DecodeError

    unreadable: list[DecodeError] = []
    for uri in args.files:
        try:
            frames = read_frames(uri)
        except DecodeError as err:
            # The other files are still judged: one bad file in a batch should not hide the rest's readings.
            unreadable.append(err)
            continue
        print(json.dumps({"uri": uri, **read_attributes(frames, speed=args.speed)}), flush=True)
    if unreadable:
        others = [err.uri for err in unreadable[1:]]
        also = f"; also unreadable: {', '.join(others)}" if others else ""
        raise InputError(f"cannot read {unreadable[0]}{also}")
    return 0


register(Command("judge", "read count, colour, size, position and motion back from shapes-world videos "
                          "(one JSON object per file)", judge_arguments, cmd_judge, submittable=False))
