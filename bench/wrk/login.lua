-- Row 7 of bench/run.sh: every request logs in with its own code (WeChat codes are single-use):
-- GET /auth?code=u<thread>n<counter>.<run>, <run> given after `--` so warm-up and measured
-- runs never share a code. Responses outside 2xx are counted and printed by done().
local threads = {}
local counter = 0
local run = "r"

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads) -- a global of that thread's Lua state
end

function init(args)
  run = args[1] or run
  non2xx = 0
end

function request()
  counter = counter + 1
  return wrk.format("GET", "/auth?code=u" .. tid .. "n" .. counter .. "." .. run)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do
    n = n + (t:get("non2xx") or 0)
  end
  io.write(string.format("Lua non-2xx: %d\n", n))
end
