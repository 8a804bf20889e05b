"""Evaluation: the shapes-world questions (TV-Align's categories), judged without Ray."""
