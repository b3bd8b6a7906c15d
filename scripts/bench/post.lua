-- wrk script: POST a JSON body with a credential header, then print one RESULT line.
--   BENCH_BODY         file holding the request body
--   BENCH_AUTH_HEADER  header name (default "Authorization")
--   BENCH_AUTH_VALUE   its value (e.g. "Bearer kt_..." or an OpenBao token)
local f = assert(io.open(assert(os.getenv("BENCH_BODY"), "BENCH_BODY is not set"), "rb"))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers[os.getenv("BENCH_AUTH_HEADER") or "Authorization"] = os.getenv("BENCH_AUTH_VALUE")

-- requests, duration (us), p50 (us), p99 (us), errors (connect+read+write+status+timeout)
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %.0f %.0f %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
