"""vtok benchmarks: each module runs with `python -m bench.<name> [--quick]` (see BENCHMARKS.md)."""
