"""Training midline's own FIM code model, one stage per module.

The pipeline: corpus -> tokenizer -> data -> train -> evaluate (positions) -> export, then sft_mine -> sft ->
evaluate_tasks for code actions, and tiny_model (a random-weight model for tests). Each stage is a subcommand
of `midline-train` (`python -m midline.training`, cli.py). Shared: stage.py (atomic files, hashes, the corpus
fingerprint, the command line), metrics.py (edit similarity, ROUGE-L, ...), model.py (the architecture).
"""
