-- wrk script: plain GET (the URL given to wrk), then print one RESULT line.
wrk.method = "GET"

-- requests, duration (us), p50 (us), p99 (us), errors (connect+read+write+status+timeout)
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %.0f %.0f %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
