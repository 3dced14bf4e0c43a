-- What the headless Neovim drivers share (loaded with dofile): a log of steps with their times, waits that poll
-- the event loop without blocking it (typeahead and LSP replies keep flowing), and the result file.
-- Environment: MIDLINE_OUT (the JSON result is written there, then Neovim quits, which stops the server) and
-- MIDLINE_TIMEOUT_MS (the longest wait).
local H = {}

local start = vim.uv.hrtime()
local timeout = tonumber(vim.env.MIDLINE_TIMEOUT_MS or "20000")
local events = {} -- what happened when, for the test's failure message
local done = false

function H.log(what)
  table.insert(events, ("%6.0f ms  %s"):format((vim.uv.hrtime() - start) / 1e6, what))
end

function H.need(name)
  return vim.env[name] or error("environment variable " .. name .. " is not set")
end

--- Writes `result` (with the log and the current buffer's lines) to MIDLINE_OUT and quits, once.
function H.finish(result)
  if done then
    return
  end
  done = true
  result.events = events
  result.lines = result.lines or vim.api.nvim_buf_get_lines(0, 0, -1, false)
  local file = assert(io.open(H.need("MIDLINE_OUT"), "w"))
  file:write(vim.json.encode(result))
  file:close()
  vim.cmd("qa!")
end

--- Polls `condition` from the event loop, never blocking it; calls `and_then` with its first truthy value.
function H.when(condition, what, and_then)
  local deadline = vim.uv.now() + timeout
  local function poll()
    if done then
      return
    end
    local ok, value = pcall(condition)
    if not ok then
      H.finish({ error = what .. ": " .. tostring(value) })
    elseif value then
      H.log(what)
      local ran, err = pcall(and_then, value)
      if not ran then
        H.finish({ error = "after " .. what .. ": " .. tostring(err) })
      end
    elseif vim.uv.now() > deadline then
      H.finish({ error = "timed out waiting for " .. what })
    else
      vim.defer_fn(poll, 10)
    end
  end
  poll()
end

--- Runs `main` as a coroutine, in which `H.wait` and `H.sleep` let the editor run; an error ends the run.
function H.run(main)
  local co = coroutine.create(main)
  local function resume(...)
    local ok, err = coroutine.resume(co, ...)
    if not ok then
      H.finish({ error = debug.traceback(co, tostring(err)) })
    end
  end
  H.resume = resume
  vim.schedule(resume)
end

--- Inside `H.run`: waits until `condition` returns a truthy value, and returns it.
function H.wait(condition, what)
  H.when(condition, what, function(value) vim.schedule(function() H.resume(value) end) end) -- after the yield
  return coroutine.yield()
end

--- Inside `H.run`: lets the editor run for `ms` milliseconds.
function H.sleep(ms)
  vim.defer_fn(H.resume, ms)
  coroutine.yield()
end

--- The model's state from `midline.status`, asked without blocking: nil until it is `ready` (or `failed`).
function H.model_state(client, buf)
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

return H
