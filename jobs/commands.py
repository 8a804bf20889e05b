"""Every `vtok` subcommand, registered once: what it takes and what it runs (heavy imports inside each run)."""

from __future__ import annotations

import argparse
import time

from jobs.registry import Command, register
from vtok.errors import EXIT_DATA

DEMO_DEFAULT_OUT = "demo_out"


def cmd_tokenize(args: argparse.Namespace) -> int:
    from jobs.tokenize import load_tokenize_config, run
    from pipelines.tokenize.pipeline import check_quarantine

    cfg = load_tokenize_config(args.overrides, args.config)
    summary = run(cfg, progress=not args.no_progress)
    print("\n".join(summary.lines()))
    check_quarantine(summary, args.max_quarantined_fraction)
    return 0


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def cmd_synth(args: argparse.Namespace) -> int:
    from vtok.shapes import ShapesConfig, write_corpus

    cfg = ShapesConfig(width=args.width, height=args.height, num_frames=args.num_frames, fps=args.fps)
    t0 = time.perf_counter()
    manifest = write_corpus(args.out, args.num_videos, seed=args.seed, cfg=cfg, static_every=args.static_every)
    print(f"wrote {args.num_videos} videos and {manifest} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from schemas.tokens import mean_counts, residual_grid_of
    from vtok.dataset import describe

    d = describe(args.uri)
    grid, stride = d["tokenizer"].get("grid", 0), d["tokenizer"].get("residual_stride", 1)
    cells = residual_grid_of(d["tokenizer"]) ** 2
    counts = {int(t): n for t, n in d["frame_counts"].items()} or {0: 0}
    r_mean, t_mean = mean_counts(counts, stride)
    vtok = (f"S+R = {grid * grid + r_mean:.1f}" if cells == 1 else
            f"S+r*r*R = {grid * grid} + {cells}*{r_mean:.1f} = {grid * grid + cells * r_mean:.1f}")
    print(f"dataset          {args.uri}")
    print(f"format           {d['format']}")
    print(f"schema version   {d['schema_version']}")
    print(f"fingerprint      {d['fingerprint']}")
    print(f"shards           {d['shards']}")
    print(f"rows             {d['rows']}")
    print(f"key tokens S     {grid * grid} (grid {grid}x{grid}, D={d['tokenizer'].get('hidden_size')})")
    grid_text = "" if cells == 1 else f", r*r={cells} tokens each (tokenizer.residual_grid={int(cells ** 0.5)})"
    print(f"residual R       mean {r_mean:.1f} (T from {min(counts)} to {max(counts)} frames, stride {stride}{grid_text})")
    print(f"tokens per clip  VTok {vtok}; frame sampling T*S = {grid * grid * t_mean:.1f}")
    for line in _target_lines(d.get("targets", {}), d.get("identity", {})):
        print(line)
    if "quarantined" in d:
        print(f"quarantined      {d['quarantined']} {d['errors'] or ''}".rstrip())
        print(f"complete         {d['complete']}")
    return 0


def _target_lines(targets: dict[str, list[int]], identity: dict[str, object]) -> list[str]:
    """`vtok inspect`'s lines for the decoder targets: shape and dtype per clip, and the settings behind them."""
    if not targets:
        return ["targets          none (targets.lowres_side, targets.vae: off)"]
    lines = []
    if "frames_lowres" in targets:
        side = identity.get("targets.lowres_side")
        setting = f" (targets.lowres_side={side})" if side is not None else ""
        lines.append(f"frames_lowres    [T, {', '.join(map(str, targets['frames_lowres']))}] uint8{setting}")
    if "latents" in targets:
        setting = ""
        if "targets.vae" in identity:
            setting = (f" (targets.vae={identity['targets.vae']}, {identity.get('targets.vae_frames')} frames "
                       f"at {identity.get('targets.vae_size')} px)")
        lines.append(f"latents          {targets['latents']} float32{setting}")
    return lines


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
    from jobs.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=args.out, quick=args.quick, seed=args.seed, train_videos=args.num_videos,
                        tokenize_overrides=list(args.overrides), progress=not args.no_progress))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipelines.evaluate.report import format_eval_results
    from pipelines.tokenize.report import format_report, read_report
    from pipelines.train.report import TRAIN_REPORT_KIND, format_train_report

    # A run's latest evaluation (RUN/eval/results), after its training report, or alone when it has none.
    evaluated = [] if args.uri.endswith((".json", ".parquet", ".tar")) else format_eval_results(args.uri)
    try:
        report = read_report(args.uri)
    except FileNotFoundError:
        if not evaluated:
            raise
        report = None
    if report is not None:
        print("\n".join(format_train_report(report) if report.get("kind") == TRAIN_REPORT_KIND
                        else format_report(report)))
    if evaluated:
        print("\n".join(evaluated))
    return 0


