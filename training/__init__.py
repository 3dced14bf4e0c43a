"""Training midline's own FIM code model, one stage per module.

The pipeline: corpus -> tokenizer -> data -> train -> evaluate -> export. Each stage is a subcommand of
`midline-train` (`python -m midline.training`). Built so far: `tokenizer` (byte-level BPE with midline's
FIM tokens) and `tiny_model` (a tiny random-weight model that exercises serving before a trained one exists).
"""
