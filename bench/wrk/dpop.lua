-- wrk script for the benchmark's DPoP rows (RFC 9449): every request carries the one
-- DPoP-bound token as "Authorization: DPoP ..." and the next unused proof as "DPoP: ...".
-- Arguments (after `--`): TOKEN_FILE PROOFS_FILE OFFSET PATH
--   TOKEN_FILE: the bound token (first line).
--   PROOFS_FILE: one proof per line (bench/gen_dpop.py), each single-use.
--   OFFSET: byte offset of the first proof this run may use (the harness passes the previous
--           run's "proof_next", so warm-up and repetitions never reuse a proof).
--   PATH: request path (the proofs' htu must name it).
-- Proofs are read from the file as requests are made (a line read and one string
-- concatenation per request; the 1M-line file is never held in memory). When the file runs
-- out, requests go without a proof: the sidecar answers 401, wrk counts a non-2xx and the
-- harness marks the row invalid. Needs wrk -t1 (one Lua state reading the file).
-- done() prints the same "BENCHJSON {...}" line as bench.lua, plus the proof cursor.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  if #threads > 1 then
    error("dpop.lua needs wrk -t1: one thread reads the proof file")
  end
end

local f
local head, tail, noproof
used = 0          -- proofs taken from the file by this run (thread globals, read in done())
exhausted = 0     -- requests made after the file ran out
pos = 0           -- byte offset after the last proof taken

function init(args)
  local tokfile, prooffile, offset, path = args[1], args[2], tonumber(args[3] or "0"), args[4] or "/api/bench"
  local tf = assert(io.open(tokfile, "r"))
  local token = tf:read("*l")
  tf:close()
  f = assert(io.open(prooffile, "r"))
  f:seek("set", offset)
  pos = offset
  -- the same request wrk.format builds for the other rows, split around the proof
  local marker = "\1PROOF\1"
  local req = wrk.format("GET", path, { ["Authorization"] = "DPoP " .. token, ["DPoP"] = marker })
  local a, b = req:find(marker, 1, true)
  head, tail = req:sub(1, a - 1), req:sub(b + 1)
  noproof = wrk.format("GET", path, { ["Authorization"] = "DPoP " .. token })
end

function request()
  local line = f:read("*l")
  if line == nil or #line == 0 then
    exhausted = exhausted + 1
    return noproof
  end
  used = used + 1
  pos = pos + #line + 1  -- lines end in "\n" (gen_dpop.py writes no "\r")
  return head .. line .. tail
end

function done(summary, latency, requests)
  local t = threads[1]  -- the thread's globals: its Lua state is not this one
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f,"proofs_used":%d,"proofs_exhausted":%d,"proof_next":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, t:get("used"), t:get("exhausted"), t:get("pos")))
end