def train_arguments(p: argparse.ArgumentParser, what: str = "train_mllm") -> None:
    overrides_argument(p, what)
    p.add_argument("--config", help=f"YAML config file (default: the shipped {what}.yaml)")
    p.add_argument("--no-progress", action="store_true", help="no progress line")


def train_decoder_arguments(p: argparse.ArgumentParser) -> None:
    train_arguments(p, "train_decoder")


def cmd_train(args: argparse.Namespace) -> int:
    """`vtok train KIND ...`: the job of that kind."""
    return cmd_train_decoder(args) if args.kind == "decoder" else cmd_train_mllm(args)


def cmd_train_decoder(args: argparse.Namespace) -> int:
    from jobs.train import load_train_decoder_config, run_decoder

    cfg = load_train_decoder_config(args.overrides, args.config)
    result = run_decoder(cfg, progress=not args.no_progress)
    model, held = result["model"], result["heldout_reconstruction"]
    print(f"run                {cfg.output} ({'resumed' if result['resumed'] else 'new'}; {model.tokens} tokens -> "
          f"{model.space}, transformer {model.transformer_mode})")
    if held:
        print(f"held-out colour    {held['color']:.2f} of {int(held['clips'])} reconstructions (chance "
              f"{held['chance']:.2f})")
    print(f"report             {result['report']} (summary: vtok report {cfg.output})")
    return 0


def decode_arguments(p: argparse.ArgumentParser) -> None:
    overrides_argument(p, "decode")
    p.add_argument("--config", help="YAML config file (default: the shipped decode.yaml)")


def cmd_decode(args: argparse.Namespace) -> int:
    from jobs.decode import load_decode_config, run_decode_job

    cfg = load_decode_config(args.overrides, args.config)
    result = run_decode_job(cfg)
    print(f"wrote {result['videos']} videos to {cfg.out} in {result['seconds']:.1f} s "
          f"({result['videos_per_s']:.2f} videos/s), skipped {result['skipped']} already there; "
          f"index {result['index']}")
    return 0


def generate_arguments(p: argparse.ArgumentParser) -> None:
    overrides_argument(p, "generate")
    p.add_argument("--config", help="YAML config file (default: the shipped generate.yaml)")
    p.add_argument("--tokens-out", metavar="PATH", help="also write the generated tokens (token shard format, Parquet)")


def cmd_generate(args: argparse.Namespace) -> int:
    from jobs.decode import load_generate_config, run_generate_job

    extra = [f"tokens_out={args.tokens_out}"] if args.tokens_out else []
    cfg = load_generate_config([*args.overrides, *extra], args.config)
    result = run_generate_job(cfg)
    for row in result["rows"]:
        print(f"{row['path']}  {row['frames']} frames {row['width']}x{row['height']}  {row['caption'][:60]}")
    if result["tokens_out"]:
        print(f"tokens             {result['tokens_out']}")
    if result["index"]:
        print(f"index              {result['index']}")
    return 0


