-- wrk script for the jwks-sidecar benchmark.
-- Arguments (after `--`): TOKENS_FILE PATH
--   TOKENS_FILE: one JWT per line, sent round-robin as "Authorization: Bearer ..."; "-" sends none.
--   PATH: request path (default /api/bench).
-- Every request is pre-formatted in init(), so per-request Lua work is the same for all rows
-- (with or without tokens, one or 100,000 of them).
-- done() prints one line "BENCHJSON {...}" that bench/harness.py parses.

local reqs = {}
local n = 0
local i = 0

function init(args)
  local file = args[1] or "-"
  local path = args[2] or "/api/bench"
  if file ~= "-" then
    for line in io.lines(file) do
      if #line > 0 then
        n = n + 1
        reqs[n] = wrk.format("GET", path, { ["Authorization"] = "Bearer " .. line })
      end
    end
  end
  if n == 0 then
    n = 1
    reqs[1] = wrk.format("GET", path)
  end
end

function request()
  i = i + 1
  if i > n then i = 1 end
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
