-- One fixed request for every connection: method, path and headers from the environment
-- (BENCH_METHOD, BENCH_PATH, BENCH_HEADERS = "Name: value" lines separated by "\n").
-- No request() or response() function, so wrk sends a pre-built request: the fastest
-- client loop it has, used for kisgw and for the nginx anchors alike.
dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")

wrk.method = os.getenv("BENCH_METHOD") or "GET"
wrk.path = os.getenv("BENCH_PATH") or "/"
for line in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^\n]+") do
   local name, value = string.match(line, "^([^:]+):%s*(.*)$")
   if name then wrk.headers[name] = value end
end