def cmd_train_mllm(args: argparse.Namespace) -> int:
    from jobs.train import load_train_mllm_config, run_mllm

    cfg = load_train_mllm_config(args.overrides, args.config)
    result = run_mllm(cfg, progress=not args.no_progress)
    accuracy = result["heldout_accuracy"]
    print(f"run                {cfg.output} ({'resumed' if result['resumed'] else 'new'}; {cfg.model.tokens} tokens)")
    print("held-out accuracy  " + ", ".join(f"{k} {v:.2f}" for k, v in accuracy.items() if k != "clips")
          + f" ({int(accuracy['clips'])} clips)")
    print(f"report             {result['report']} (summary: vtok report {cfg.output})")
    return 0


def _train_kind_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["mllm", "decoder"], help="what to train: the MLLM, or the token -> video decoder")
    train_arguments(p)


def _load_train_mllm(overrides: list[str], config_file: str | None) -> object:
    from jobs.train import load_train_mllm_config

    return load_train_mllm_config(overrides, config_file)


def _train_mllm_schema() -> type:
    from jobs.train import TrainMLLMJobConfig

    return TrainMLLMJobConfig


def _load_train_decoder(overrides: list[str], config_file: str | None) -> object:
    from jobs.train import load_train_decoder_config

    return load_train_decoder_config(overrides, config_file)


def _train_decoder_schema() -> type:
    from jobs.train import TrainDecoderJobConfig

    return TrainDecoderJobConfig


def _load_decode(overrides: list[str], config_file: str | None) -> object:
    from jobs.decode import load_decode_config

    return load_decode_config(overrides, config_file)


def _decode_schema() -> type:
    from jobs.decode import DecodeJobConfig

    return DecodeJobConfig


def _generate_schema() -> type:
    from jobs.decode import GenerateConfig

    return GenerateConfig


def overrides_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("overrides", nargs="*", help=f"config overrides as key=value (see jobs/configs/{what}.yaml)")


def tokenize_arguments(p: argparse.ArgumentParser) -> None:
    overrides_argument(p, "tokenize")
    p.add_argument("--config", help="YAML config file (default: the shipped tokenize.yaml)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--max-quarantined-fraction", type=_fraction, default=None, metavar="F",
                   help=f"exit {EXIT_DATA} if more than this fraction of the inputs is quarantined (a run whose "
                        f"every input is quarantined always exits {EXIT_DATA})")


def synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out")
    p.add_argument("--num-videos", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--num-frames", type=int, default=32)
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--static-every", type=int, default=0, help="make every k-th video fully static")


def uri_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("uri", help="dataset folder/URI (or one shard / report.json)")


def demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="tokenize config overrides as key=value, for both worlds")
    p.add_argument("--out", default=DEMO_DEFAULT_OUT, help="output folder; a rerun starts it over")
    p.add_argument("--quick", action="store_true",
                   help="smoke size: about 2 minutes instead of about 4 (idle 2-core machine)")
    p.add_argument("--num-videos", type=int, default=None, help="training clips (default 160; --quick: 32)")
    p.add_argument("--seed", type=int, default=0, help="training world's seed; the held-out world's is seed + 1000")
    p.add_argument("--no-progress", action="store_true", help="no progress bars and no job log lines")


def _load_tokenize(overrides: list[str], config_file: str | None) -> object:
    from jobs.tokenize import load_tokenize_config

    return load_tokenize_config(overrides, config_file)


def _submit_arguments(p: argparse.ArgumentParser) -> None:
    from jobs.submit import submit_arguments

    submit_arguments(p)


def _jobs_arguments(p: argparse.ArgumentParser) -> None:
    from jobs.submit import jobs_arguments

    jobs_arguments(p)


def _run_submit(args: argparse.Namespace) -> int:
    from jobs.submit import cmd_submit

    return cmd_submit(args)


