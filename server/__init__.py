"""midline's language server: documents, tree-sitter context, completion pipeline, code actions and hover.

The path of one keystroke reads top to bottom: `documents` (open files; their tree re-parsed incrementally
when read) -> `context` (windows and snippets around the cursor; `symbols` and `retrieval`
for other files, their indexes kept fresh by `workspace` over `files`) -> `prompt`
(sized to the model's context, laid out by `midline.model.fim`) -> a `midline.model.backend.Backend` (the
local engine or a remote one) -> `postprocess` (what the editor shows; `security` hides Python with a
high-severity bandit finding); `completion` runs that path with caching, typing-through and cancellation.
`actions` (a table of code actions, each about what `targets` finds at the cursor) and `hover` ask the
model through `assistant` (generated tests checked by `verify` in the `sandbox`). `server` holds the LSP
features, `lsp` converts to and from LSP's types, `protocol` is JSON-RPC as midline answers it, `config` the
settings, and `cli` the `midline` command.
"""
