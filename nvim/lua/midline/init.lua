-- midline for Neovim 0.11+: starts `midline serve` as the "midline" LSP client (vim.lsp.config + enable), shows
-- its inline completions as ghost text (midline.ghost), opens explanations in a split (midline.explain), and
-- reports on itself in `:checkhealth midline` (midline.health).
local M = {}

--- The options `setup()` takes, with their defaults.
M.defaults = {
  cmd = { "midline", "serve" }, -- the server command (e.g. { "/path/to/.venv/bin/midline", "serve" })
  filetypes = {
    "python", "javascript", "javascriptreact", "typescript", "typescriptreact", "go", "rust", "java", "c", "cpp",
  },
  root_markers = { ".git" },
  settings = {}, -- the server's settings (initializationOptions.midline): keys of README's Configuration table
  auto_trigger = true, -- ask as you type; false: only on `keymaps.suggest` / `:Midline suggest`
  debounce_ms = 75, -- quiet time after a keystroke before asking
  keymaps = { -- insert mode, in buffers the server is attached to; false turns a key off
    accept = "<Tab>", -- the whole suggestion (else the key's own action)
    accept_word = "<M-Right>",
    accept_line = "<M-C-Right>",
    next = "<M-]>", -- the next candidate (the first press asks for several)
    prev = "<M-[>",
    suggest = "<M-\\>", -- ask now, for several candidates
    dismiss = "<C-]>",
  },
  explanation = { split = "right", focus = false }, -- where Explain opens ("right", "left", "above", "below")
  lsp = {}, -- more vim.lsp.config fields for the client (on_attach, capabilities, detached, ...)
}

--- The options in effect: nil until `setup()` has run.
M.options = nil

local function merged(opts)
  local options = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  for _, list in ipairs({ "cmd", "filetypes", "root_markers" }) do -- lists replace the default, never merge into it
    options[list] = (opts or {})[list] or M.defaults[list]
  end
  return options
end

--- Starts midline for the configured filetypes. Returns false, after an error message, when it cannot.
function M.setup(opts)
  if vim.fn.has("nvim-0.11") == 0 then
    vim.notify("midline: Neovim 0.11 or newer is needed (vim.lsp.config)", vim.log.levels.ERROR)
    return false
  end
  local options = merged(opts)
  M.options = options
  local program = type(options.cmd) == "table" and options.cmd[1] -- (a function, as vim.lsp.config takes: as is)
  if program ~= false and (type(program) ~= "string" or vim.fn.executable(program) ~= 1) then
    vim.notify(
      ("midline: the server command `%s` is not executable (not found on PATH), so midline is off. Install midline "
        .. "(pip install -e /path/to/midline) or give its full path: require(\"midline\").setup({ cmd = "
        .. "{ \"/path/to/.venv/bin/midline\", \"serve\" } })"):format(table.concat(options.cmd, " ")),
      vim.log.levels.ERROR
    )
    return false
  end
  local config = {
    cmd = options.cmd,
    filetypes = options.filetypes,
    root_markers = options.root_markers,
    init_options = next(options.settings) and { midline = options.settings } or nil,
    capabilities = {
      -- ghost text from textDocument/inlineCompletion, so the server leaves out its completion-menu fallback
      textDocument = { inlineCompletion = { dynamicRegistration = false } },
      -- explanations come as midline.showExplanation, shown in a split (not a document opened over the code)
      experimental = { midline = { showExplanation = true } },
    },
    commands = {
      ["midline.showExplanation"] = function(command)
        require("midline.explain").show(command.arguments[1])
      end,
    },
  }
  vim.lsp.config["midline"] = vim.tbl_deep_extend("force", config, options.lsp)
  local group = vim.api.nvim_create_augroup("midline.attach", {})
  vim.api.nvim_create_autocmd("LspAttach", {
    group = group,
    callback = function(args)
      local client = vim.lsp.get_client_by_id(args.data.client_id)
      if client and client.name == "midline" then
        require("midline.ghost").attach(args.buf)
      end
    end,
  })
  vim.lsp.enable("midline")
  return true
end

--- The midline client attached to `buf` (default: the current buffer), or nil.
function M.client(buf)
  return vim.lsp.get_clients({ bufnr = buf or vim.api.nvim_get_current_buf(), name = "midline" })[1]
end

local ACTION_KINDS = {
  explain = "refactor.midline.explain",
  fix = "quickfix.midline.fix",
  tests = "refactor.midline.tests",
  comment = "refactor.midline.fromComment",
}

--- Runs one of midline's code actions at the cursor (or on the selection): explain, fix, tests, comment.
function M.action(name)
  local kind = assert(ACTION_KINDS[name], "unknown midline action " .. tostring(name))
  vim.lsp.buf.code_action({
    context = { only = { kind } },
    filter = function(action) return action.kind == kind end,
    apply = true,
  })
end

--- The server's `midline.status` (model, device, state), shown as a message.
function M.status()
  local client = M.client()
  if not client then
    vim.notify("midline: no server is attached to this buffer", vim.log.levels.WARN)
    return
  end
  client:request("workspace/executeCommand", { command = "midline.status", arguments = {} }, function(err, result)
    if err then
      vim.notify("midline: midline.status failed: " .. err.message, vim.log.levels.ERROR)
      return
    end
    local parts = { ("model %s"):format(result.model), result.state }
    if result.device then
      table.insert(parts, "on " .. result.device)
    end
    if result.error then
      table.insert(parts, result.error)
    end
    local ghost = require("midline.ghost")
    table.insert(parts, ghost.paused() and "completions paused" or "completions on")
    vim.notify("midline: " .. table.concat(parts, ", "))
  end)
end

--- `:Midline {subcommand}`.
function M.command(name)
  local ghost = require("midline.ghost")
  local commands = {
    status = M.status,
    pause = function() ghost.pause(true) end,
    resume = function() ghost.pause(false) end,
    toggle = function() ghost.pause(not ghost.paused()) end,
    suggest = function() ghost.suggest() end,
  }
  if commands[name] then
    commands[name]()
  elseif ACTION_KINDS[name] then
    M.action(name)
  else
    vim.notify("midline: unknown subcommand " .. tostring(name), vim.log.levels.ERROR)
  end
end

return M