def _run_jobs(args: argparse.Namespace) -> int:
    from jobs.submit import cmd_jobs

    return cmd_jobs(args)


def _reserved_tokenize_keys() -> dict[str, str]:
    from jobs.tokenize import RESERVED_KEYS

    return RESERVED_KEYS


def _tokenize_schema() -> type:
    from jobs.tokenize import TokenizeJobConfig

    return TokenizeJobConfig


def config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="a config-driven job, e.g. tokenize")


def cmd_config(args: argparse.Namespace) -> int:
    """Every key of a job's config with its default and docstring."""
    from jobs.config import ConfigError, config_keys, format_keys
    from jobs.registry import commands

    configurable = {n: c for n, c in commands().items() if c.config_schema is not None}
    if args.job not in configurable:
        raise ConfigError(f"no config for {args.job!r}; config-driven jobs: {', '.join(sorted(configurable))}")
    command = configurable[args.job]
    print(format_keys(config_keys(command.config_schema, hidden=command.hidden_keys)))
    return 0


register(Command("tokenize", "tokenize videos into token shards: vtok tokenize input=URI output=URI ...",
                 tokenize_arguments, cmd_tokenize, load_config=_load_tokenize, config_schema=_tokenize_schema(),
                 hidden_keys=frozenset(_reserved_tokenize_keys())))
register(Command("config", "every key of a job's config, with its default and what it does: vtok config tokenize",
                 config_arguments, cmd_config, submittable=False))
register(Command("synth", "write a shapes-world corpus: vtok synth OUT --num-videos N --seed S",
                 synth_arguments, cmd_synth))
register(Command("inspect", "schema version, fingerprint, rows and tokens per clip of a dataset or shard",
                 uri_argument, cmd_inspect))
register(Command("validate", "check every shard against the schema and the manifest", uri_argument, cmd_validate))
register(Command("demo", "the whole loop: synth -> tokenize -> train MLLM (VTok, baseline) -> train decoder -> eval "
                 "-> demo_out/index.html (--quick: smoke size)", demo_arguments, cmd_demo,
                 submittable=False))
register(Command("report", "summary of a dataset's run report (report.json; report.html has charts)",
                 uri_argument, cmd_report))
register(Command("submit", "run a vtok job on a Ray cluster: vtok submit [--follow] JOB key=value ...",
                 _submit_arguments, _run_submit, submittable=False))
register(Command("jobs", "status, logs, stop and list of submitted jobs", _jobs_arguments, _run_jobs,
                 submittable=False))
register(Command("train", "train a model on token shards: vtok train mllm|decoder data=URI output=RUN ... (every "
                 "key: vtok config train-mllm, vtok config train-decoder)", _train_kind_arguments, cmd_train,
                 submittable=False))
register(Command("train-mllm", "the MLLM training job (what vtok train mllm runs; submit it with vtok submit)",
                 train_arguments, cmd_train_mllm, load_config=_load_train_mllm, config_schema=_train_mllm_schema()))
register(Command("train-decoder", "the decoder training job (what vtok train decoder runs; submit it with vtok submit)",
                 train_decoder_arguments, cmd_train_decoder, load_config=_load_train_decoder,
                 config_schema=_train_decoder_schema()))
register(Command("decode", "stored tokens -> one mp4 per clip through a trained decoder: vtok decode data=URI "
                 "decoder=CKPT out=DIR [limit=N]", decode_arguments, cmd_decode, load_config=_load_decode,
                 config_schema=_decode_schema()))
register(Command("generate", "text -> MLLM visual tokens -> decoder -> mp4: vtok generate mllm=CKPT decoder=CKPT "
                 "prompt=\"...\" out=FILE.mp4 [--tokens-out PATH]", generate_arguments, cmd_generate,
                 submittable=False, config_schema=_generate_schema()))


# Registers eval, eval-scan and probe (their own module; it needs overrides_argument above).
import jobs.eval_commands  # noqa: E402, F401
