-- Driven by tests/e2e/test_neovim_plugin.py, after the README's setup of the plugin in nvim/ (its init.lua):
--   nvim --headless --clean -u init.lua -S tests/nvim/plugin.lua
-- The user's steps, each from the same document with the cursor at the end of line MIDLINE_LINE (1-based): type
-- MIDLINE_TYPED in insert mode (feedkeys), wait for the ghost text, then press a key of the plugin's. Each step
-- records the suggestion on screen (the plugin's state and its extmark) and the buffer's lines after the key.
-- Then Explain (`:Midline explain` in `area`), `:checkhealth midline`, and .tsx/.jsx buffers. MIDLINE_SETTINGS
-- (JSON) are the server's settings; everything is written as JSON to MIDLINE_OUT and Neovim quits.
local H = dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "harness.lua")

local ghost = require("midline.ghost")
local function keys(text, mode)
  vim.api.nvim_feedkeys(vim.keycode(text), mode or "m", false) -- "m": through the plugin's mappings
end

local function marks(buf)
  return vim.tbl_map(function(mark)
    local details = mark[4]
    return {
      row = mark[2], col = mark[3], pos = details.virt_text_pos, text = details.virt_text,
      lines = details.virt_lines,
    }
  end, vim.api.nvim_buf_get_extmarks(buf, ghost.namespace, 0, -1, { details = true }))
end

