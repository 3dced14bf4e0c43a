-- `:checkhealth midline`: Neovim's version, the server command, and each running server's `midline.status`.
local M = {}

local function status(client)
  local reply = client:request_sync("workspace/executeCommand", { command = "midline.status", arguments = {} }, 5000)
  if not reply then
    return nil, "no answer to midline.status in 5 s"
  end
  if reply.err then
    return nil, "midline.status failed: " .. tostring(reply.err.message)
  end
  return reply.result
end

function M.check()
  local health = vim.health
  health.start("midline")
  local version = tostring(vim.version())
  if vim.fn.has("nvim-0.11") == 1 then
    health.ok("Neovim " .. version)
  else
    health.error("Neovim " .. version .. ": midline needs 0.11 or newer")
  end
  local midline = require("midline")
  local options = midline.options
  if not options then
    health.warn("setup() has not run", { 'add require("midline").setup({}) to your config' })
    options = midline.defaults
  end
  local cmd = type(options.cmd) == "table" and table.concat(options.cmd, " ") or "(a function)"
  if type(options.cmd) ~= "table" then
    health.info("server command: " .. cmd)
  elseif vim.fn.executable(options.cmd[1]) == 1 then
    health.ok(("server command: %s (%s)"):format(cmd, vim.fn.exepath(options.cmd[1])))
  else
    health.error(("server command: %s: not executable"):format(cmd), {
      "pip install -e /path/to/midline, or set cmd in setup() to the full path of its midline executable",
    })
  end
  health.info("filetypes: " .. table.concat(options.filetypes, ", "))
  health.info(require("midline.ghost").paused() and "completions: paused (:Midline resume)" or "completions: on")

  health.start("midline: server")
  local clients = vim.lsp.get_clients({ name = "midline" })
  if #clients == 0 then
    health.info("no server running: it starts when a buffer of one of the filetypes above opens")
  end
  for _, client in ipairs(clients) do
    local result, problem = status(client)
    local model = result and result.model or "?"
    if not result then
      health.error(("server %d: %s"):format(client.id, problem))
    elseif result.state == "ready" then
      health.ok(("server %d: model %s, device %s: ready"):format(client.id, model, result.device))
    elseif result.state == "loading" then
      health.warn(("server %d: model %s: loading"):format(client.id, model))
    else
      health.error(("server %d: model %s: %s: %s"):format(client.id, model, result.state, tostring(result.error)))
    end
    if result and result.sandbox then
      health.info("sandbox for generated tests: " .. result.sandbox)
    end
  end
end

return M
