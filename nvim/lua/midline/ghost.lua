-- Ghost text from textDocument/inlineCompletion, drawn with extmarks: the suggestion's first line at the cursor
-- (inline virtual text, or an overlay where it replaces text after the cursor), the rest as virtual lines.
--
-- In insert mode each keystroke cancels the request in flight, clears the ghost text and asks again after
-- `debounce_ms` (an automatic request: the server's first candidate). Typing what is shown keeps the rest on
-- screen. Cycling asks once, explicitly, for the server's ranked candidates. Accepting inserts the whole
-- suggestion, its next word or its next line, and runs the item's command (`midline.accepted`) once all of it
-- is in. Only the suggestion's own text is ever inserted; nothing else in the buffer is touched.
local M = {}

local ns = vim.api.nvim_create_namespace("midline.ghost")
M.namespace = ns

local INVOKED, AUTOMATIC = 1, 2 -- InlineCompletionTriggerKind

local paused = false
local timer = nil ---@type uv.uv_timer_t?
local pending = nil -- the request in flight: { client, id, seq }
local seq = 0 -- bumped by every request and cancel: a reply whose seq is not the latest is dropped
-- The suggestion on screen: buf, row/col (0-based, bytes) of the cursor, `before`/`after` (the line's text on either
-- side of it), items ({ text, replace = bytes after the cursor it replaces, command }), index, explicit, client_id.
local shown = nil

local function options()
  return require("midline").options or require("midline").defaults
end

local function cursor()
  local pos = vim.api.nvim_win_get_cursor(0)
  return pos[1] - 1, pos[2]
end

local function current_line(buf, row)
  return vim.api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ""
end

local function in_insert_mode()
  return vim.api.nvim_get_mode().mode:sub(1, 1) == "i"
end

--- Whether ghost text is on screen.
function M.visible()
  return shown ~= nil and shown.buf == vim.api.nvim_get_current_buf()
end

--- What is on screen: { text, index, count, items = { text... }, explicit }, or nil.
function M.current()
  if not shown then
    return nil
  end
  local texts = vim.tbl_map(function(item) return item.text end, shown.items)
  local item = shown.items[shown.index]
  return { text = item.text, index = shown.index, count = #shown.items, items = texts, explicit = shown.explicit }
end

local function clear()
  if shown and vim.api.nvim_buf_is_valid(shown.buf) then
    vim.api.nvim_buf_clear_namespace(shown.buf, ns, 0, -1)
  end
  shown = nil
end

local function cancel()
  if timer then
    timer:stop()
  end
  seq = seq + 1
  if pending then
    pending.client:cancel_request(pending.id)
    pending = nil
  end
end

--- Removes the ghost text and stops any request for it.
function M.dismiss()
  cancel()
  clear()
end

-- Tabs as spaces up to the next tab stop: virtual text shows a tab as one cell otherwise.
local function expand_tabs(text, buf)
  local tabstop = vim.bo[buf].tabstop
  return (text:gsub("\t", string.rep(" ", tabstop)))
end

local function render()
  local buf, row, col = shown.buf, shown.row, shown.col
  vim.api.nvim_buf_clear_namespace(buf, ns, 0, -1)
  local item = shown.items[shown.index]
  local replaced = shown.after:sub(1, item.replace)
  local keep = shown.after:sub(item.replace + 1) -- the line's text that ends up after the suggestion
  local lines = vim.split(item.text, "\n", { plain = true })
  local hl = "MidlineGhost"
  local mark = { hl_mode = "combine", priority = 200 }
  local first = lines[1]
  if (#lines == 1 and vim.endswith(first, replaced)) or (#lines > 1 and shown.after == "") then
    -- the text after the cursor stays where it is on screen: the first line goes in front of it
    first = #lines == 1 and first:sub(1, #first - #replaced) or first
    if first ~= "" then
      mark.virt_text, mark.virt_text_pos = { { expand_tabs(first, buf), hl } }, "inline"
    end
  else -- the line's rest moves (or goes): draw over it, blanking what is not part of the result on this line
    local text = expand_tabs(#lines == 1 and (first .. keep) or first, buf)
    local pad = vim.fn.strdisplaywidth(expand_tabs(shown.after, buf)) - vim.fn.strdisplaywidth(text)
    mark.virt_text, mark.virt_text_pos = { { text .. string.rep(" ", math.max(pad, 0)), hl } }, "overlay"
  end
  if #lines > 1 then
    mark.virt_lines = {}
    for i = 2, #lines do
      local text = lines[i] .. (i == #lines and keep or "")
      table.insert(mark.virt_lines, { { expand_tabs(text, buf), hl } })
    end
  end
  vim.api.nvim_buf_set_extmark(buf, ns, row, col, mark)
end

-- The reply's items as { text, replace, command }: each inserts at the cursor (what its range covers before the
-- cursor must be typed already) and replaces `replace` bytes after it on the same line. Others are left out.
local function parse(result, encoding, line, col)
  local items = {}
  for _, item in ipairs(vim.islist(result or {}) and result or (result.items or {})) do
    local text = item.insertText
    if type(text) == "table" then
      text = text.kind ~= "snippet" and text.value or nil
    end
    local replace = 0
    if type(text) == "string" and item.range then
      local range = item.range
      local start = vim.str_byteindex(line, encoding, range.start.character, false)
      local stop = vim.str_byteindex(line, encoding, range["end"].character, false)
      local typed = line:sub(start + 1, col)
      if range.start.line ~= range["end"].line or start > col or stop < col or not vim.startswith(text, typed) then
        text = nil
      else
        text, replace = text:sub(#typed + 1), stop - col
      end
    end
    if type(text) == "string" and text ~= "" and text ~= line:sub(col + 1, col + replace) then
      table.insert(items, { text = text, replace = replace, command = item.command })
    end
  end
  return items
end

--- Shows an inlineCompletion reply (items, or a list with `items`) at the cursor of the current window; `opts`:
--- encoding (the positions', default "utf-16"), explicit (the server's candidates), client_id (whose commands the
--- items carry), previous and step (cycling: show the candidate `step` after the one whose text is `previous`).
function M.show(reply, opts)
  opts = opts or {}
  local buf = vim.api.nvim_get_current_buf()
  local row, col = cursor()
  local line = current_line(buf, row)
  local items = parse(reply, opts.encoding or "utf-16", line, col)
  if #items == 0 then
    clear()
    return
  end
  local index = 1
  for i, item in ipairs(items) do
    if opts.step and item.text == opts.previous then
      index = (i - 1 + opts.step) % #items + 1
    end
  end
  clear()
  shown = {
    buf = buf, row = row, col = col, before = line:sub(1, col), after = line:sub(col + 1),
    items = items, index = index, explicit = opts.explicit, client_id = opts.client_id,
  }
  render()
end

local function request(buf, trigger, step)
  local client = require("midline").client(buf)
  if not client or paused then
    return
  end
  cancel()
  local my = seq
  local row, col = cursor()
  local tick = vim.api.nvim_buf_get_changedtick(buf)
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = trigger }
  local before = shown and shown.items[shown.index].text
  local ok, id = client:request("textDocument/inlineCompletion", params, function(err, result)
    if my ~= seq then -- cancelled or superseded
      return
    end
    pending = nil
    local crow, ccol = cursor()
    if err or not in_insert_mode() or vim.api.nvim_get_current_buf() ~= buf or crow ~= row or ccol ~= col
      or vim.api.nvim_buf_get_changedtick(buf) ~= tick or vim.fn.pumvisible() == 1 then
      return
    end
    M.show(result, { encoding = client.offset_encoding, explicit = trigger == INVOKED, client_id = client.id,
      previous = step and before, step = step })
  end, buf)
  if ok and id then
    pending = { client = client, id = id }
  end
end

-- After a keystroke or a cursor move: keep what is shown if the user typed its start, else ask again.
local function changed(buf)
  if buf ~= vim.api.nvim_get_current_buf() or not in_insert_mode() then
    return
  end
  local row, col = cursor()
  local line = current_line(buf, row)
  if shown and shown.buf == buf and shown.row == row and col >= shown.col then
    local typed = line:sub(shown.col + 1, col)
    if line:sub(1, shown.col) == shown.before and line:sub(col + 1) == shown.after and not typed:find("\n") then
      if typed == "" then -- nothing changed (the other of CursorMovedI/TextChangedI, or our own accept)
        return
      end
      local rest, index = {}, nil -- the candidates that go on with what was typed, and the one on screen
      for i, item in ipairs(shown.items) do
        if vim.startswith(item.text, typed) and #item.text > #typed then
          table.insert(rest, { text = item.text:sub(#typed + 1), replace = item.replace, command = item.command })
          index = i == shown.index and #rest or index
        end
      end
      if index then -- typed through: the rest stays on screen
        shown.items, shown.index, shown.col, shown.before = rest, index, col, line:sub(1, col)
        render()
        return
      end
    end
  end
  M.dismiss()
  if paused or not options().auto_trigger or vim.fn.pumvisible() == 1 then
    return
  end
  timer = timer or assert(vim.uv.new_timer())
  timer:start(options().debounce_ms, 0, vim.schedule_wrap(function()
    if vim.api.nvim_get_current_buf() == buf and in_insert_mode() and not paused then
      request(buf, AUTOMATIC)
    end
  end))
end

local function word(text)
  return text:match("^%s*[%w_]+") or text:match("^%s*[^%w_%s]+") or text:match("^%s+") or text
end

local function first_line(text)
  return text:match("^\n?[^\n]*")
end

local function run_command(item, client_id, buf)
  local client = vim.lsp.get_client_by_id(client_id)
  if item.command and client then
    client:exec_cmd(item.command, { bufnr = buf }, function() end)
  end
end

--- Inserts the suggestion on screen: "all" of it, its next "word" or its next "line". False if none is shown.
function M.accept(how)
  if not M.visible() then
    return false
  end
  local item = shown.items[shown.index]
  local piece = (how == "word" and word(item.text)) or (how == "line" and first_line(item.text)) or item.text
  local rest = item.text:sub(#piece + 1)
  local done = rest == "" or rest == shown.after:sub(1, item.replace) -- what is left is already there
  local buf, row, col = shown.buf, shown.row, shown.col
  local lines = vim.split(piece, "\n", { plain = true })
  vim.api.nvim_buf_set_text(buf, row, col, row, col + (rest == "" and item.replace or 0), lines)
  local end_row = row + #lines - 1
  local end_col = (#lines == 1 and col or 0) + #lines[#lines]
  if done then
    local client_id = shown.client_id
    M.dismiss()
    vim.api.nvim_win_set_cursor(0, { end_row + 1, end_col + (rest ~= "" and #rest or 0) })
    run_command(item, client_id, buf)
    return true
  end
  local line = current_line(buf, end_row)
  shown.items = { { text = rest, replace = item.replace, command = item.command } }
  shown.index, shown.row, shown.col = 1, end_row, end_col
  shown.before, shown.after = line:sub(1, end_col), line:sub(end_col + 1)
  vim.api.nvim_win_set_cursor(0, { end_row + 1, end_col })
  render()
  return true
end

--- Shows the next (step 1) or previous (-1) candidate; the first time, asks the server for its candidates.
function M.cycle(step)
  local buf = vim.api.nvim_get_current_buf()
  if M.visible() and #shown.items > 1 then
    shown.index = (shown.index - 1 + step) % #shown.items + 1
    render()
  elseif not (M.visible() and shown.explicit) then
    request(buf, INVOKED, M.visible() and step or nil)
  end
end

--- Asks now for the server's candidates (an explicit request: no debounce, several candidates).
function M.suggest()
  request(vim.api.nvim_get_current_buf(), INVOKED)
end

--- Pauses (true) or resumes (false) completion.
function M.pause(on)
  paused = on
  if on then
    M.dismiss()
  end
  vim.notify(on and "midline: completions paused" or "midline: completions on")
end

function M.paused()
  return paused
end

-- An insert-mode key that acts while ghost text is visible, and is itself otherwise (`also`: acts anyway).
local function map(buf, lhs, action, also)
  if not lhs then
    return
  end
  vim.keymap.set("i", lhs, function()
    if M.visible() or also then
      return "<Cmd>lua require('midline.ghost')." .. action .. "<CR>"
    end
    return lhs
  end, { buffer = buf, expr = true, desc = "midline: " .. action })
end

--- Watches a buffer the server attached to: its insert-mode changes, and the keys.
function M.attach(buf)
  if vim.b[buf].midline_ghost then
    return
  end
  vim.b[buf].midline_ghost = true
  local group = vim.api.nvim_create_augroup("midline.ghost." .. buf, {})
  vim.api.nvim_create_autocmd({ "TextChangedI", "CursorMovedI", "InsertEnter" }, {
    group = group,
    buffer = buf,
    callback = function() changed(buf) end,
  })
  vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, { group = group, buffer = buf, callback = M.dismiss })
  vim.api.nvim_create_autocmd("LspDetach", {
    group = group,
    buffer = buf,
    callback = function(args)
      local client = vim.lsp.get_client_by_id(args.data.client_id)
      if client and client.name == "midline" then
        M.dismiss()
        vim.api.nvim_del_augroup_by_id(group)
        vim.b[buf].midline_ghost = nil
      end
    end,
  })
  local keys = options().keymaps
  map(buf, keys.accept, "accept('all')")
  map(buf, keys.accept_word, "accept('word')")
  map(buf, keys.accept_line, "accept('line')")
  map(buf, keys.next, "cycle(1)", true)
  map(buf, keys.prev, "cycle(-1)", true)
  map(buf, keys.suggest, "suggest()", true)
  map(buf, keys.dismiss, "dismiss()")
end

return M
