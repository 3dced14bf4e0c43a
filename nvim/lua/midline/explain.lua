-- Explanations (the Explain code action's `midline.showExplanation` command) in a scratch buffer, in a split
-- beside the code: the buffer being explained stays in its window, untouched.
local M = {}

local NAME = "midline://explanation"

local function scratch_buffer()
  local buf = vim.fn.bufnr(NAME)
  if buf ~= -1 and vim.api.nvim_buf_is_valid(buf) then
    return buf
  end
  buf = vim.api.nvim_create_buf(false, true) -- unlisted, scratch (buftype=nofile, no swap file)
  vim.api.nvim_buf_set_name(buf, NAME)
  vim.bo[buf].bufhidden = "hide"
  vim.bo[buf].filetype = "markdown"
  vim.keymap.set("n", "q", "<Cmd>close<CR>", { buffer = buf, desc = "midline: close the explanation" })
  return buf
end

--- Shows `markdown` in the explanation split (opened if needed, reused if open); returns its buffer and window.
function M.show(markdown)
  if type(markdown) ~= "string" or markdown == "" then
    vim.notify("midline: the explanation is empty", vim.log.levels.WARN)
    return
  end
  local opts = (require("midline").options or require("midline").defaults).explanation
  local buf = scratch_buffer()
  vim.bo[buf].modifiable = true
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, vim.split(markdown, "\n", { plain = true }))
  vim.bo[buf].modifiable = false
  local tab = vim.api.nvim_get_current_tabpage()
  local win = vim.tbl_filter(function(w) return vim.api.nvim_win_get_tabpage(w) == tab end, vim.fn.win_findbuf(buf))[1]
  if win then
    vim.api.nvim_win_set_cursor(win, { 1, 0 })
    if opts.focus then
      vim.api.nvim_set_current_win(win)
    end
  else
    win = vim.api.nvim_open_win(buf, opts.focus, { split = opts.split, win = 0 })
    vim.wo[win].wrap = true
    vim.wo[win].linebreak = true
    vim.wo[win].conceallevel = 2
  end
  return buf, win
end

return M