H.run(function()
  vim.o.showmode = false -- no "-- INSERT --" on stdout
  local line = tonumber(H.need("MIDLINE_LINE"))
  local typed = H.need("MIDLINE_TYPED")
  local result = { setup = require("midline").setup({
    settings = vim.json.decode(H.need("MIDLINE_SETTINGS")),
    lsp = { detached = false }, -- the server stays in Neovim's process group, for the test's clean-up
  }) }
  vim.cmd.edit(vim.fn.fnameescape(H.need("MIDLINE_FILE")))
  local buf = vim.api.nvim_get_current_buf()
  local code_win = vim.api.nvim_get_current_win()
  local client = H.wait(function()
    local c = require("midline").client(buf)
    return c and c.initialized and c
  end, "client attached and initialized")
  result.cmd = client.config.cmd
  -- Every inlineCompletion reply as the server sent it, before the plugin reads it: what each step compares to.
  result.replies = {}
  local request = client.request
  client.request = function(self, method, params, handler, ...)
    if method ~= "textDocument/inlineCompletion" then
      return request(self, method, params, handler, ...)
    end
    return request(self, method, params, function(err, reply, ctx)
      if not err then
        local record = { trigger = params.context.triggerKind, position = params.position, reply = reply }
        table.insert(result.replies, record)
      end
      return handler(err, reply, ctx)
    end, ...)
  end
  local state = H.wait(H.model_state(client, buf), "model loaded")
  assert(state == "ready", "the model did not load: " .. state)
  local original = vim.api.nvim_buf_get_lines(buf, 0, -1, false)

  -- Back to normal mode with the original text, then `A` and the typed text: ghost text appears.
  local function fresh(what)
    keys("<Esc>", "n")
    H.wait(function() return vim.api.nvim_get_mode().mode == "n" end, what .. ": normal mode")
    vim.api.nvim_buf_set_lines(buf, 0, -1, false, original)
    vim.api.nvim_win_set_cursor(0, { line, 0 })
    keys("A" .. typed, "n")
    local shown = H.wait(ghost.current, what .. ": ghost text")
    return {
      shown = shown, reply = result.replies[#result.replies], marks = marks(buf),
      lines = vim.api.nvim_buf_get_lines(buf, 0, -1, false),
    }
  end

  -- A key (through the mappings); the step's buffer after the change it makes.
  local function press(step, key, what)
    local tick = vim.api.nvim_buf_get_changedtick(buf)
    keys(key)
    H.wait(function() return vim.api.nvim_buf_get_changedtick(buf) ~= tick end, what)
    step.after = vim.api.nvim_buf_get_lines(buf, 0, -1, false)
    step.cursor = vim.api.nvim_win_get_cursor(0)
    step.rest = ghost.current() -- what stays on screen (after a word or a line)
    step.rest_marks = marks(buf)
    return step
  end

  result.all = press(fresh("accept all"), "<Tab>", "accept all")
  result.word = press(fresh("accept word"), "<M-Right>", "accept word")
  result.line = press(fresh("accept line"), "<M-C-Right>", "accept line")

  -- Cycling: the first press asks the server for its ranked candidates, the next moves on; Tab takes that one.
  local cycle = fresh("cycle")
  keys("<M-]>")
  cycle.candidates = H.wait(function()
    local now = ghost.current()
    return now and now.explicit and now
  end, "cycle: the server's candidates")
  cycle.explicit_reply = result.replies[#result.replies]
  keys("<M-]>")
  H.sleep(50)
  cycle.next = ghost.current()
  result.cycle = press(cycle, "<Tab>", "cycle: accept")

  -- Typing the suggestion's first character keeps the rest on screen.
  local through = fresh("type through")
  local tick = vim.api.nvim_buf_get_changedtick(buf)
  keys(through.shown.text:sub(1, 1), "n")
  H.wait(function() return vim.api.nvim_buf_get_changedtick(buf) ~= tick end, "typed a character")
  H.sleep(30)
  through.rest = ghost.current()
  result.through = through

  -- Dismiss (<C-]>) and leaving insert mode (<Esc>) clear it, and change nothing.
  local dismiss = fresh("dismiss")
  keys("<C-]>")
  H.wait(function() return ghost.current() == nil end, "dismissed")
  H.sleep(300) -- no new request comes without a keystroke
  dismiss.rest, dismiss.rest_marks = ghost.current(), marks(buf)
  dismiss.after = vim.api.nvim_buf_get_lines(buf, 0, -1, false)
  result.dismiss = dismiss
  local escape = fresh("escape")
  keys("<Esc>", "n")
  H.wait(function() return ghost.current() == nil and vim.api.nvim_get_mode().mode == "n" end, "left insert mode")
  escape.rest_marks = marks(buf)
  result.escape = escape

  -- Paused: typing asks nothing.
  vim.cmd("Midline pause")
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, original)
  vim.api.nvim_win_set_cursor(0, { line, 0 })
  keys("A" .. typed, "n")
  H.sleep(600)
  result.paused = { shown = ghost.current(), marks = marks(buf) }
  keys("<Esc>", "n")
  vim.cmd("Midline resume")

  -- Explain the function: the explanation opens in a split, the code stays in its window.
  H.wait(function() return vim.api.nvim_get_mode().mode == "n" end, "normal mode for explain")
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, original)
  vim.api.nvim_win_set_cursor(0, { tonumber(H.need("MIDLINE_EXPLAIN_LINE")), 4 })
  local windows = #vim.api.nvim_tabpage_list_wins(0)
  vim.cmd("Midline explain")
  local explanation = H.wait(function()
    local b = vim.fn.bufnr("midline://explanation")
    return b ~= -1 and #vim.fn.win_findbuf(b) > 0 and b
  end, "explanation shown")
  result.explain = {
    windows_before = windows,
    windows = #vim.api.nvim_tabpage_list_wins(0),
    code_window_buffer_is_code = vim.api.nvim_win_get_buf(code_win) == buf,
    focus_stays = vim.api.nvim_get_current_win() == code_win,
    code = vim.api.nvim_buf_get_lines(buf, 0, -1, false),
    code_modified = vim.bo[buf].modified,
    text = vim.api.nvim_buf_get_lines(explanation, 0, -1, false),
    filetype = vim.bo[explanation].filetype,
    buftype = vim.bo[explanation].buftype,
  }
  result.original = original

  -- :checkhealth midline, read from its buffer.
  vim.cmd("checkhealth midline")
  result.health = vim.api.nvim_buf_get_lines(0, 0, -1, false)
  vim.cmd("tabclose")

  -- .tsx and .jsx files get the server too.
  result.attached = {}
  for _, name in ipairs({ "view.tsx", "view.jsx" }) do
    vim.cmd.edit(vim.fn.fnameescape(vim.fs.joinpath(vim.fs.dirname(H.need("MIDLINE_FILE")), name)))
    local b = vim.api.nvim_get_current_buf()
    H.wait(function() return require("midline").client(b) end, name .. " attached")
    result.attached[name] = vim.bo[b].filetype
  end
  result.server_pids = vim.api.nvim_get_proc_children(vim.fn.getpid())
  H.finish(result)
end)
