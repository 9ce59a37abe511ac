-- Zipf-distributed chart requests over BENCH_SYMBOLS domestic symbols (6-digit codes) and a
-- list of ranges, spread over several users. Environment:
--   BENCH_SYMBOLS (2000), BENCH_ZIPF_S (1.0), BENCH_SEED,
--   BENCH_RANGES  query strings separated by "|" (an empty one = the default range),
--   BENCH_USERS   "jwt token" pairs separated by "\n", BENCH_ORIGIN.
-- Counts statuses and X-Cache values (response() parses every response: the mixed
-- scenarios are bounded by the upstream, not by wrk).
dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")

counts, xcache = {}, {}
local symbols, cdf, ranges, users = {}, {}, {}, {}
local origin = os.getenv("BENCH_ORIGIN")

local n = tonumber(os.getenv("BENCH_SYMBOLS") or "2000")
local s = tonumber(os.getenv("BENCH_ZIPF_S") or "1.0")
-- rank 1 is 005930; the others are distinct 6-digit codes (7919 is prime to 900000),
-- never 000000 or 9999xx (unknown to the simulator).
symbols[1] = "005930"
for i = 2, n do symbols[i] = string.format("%06d", (i * 7919) % 900000 + 1000) end
local total = 0
for i = 1, n do total = total + 1 / (i ^ s); cdf[i] = total end
for i = 1, n do cdf[i] = cdf[i] / total end
for r in string.gmatch((os.getenv("BENCH_RANGES") or "") .. "|", "([^|]*)|") do
   ranges[#ranges + 1] = (r == "") and "" or ("?" .. r)
end
for line in string.gmatch(os.getenv("BENCH_USERS") or "", "[^\n]+") do
   local jwt, tok = string.match(line, "^(%S+)%s+(%S+)$")
   if jwt then
      local h = { ["Authorization"] = "Bearer " .. jwt, ["X-KIS-Token"] = tok }
      if origin and origin ~= "" then h["Origin"] = origin end
      users[#users + 1] = h
   end
end

local function zipf()
   local u = math.random()
   local lo, hi = 1, n
   while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if cdf[mid] < u then lo = mid + 1 else hi = mid end
   end
   return lo
end

local thread_no = 0
function init(args)
   math.randomseed(tonumber(os.getenv("BENCH_SEED") or "42"))
end

function request()
   local path = "/domestic/chart/daily/" .. symbols[zipf()] .. ranges[math.random(#ranges)]
   return wrk.format("GET", path, users[math.random(#users)])
end

function response(status, headers, body)
   counts[status] = (counts[status] or 0) + 1
   local x = headers["X-Cache"] or headers["x-cache"] or "none"
   xcache[x] = (xcache[x] or 0) + 1
end
