-- Driven by tests/e2e/test_neovim.py, after init.lua (the README's setup):
--   nvim --headless --clean -u tests/nvim/init.lua -S tests/nvim/complete.lua
-- Environment: MIDLINE_CMD and MIDLINE_INIT_OPTIONS (JSON) override the README's `cmd` and
-- `init_options`; MIDLINE_FILE is opened, the cursor goes to the end of line MIDLINE_LINE (1-based) in
-- insert mode once `midline.status` says the model is ready (the server answers initialize before it
-- loads the model), `vim.lsp.completion.get()` asks the server, and the popup menu's item is selected
-- (<C-n>) and accepted (<C-y>) as a user would. Then the buffer, the accepted LSP item and a log of
-- the steps are written as JSON to MIDLINE_OUT and Neovim quits, which stops the server.
local start = vim.uv.hrtime()
local timeout = tonumber(vim.env.MIDLINE_TIMEOUT_MS or "20000")
local events = {} -- what happened when, for the test's failure message
local done = false

local function log(what)
  table.insert(events, ("%6.0f ms  %s"):format((vim.uv.hrtime() - start) / 1e6, what))
end

local function need(name)
  return vim.env[name] or error("environment variable " .. name .. " is not set")
end

local function finish(result)
  if done then
    return
  end
  done = true
  result.events = events
  result.lines = vim.api.nvim_buf_get_lines(0, 0, -1, false)
  local file = assert(io.open(need("MIDLINE_OUT"), "w"))
  file:write(vim.json.encode(result))
  file:close()
  vim.cmd("qa!")
end

-- Polls `condition` from the event loop, never blocking it, so typeahead and LSP replies keep flowing.
local function when(condition, what, and_then)
  local deadline = vim.uv.now() + timeout
  local function poll()
    if done then
      return
    end
    local ok, value = pcall(condition)
    if not ok then
      finish({ error = what .. ": " .. tostring(value) })
    elseif value then
      log(what)
      local ran, err = pcall(and_then, value)
      if not ran then
        finish({ error = "after " .. what .. ": " .. tostring(err) })
      end
    elseif vim.uv.now() > deadline then
      finish({ error = "timed out waiting for " .. what })
    else
      vim.defer_fn(poll, 10)
    end
  end
  poll()
end

-- The model's state from `midline.status`, asked without blocking: nil until it is `ready` (or `failed`).
local function model_state(client, buf)
  local state, asking = nil, false
  return function()
    if not asking then
      asking = true
      client:request("workspace/executeCommand", { command = "midline.status", arguments = {} }, function(err, result)
        asking = false
        if err then
          state = "error: " .. tostring(err.message)
        elseif result and result.state ~= "loading" then
          state = result.state .. (result.error and (": " .. result.error) or "")
        end
      end, buf)
    end
    return state
  end
end

local function main()
  local line = tonumber(need("MIDLINE_LINE"))
  vim.o.completeopt = "menuone,noselect" -- show the menu even for one item, select nothing yet
  vim.o.showmode = false -- no "-- INSERT --" on stdout
  vim.lsp.config("midline", {
    cmd = vim.json.decode(need("MIDLINE_CMD")),
    init_options = vim.json.decode(need("MIDLINE_INIT_OPTIONS")),
    detached = false, -- keep the server in Neovim's process group, so the test can clean up after a crash
  })

  local accepted -- the LSP item behind the accepted completion
  vim.api.nvim_create_autocmd("CompleteDone", {
    callback = function()
      log("CompleteDone, reason " .. tostring(vim.v.event.reason))
      if vim.v.event.reason == "accept" then
        accepted = vim.tbl_get(vim.v.completed_item, "user_data", "nvim", "lsp", "completion_item") or vim.NIL
      end
    end,
  })

  vim.cmd.edit(vim.fn.fnameescape(need("MIDLINE_FILE")))
  local buf = vim.api.nvim_get_current_buf()
  when(function()
    local client = vim.lsp.get_clients({ bufnr = buf, name = "midline" })[1]
    return client and client.initialized and client
  end, "client attached and initialized", function(client)
    log("cmd " .. vim.json.encode(client.config.cmd))
    when(model_state(client, buf), "model loaded", function(state)
      if state ~= "ready" then
        return finish({ error = "the model did not load: " .. state })
      end
      vim.api.nvim_win_set_cursor(0, { line, 0 })
      -- `A` appends at the end of the line; then completion is requested, as a keymap would.
      vim.api.nvim_feedkeys(vim.keycode("A<Cmd>lua vim.lsp.completion.get()<CR>"), "n", false)
      when(function()
        return vim.fn.pumvisible() == 1
      end, "popup menu", function()
        local items = vim.fn.complete_info({ "items" }).items
        log(("%d item(s), words %s"):format(#items, vim.json.encode(vim.tbl_map(function(i) return i.word end, items))))
        vim.api.nvim_feedkeys(vim.keycode("<C-n><C-y><Esc>"), "n", false)
        when(function()
          return accepted ~= nil and vim.api.nvim_get_mode().mode == "n"
        end, "item accepted, back in normal mode", function()
          finish({ item = accepted, server_pids = vim.api.nvim_get_proc_children(vim.fn.getpid()) })
        end)
      end)
    end)
  end)
end

local ok, err = pcall(main)
if not ok then
  finish({ error = tostring(err) })
end
