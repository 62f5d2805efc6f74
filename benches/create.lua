-- wrk script: POST a ConfigMap with a unique name per request (thread id and counter), with the
-- bearer token from the TOKEN environment variable.
local counter = 0
local limit = tonumber(os.getenv("LIMIT") or "")
local thread_id = 0
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  thread_id = tid
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
end

function request()
  -- With LIMIT set, each thread creates that many, then only asks for health.
  if limit and counter >= limit then return wrk.format("GET", "/healthz", {}, "") end
  counter = counter + 1
  local body = string.format('{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"wrk-%d-%d-%d"},"data":{"k":"v"}}', os.time(), thread_id, counter)
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("wrk: %d requests, %d errors, %.0f/s, p50 %d us, p99 %d us\n",
    summary.requests, errors, summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99)))
end
