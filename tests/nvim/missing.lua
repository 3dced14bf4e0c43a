-- Driven by tests/e2e/test_neovim_plugin.py: setup() with a server command that is not executable (MIDLINE_CMD,
-- JSON). Records what it returned and the messages it gave, whether a client started for MIDLINE_FILE, and
-- `:checkhealth midline`; writes them to MIDLINE_OUT and quits.
local H = dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "harness.lua")

H.run(function()
  local messages = {}
  vim.notify = function(text, level) table.insert(messages, { text = text, level = level }) end
  local ok = require("midline").setup({ cmd = vim.json.decode(H.need("MIDLINE_CMD")) })
  vim.cmd.edit(vim.fn.fnameescape(H.need("MIDLINE_FILE")))
  H.sleep(200)
  local clients = #vim.lsp.get_clients({ name = "midline" })
  vim.cmd("checkhealth midline")
  H.finish({ setup = ok, messages = messages, clients = clients, health = vim.api.nvim_buf_get_lines(0, 0, -1, false) })
end)
