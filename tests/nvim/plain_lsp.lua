-- Neovim's own LSP client, without the plugin in nvim/: the server's completion-menu fallback (a completion item
-- per suggestion) through vim.lsp.completion.
vim.lsp.config("midline", {
  cmd = { "midline", "serve" },
  filetypes = {
    "python", "javascript", "javascriptreact", "typescript", "typescriptreact", "go", "rust", "java", "c", "cpp",
  },
  root_markers = { ".git" },
  init_options = { midline = { maxNewTokens = 64 } },
  on_attach = function(client, buf) vim.lsp.completion.enable(true, client.id, buf) end,
})
vim.lsp.enable("midline")
