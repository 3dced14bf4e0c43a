"""midline's language server: documents, tree-sitter context, completion pipeline.

The path of one keystroke reads top to bottom: `documents` (open files, incrementally parsed) ->
`context` (windows and snippets around the cursor) -> `midline.model.fim` (the prompt) ->
`midline.model.engine` (the model) -> `postprocess` (what the editor shows); `completion` runs that
path with caching, typing-through and cancellation, and `server` exposes it over LSP.
"""
