"""The evaluation subcommands: `vtok eval` (and `vtok eval scan`), `vtok eval-scan`, `vtok probe`
(registered like those of jobs/commands.py, which imports this module)."""

from __future__ import annotations

import argparse

from jobs.commands import overrides_argument
from jobs.registry import Command, register


def eval_arguments(p: argparse.ArgumentParser) -> None:
    overrides_argument(p, "eval")
    p.add_argument("--config", help="YAML config file (default: the shipped eval.yaml)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_eval(args: argparse.Namespace) -> int:
    from jobs.eval import load_eval_config, run_eval_job

    if args.overrides[:1] == ["scan"]:  # `vtok eval scan ...` is the eval-scan job
        args.overrides = args.overrides[1:]
        return cmd_eval_scan(args)
    cfg = load_eval_config(args.overrides, args.config)
    result = run_eval_job(cfg, progress=not args.no_progress)
    print(f"checkpoint         {result['checkpoint']} ({result['seconds']:.1f} s)")
    for metric, per_category in result["accuracy"].items():
        print(f"{metric:<18} " + ", ".join(f"{c} {v[0]:.2f}" for c, v in per_category.items()))
    for row in result["vbench"]:
        print(f"vbench             {row['metric']} {row['value']:.4f}")
    if result["compare"]:
        print(f"compare            {result['compare']['checkpoint']}: understanding " + ", ".join(
            f"{c} {v[0]:.2f}" for c, v in result["compare"]["accuracy"].items())
              + (" (its results of the same clips)" if result["compare"]["reused"] else ""))
    for suite, uri in result["results"].items():
        print(f"results {suite:<10} {uri}")
    print(f"report             {result['report']} (summary: vtok report {result['run']})")
    return 0


def cmd_eval_scan(args: argparse.Namespace) -> int:
    from jobs.eval_scan import load_scan_config, run_scan_job

    cfg = load_scan_config(args.overrides, args.config)
    summary = run_scan_job(cfg, progress=not args.no_progress)
    print("\n".join(summary.totals()))
    return 0


def _load_eval_scan(overrides: list[str], config_file: str | None) -> object:
    from jobs.eval_scan import load_scan_config

    return load_scan_config(overrides, config_file)


def _eval_scan_schema() -> type:
    from jobs.eval_scan import ScanJobConfig

    return ScanJobConfig


def _load_eval(overrides: list[str], config_file: str | None) -> object:
    from jobs.eval import load_eval_config

    return load_eval_config(overrides, config_file)


def _eval_schema() -> type:
    from jobs.eval import EvalJobConfig

    return EvalJobConfig


def probe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="config overrides as key=value: data=URI (required), "
                   "modes=[vtok,frames_budget,all_frames,key_only], attributes=[color,motion], output=DIR, ...")


def cmd_probe(args: argparse.Namespace) -> int:
    from jobs.probe import load_probe_config, run_probe_job
    from vtok.eval.probe import FIRST_LOOK

    cfg = load_probe_config(args.overrides)
    result = run_probe_job(cfg)
    print(f"probe              {cfg.data}: {result['clips']} clips, {result['seconds']:.1f} s; {FIRST_LOOK}")
    print(result["table"])
    for name, uri in result["results"].items():
        print(f"results {name:<10} {uri}")
    return 0


def _load_probe(overrides: list[str], config_file: str | None) -> object:
    from jobs.probe import load_probe_config

    return load_probe_config(overrides, config_file)


def _probe_schema() -> type:
    from jobs.probe import ProbeJobConfig

    return ProbeJobConfig


register(Command("eval", "evaluate an MLLM checkpoint on held-out clips: vtok eval checkpoint=RUN data=URI "
                 "[suites=[tv_align,vbench] decoder=RUN compare=RUN]; every unevaluated checkpoint of a run: "
                 "vtok eval scan run=RUN data=URI ...", eval_arguments, cmd_eval,
                 load_config=_load_eval, config_schema=_eval_schema()))
register(Command("eval-scan", "evaluate every complete checkpoint of a run that has no results, once (what `vtok eval "
                 "scan` runs; schedule it, or submit it with vtok submit): vtok eval-scan run=RUN data=URI "
                 "[suites=[tv_align] max_checkpoints=N max_attempts=N lease_seconds=S]", eval_arguments,
                 cmd_eval_scan, load_config=_load_eval_scan, config_schema=_eval_scan_schema(),
                 hidden_keys=frozenset({"checkpoint"})))
register(Command("probe", "small classifiers per attribute on a token dataset, the cheap first look before an MLLM: "
                 "vtok probe data=URI [modes=[...] attributes=[...] output=DIR]", probe_arguments, cmd_probe,
                 load_config=_load_probe, config_schema=_probe_schema()))
