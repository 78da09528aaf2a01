-- Appended to every wrk script of scripts/bench-anchors.sh: at the end of a run, one line
-- `ANCHOR_JSON {...}` with the totals and the latency percentiles (microseconds), which
-- scripts/bench_anchors.py reads instead of wrk's human-readable summary.
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'ANCHOR_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,'
         .. '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,'
         .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"mean_us":%.1f,"max_us":%d}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
      e.status, e.timeout, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9), latency.mean, latency.max))
end
