-- wrk script: etcd v3 JSON gateway puts with a unique key per request (the peer measurement
-- for API creates). Keys and values are base64, as the gateway wants.
local counter = 0
local limit = tonumber(os.getenv("LIMIT") or "")
local threads = {}

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(data)
  return ((data:gsub(".", function(x)
    local r, b = "", x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return b64chars:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#data % 3 + 1])
end

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  -- With LIMIT set, each thread creates that many, then only asks for health.
  if limit and counter >= limit then return wrk.format("GET", "/health", {}, "") end
  counter = counter + 1
  local key = base64(string.format("/registry/configmaps/default/wrk-%d-%d-%d", os.time(), tid, counter))
  local value = base64('{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":{"k":"v"}}')
  return wrk.format(nil, nil, nil, string.format('{"key":"%s","value":"%s"}', key, value))
end

function done(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("wrk: %d requests, %d errors, %.0f/s, p50 %d us, p99 %d us\n",
    summary.requests, errors, summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99)))
end
