-- Driven by tests/e2e/test_neovim.py, after plain_lsp.lua (Neovim's own LSP client, without the plugin):
--   nvim --headless --clean -u tests/nvim/plain_lsp.lua -S tests/nvim/complete.lua
-- Environment: MIDLINE_CMD and MIDLINE_INIT_OPTIONS (JSON) override plain_lsp.lua's `cmd` and
-- `init_options`; MIDLINE_FILE is opened, the cursor goes to the end of line MIDLINE_LINE (1-based) in
-- insert mode once `midline.status` says the model is ready (the server answers initialize before it
-- loads the model), `vim.lsp.completion.get()` asks the server, and the popup menu's item is selected
-- (<C-n>) and accepted (<C-y>) as a user would. Then the buffer, the accepted LSP item and a log of
-- the steps are written as JSON to MIDLINE_OUT and Neovim quits, which stops the server.
local H = dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "harness.lua")
local log, need, finish, when = H.log, H.need, H.finish, H.when

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
    when(H.model_state(client, buf), "model loaded", function(state)
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
