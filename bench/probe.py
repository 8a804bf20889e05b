"""The probe on one token dataset: held-out accuracy per attribute and mode, and how long it takes.

    python -m bench.probe                          # the study's corpus at S = 16, T = 16 (tokenized if missing)
    python -m bench.probe DATA --seeds 3           # any token dataset with shapes-world attributes
    python -m bench.probe DATA --modes vtok,frames_2,all_frames --attributes color,motion

The same probe as `vtok probe` (vtok.eval.probe): an MLP per (mode, attribute), trained on the clips outside
the sample-key split and scored on the rest, with 95% Wilson intervals and the majority-class chance. It is the
cheap first look before training an MLLM (bench/study.py trains the MLLM at the corners that matter).
"""

from __future__ import annotations

import time
from dataclasses import asdict

from bench.common import log, write_results


def main() -> None:
    import argparse

    import torch

    from bench.study import ATTRIBUTES, dataset, read_rows
    from vtok.eval.probe import FIRST_LOOK, MODES, ProbeConfig, probe_table, run_probe

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", nargs="?", default=None, help="token dataset (default: the study's S=16, T=16 corpus)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated probe modes")
    p.add_argument("--attributes", default=",".join(ATTRIBUTES), help="comma-separated attributes")
    p.add_argument("--seeds", type=int, default=2, help="classifier initialisations per (mode, attribute)")
    p.add_argument("--control", action="store_true", help="also the shuffled-label control")
    args = p.parse_args()
    if args.data is None:
        from jobs.ray_setup import RayConfig, init_ray

        init_ray(RayConfig(num_cpus=2))
        args.data = dataset("corpus", 4, 16, 1)
    torch.set_num_threads(1)
    rows = read_rows(args.data)
    cfg = ProbeConfig(modes=[m for m in args.modes.split(",") if m], seeds=args.seeds, shuffled_control=args.control,
                      attributes=[a for a in args.attributes.split(",") if a])
    started = time.perf_counter()
    scores = run_probe(rows, cfg)
    seconds = time.perf_counter() - started
    text = probe_table(scores)
    print(f"{FIRST_LOOK}\n\n{text}\n\n{len(rows)} clips, {seconds:.1f} s")
    path = write_results("probe", {"data": args.data, "clips": len(rows), "seconds": seconds, "table": text,
                                   "config": asdict(cfg), "scores": [asdict(s) for s in scores]})
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
