"""The `vtok` command: tokenize, synth, inspect, demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from jobs.config import ConfigError

DEMO_DEFAULT_OUT = "demo_out"


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.getLogger("ray").setLevel(logging.WARNING)


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers (--log-json)."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        entry = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
                 "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(json_format: bool = False) -> None:
    """One format for every vtok log line (stderr); libraries stay at WARNING, vtok's own at INFO."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if json_format else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    # Replace, not add: main() may run more than once in a process (tests, notebooks).
    root.handlers = [h for h in root.handlers if not getattr(h, "_vtok", False)]
    handler._vtok = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("jobs", "pipelines", "vtok", "schemas"):
        logging.getLogger(name).setLevel(logging.INFO)


def cmd_tokenize(args: argparse.Namespace) -> int:
    from jobs.tokenize import load_tokenize_config, run

    cfg = load_tokenize_config(args.overrides, args.config)
    summary = run(cfg, progress=not args.no_progress)
    print("\n".join(summary.lines()))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from vtok.shapes import ShapesConfig, write_corpus

    cfg = ShapesConfig(width=args.width, height=args.height, num_frames=args.num_frames, fps=args.fps)
    t0 = time.perf_counter()
    manifest = write_corpus(args.out, args.num_videos, seed=args.seed, cfg=cfg, static_every=args.static_every)
    print(f"wrote {args.num_videos} videos and {manifest} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from vtok.dataset import describe

    d = describe(args.uri)
    grid, stride = d["tokenizer"].get("grid", 0), d["tokenizer"].get("residual_stride", 1)
    counts = {int(t): n for t, n in d["frame_counts"].items()} or {0: 0}
    clips = max(1, sum(counts.values()))
    r_mean = sum(len(range(stride, t, stride)) * n for t, n in counts.items()) / clips
    t_mean = sum(t * n for t, n in counts.items()) / clips
    print(f"dataset          {args.uri}")
    print(f"format           {d['format']}")
    print(f"schema version   {d['schema_version']}")
    print(f"fingerprint      {d['fingerprint']}")
    print(f"shards           {d['shards']}")
    print(f"rows             {d['rows']}")
    print(f"key tokens S     {grid * grid} (grid {grid}x{grid}, D={d['tokenizer'].get('hidden_size')})")
    print(f"residual R       mean {r_mean:.1f} (T from {min(counts)} to {max(counts)} frames, stride {stride})")
    print(f"tokens per clip  VTok S+R = {grid * grid + r_mean:.1f}; frame sampling T*S = {grid * grid * t_mean:.1f}")
    if "quarantined" in d:
        print(f"quarantined      {d['quarantined']} {d['errors'] or ''}".rstrip())
        print(f"complete         {d['complete']}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from vtok.dataset import validate_dataset

    problems, counts = validate_dataset(args.uri)
    if problems:
        print(f"{args.uri}: INVALID, {len(problems)} problem(s):")
        for p in problems:
            print(f"  - {p}")
        return 1
    print(f"{args.uri}: valid: {counts['shards']} shards, {counts['rows']} rows, {counts['quarantined']} quarantined, "
          f"fingerprint {counts['fingerprint'][:16]}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from jobs.tokenize import load_tokenize_config, run
    from vtok.shapes import write_corpus

    out = Path(args.out).resolve()
    corpus = out / "corpus"
    tokens = out / "tokens"
    t0 = time.perf_counter()
    manifest = write_corpus(str(corpus), args.num_videos, seed=args.seed, static_every=8)
    print(f"[demo] synthesised {args.num_videos} shapes-world videos into {corpus} ({time.perf_counter() - t0:.1f} s)")
    cfg = load_tokenize_config([f"input={manifest}", f"output={tokens}", "sink.mode=overwrite", *args.overrides])
    summary = run(cfg, progress=not args.no_progress)
    print("[demo] tokenize summary")
    print("\n".join("  " + line for line in summary.lines()))
    print(f"[demo] token shards are in {tokens}/shards; inspect them with: vtok inspect {tokens}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipelines.report import format_report, read_report

    print("\n".join(format_report(read_report(args.uri))))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from jobs.submit import add_subcommands

    parser = argparse.ArgumentParser(prog="vtok", description="VTok video tokens at cluster scale")
    parser.add_argument("--log-json", action="store_true", help="log lines as JSON objects")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tokenize", help="tokenize videos into token shards: vtok tokenize input=URI output=URI ...")
    p.add_argument("overrides", nargs="*", help="config overrides as key=value (see jobs/configs/tokenize.yaml)")
    p.add_argument("--config", help="YAML config file (default: the shipped tokenize.yaml)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("synth", help="write a shapes-world corpus: vtok synth OUT --num-videos N --seed S")
    p.add_argument("out")
    p.add_argument("--num-videos", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--num-frames", type=int, default=32)
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--static-every", type=int, default=0, help="make every k-th video fully static")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("inspect", help="schema version, fingerprint, rows and tokens per clip of a dataset or shard")
    p.add_argument("uri")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("validate", help="check every shard against the schema and the manifest")
    p.add_argument("uri")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("demo", help="synthesise a corpus and tokenize it with the local defaults")
    p.add_argument("overrides", nargs="*", help="tokenize config overrides as key=value")
    p.add_argument("--out", default=DEMO_DEFAULT_OUT)
    p.add_argument("--num-videos", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("report", help="summary of a dataset's run report (report.json; report.html has charts)")
    p.add_argument("uri", help="dataset folder/URI or its report.json")
    p.set_defaults(func=cmd_report)
    add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    setup_logging(args.log_json)
    try:
        return int(args.func(args))
    except ConfigError as err:
        print(f"vtok {args.command}: config error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, PermissionError) as err:
        print(f"vtok {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
