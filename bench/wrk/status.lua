-- bench/soak.sh: counts every response by status (the table is per wrk thread; done() adds them
-- up) and prints the totals in lines soak.sh parses.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total, non2xx, all = 0, 0, {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("statuses") or {}) do
      all[status] = (all[status] or 0) + n
    end
  end
  local keys = {}
  for status, n in pairs(all) do
    table.insert(keys, status)
    total = total + n
    if status < 200 or status > 299 then
      non2xx = non2xx + n
    end
  end
  table.sort(keys)
  local parts = {}
  for _, status in ipairs(keys) do
    table.insert(parts, status .. "=" .. all[status])
  end
  local e = summary.errors
  io.write(string.format("Lua responses: %d\n", total))
  io.write(string.format("Lua non-2xx: %d\n", non2xx))
  io.write(string.format("Lua statuses: %s\n", table.concat(parts, " ")))
  io.write(string.format("Lua socket errors: %d\n", e.connect + e.read + e.write + e.timeout))
end
