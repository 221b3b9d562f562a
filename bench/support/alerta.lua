-- wrk script for the Alerta baseline: POST one alert per request to Alerta's /alert and count answers
-- by status. Resource and event are new on every request, so Alerta creates an alert each time
-- (a repeat would only bump a duplicate count). Only 201 (created) counts as ok: 202 means
-- accepted but suppressed (blackout). Prints the same RESULT line as alerts.lua.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  ok, shed, other = 0, 0, 0
end

function request()
  counter = counter + 1
  local unique = string.format("%d-%d-%d", id, math.random(1, 2000000000), counter)
  -- environment must be one of Alerta's default ALLOWED_ENVIRONMENTS, or its reject plugin refuses the alert
  local body = string.format(
    '{"resource":"db-%s","event":"DiskFull-%s","environment":"Production","service":["payments-db"],"severity":"critical","text":"disk 95%% full"}',
    unique, unique)
  return wrk.format("POST", "/alert", {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  if status == 201 then ok = ok + 1
  elseif status == 503 then shed = shed + 1
  else other = other + 1 end
end

function done(summary, latency, requests)
  local t_ok, t_shed, t_other = 0, 0, 0
  for _, thread in ipairs(threads) do
    t_ok = t_ok + thread:get("ok")
    t_shed = t_shed + thread:get("shed")
    t_other = t_other + thread:get("other")
  end
  local seconds = summary.duration / 1e6
  io.write(string.format("RESULT ok=%d shed=%d other=%d seconds=%.3f p50_ms=%.2f p99_ms=%.2f\n",
    t_ok, t_shed, t_other, seconds, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
