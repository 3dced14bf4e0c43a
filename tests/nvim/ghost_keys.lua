-- Driven by tests/e2e/test_neovim_plugin.py: the plugin's ghost text and keys on replies the random-weight test
-- model does not write (several lines; a range replacing the `)` after the cursor; a UTF-16 range after a
-- non-ASCII character; two candidates), handed to `ghost.show` as the server would send them. No server runs.
-- Each case: the buffer's lines, the cursor (1-based row, byte column; `i` there, or `insert`), the reply, the
-- keys; the extmark shown and the lines after each key are written as JSON to MIDLINE_OUT.
local H = dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "harness.lua")

local ghost = require("midline.ghost")

local function marks(buf)
  return vim.tbl_map(function(mark)
    local d = mark[4]
    return { row = mark[2], col = mark[3], pos = d.virt_text_pos, text = d.virt_text, lines = d.virt_lines }
  end, vim.api.nvim_buf_get_extmarks(buf, ghost.namespace, 0, -1, { details = true }))
end

local function range(line, from, to)
  return { start = { line = line, character = from }, ["end"] = { line = line, character = to } }
end

local CALL = { "def f(a, b):", "    total = g()", "    return total" }
local CASES = {
  { name = "lines", lines = CALL, cursor = { 2, 14 }, keys = { "<M-C-Right>", "<M-C-Right>" },
    reply = { items = { { insertText = "a,\n        b)", range = range(1, 14, 15) } } } },
  { name = "all", lines = CALL, cursor = { 2, 14 }, keys = { "<Tab>" },
    reply = { items = { { insertText = "a,\n        b)", range = range(1, 14, 15) } } } },
  { name = "words", lines = CALL, cursor = { 2, 14 }, keys = { "<M-Right>", "<M-Right>", "<M-Right>" },
    reply = { items = { { insertText = "a,\n        b)", range = range(1, 14, 15) } } } },
  { name = "closing", lines = { "print()" }, cursor = { 1, 6 }, keys = { "<Tab>" },
    reply = { { insertText = "x)", range = range(0, 6, 7) } } },
  { name = "utf16", lines = { "s = 'é' + g()" }, cursor = { 1, 13 }, keys = { "<Tab>" },
    reply = { items = { { insertText = "s)", range = range(0, 12, 13) } } } },
  { name = "cycle", lines = { "x = " }, cursor = { 1, 3 }, insert = "A", keys = { "<M-]>", "<Tab>" },
    reply = { items = { { insertText = "1" }, { insertText = "2" } } } },
}

H.run(function()
  vim.o.showmode = false
  local buf = vim.api.nvim_get_current_buf()
  vim.bo[buf].expandtab = true
  ghost.attach(buf)
  local results = {}
  for _, case in ipairs(CASES) do
    vim.api.nvim_feedkeys(vim.keycode("<Esc>"), "n", false)
    H.wait(function() return vim.api.nvim_get_mode().mode == "n" end, case.name .. ": normal mode")
    vim.api.nvim_buf_set_lines(buf, 0, -1, false, case.lines)
    vim.api.nvim_win_set_cursor(0, case.cursor)
    vim.api.nvim_feedkeys(case.insert or "i", "n", false)
    H.wait(function() return vim.api.nvim_get_mode().mode == "i" end, case.name .. ": insert mode")
    ghost.show(case.reply)
    local steps = { { marks = marks(buf), shown = ghost.current() } }
    for _, key in ipairs(case.keys) do
      local tick, index = vim.api.nvim_buf_get_changedtick(buf), (ghost.current() or {}).index
      vim.api.nvim_feedkeys(vim.keycode(key), "m", false)
      H.wait(function()
        return vim.api.nvim_buf_get_changedtick(buf) ~= tick or (ghost.current() or {}).index ~= index
      end, case.name .. ": " .. key)
      table.insert(steps, {
        key = key, lines = vim.api.nvim_buf_get_lines(buf, 0, -1, false), cursor = vim.api.nvim_win_get_cursor(0),
        marks = marks(buf), shown = ghost.current(),
      })
    end
    results[case.name] = steps
  end
  H.finish({ cases = results })
end)
