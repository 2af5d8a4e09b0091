-- wrk script of scripts/lib/frozen_postgres.py: POST /api/orders, a fresh Idempotency-Key per request (no retries:
-- each request is judged on its own answer). Each thread appends one line per answer to its own file:
-- "<CLOCK_MONOTONIC seconds> <status> <order id, for a 201> <1 when a 503 carried Retry-After>".
-- Arguments (after --): the folder for those files, a run nonce for the keys.
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } op_timespec;
  int clock_gettime(int clock, op_timespec *spec);
]]
local spec = ffi.new("op_timespec")
local function now()
  ffi.C.clock_gettime(1, spec) -- CLOCK_MONOTONIC, the clock of Python's time.monotonic()
  return tonumber(spec.tv_sec) + tonumber(spec.tv_nsec) / 1e9
end

local body = '{"customerName":"Frozen Database","customerEmail":"frozen@example.com",'
  .. '"items":[{"productName":"Widget","quantity":1,"unitPrice":9.99}]}'
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
end

function init(args)
  out = io.open(args[1] .. "/answers-" .. id .. ".txt", "w")
  nonce = args[2]
  sent = 0
end

function request()
  sent = sent + 1
  return wrk.format("POST", "/api/orders", {
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = "frozen-" .. nonce .. "-" .. id .. "-" .. sent,
  }, body)
end

function response(status, headers, answer)
  local order = "-"
  if status == 201 then order = answer:match('"id"%s*:%s*"([^"]+)"') or "?" end
  local retry = (headers["Retry-After"] or headers["retry-after"]) and 1 or 0
  out:write(string.format("%.6f %d %s %d\n", now(), status, order, retry))
  out:flush()
end

function done(summary, latency, requests)
  io.write(string.format("WRK {\"requests\":%d,\"timeouts\":%d,\"connect_errors\":%d,\"read_errors\":%d,"
    .. "\"write_errors\":%d,\"status_errors\":%d,\"max_latency_us\":%d,\"p50_latency_us\":%d,"
    .. "\"p99_latency_us\":%d,\"duration_us\":%d}\n",
    summary.requests, summary.errors.timeout, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, latency.max, latency:percentile(50), latency:percentile(99), summary.duration))
end
