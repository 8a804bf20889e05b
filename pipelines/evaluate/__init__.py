"""Evaluation on Ray: the results table of a run (results), the evaluations that fill it, the scan over checkpoints."""
