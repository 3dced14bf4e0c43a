-- midline for Neovim 0.11+: the `:Midline` command and the ghost text's highlight. Everything else loads on
-- first use; the server starts once `require("midline").setup()` has run and a file of a configured type opens.
if vim.g.loaded_midline then
  return
end
vim.g.loaded_midline = 1

local function highlights()
  vim.api.nvim_set_hl(0, "MidlineGhost", { link = "Comment", default = true })
end
highlights()
vim.api.nvim_create_autocmd("ColorScheme", {
  group = vim.api.nvim_create_augroup("midline.highlights", {}),
  callback = highlights,
})

local subcommands = { "status", "pause", "resume", "toggle", "suggest", "explain", "fix", "tests", "comment" }
vim.api.nvim_create_user_command("Midline", function(args)
  require("midline").command(args.fargs[1])
end, {
  nargs = 1,
  desc = "midline: " .. table.concat(subcommands, " | "),
  complete = function(lead)
    return vim.tbl_filter(function(name) return vim.startswith(name, lead) end, subcommands)
  end,
})
