-- Shared by every bench/wrk script: collects the threads, and done() prints one JSON line
-- "BENCH_JSON {...}" that bench/run picks up. Status counts come from a thread-global
-- table `counts` when the script defines response() (only the mixed scripts do: parsing
-- every response costs wrk throughput, so the hit scripts leave it out).
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local function pct(latency, p)
   return latency:percentile(p)
end

function done(summary, latency, requests)
   local statuses, xcache = {}, {}
   for _, t in ipairs(threads) do
      local c = t:get("counts")
      if c then for k, v in pairs(c) do statuses[k] = (statuses[k] or 0) + v end end
      local x = t:get("xcache")
      if x then for k, v in pairs(x) do xcache[k] = (xcache[k] or 0) + v end end
   end
   local function obj(t)
      local parts = {}
      for k, v in pairs(t) do parts[#parts + 1] = string.format('"%s":%d', tostring(k), v) end
      return "{" .. table.concat(parts, ",") .. "}"
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d},' ..
      '"statuses":%s,"xcache":%s}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, pct(latency, 50), pct(latency, 90), pct(latency, 99), pct(latency, 99.9), latency.max,
      obj(statuses), obj(xcache)))
end
