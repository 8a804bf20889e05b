"""Models that consume VTok tokens: the MLLM (vtok.models.mllm), its text tokenizer and the tiny test LM.

Nothing is imported here: torch, transformers and peft load when a submodule is imported.
"""
