-- wrk script: POST unique alerts (a new dedup key each request) and count answers by status.
-- Env: KEY (bearer), BATCH (alerts per body: 0 = one generic alert to /v1/alerts, N = an
-- Alertmanager body of N alerts to /v1/integrations/alertmanager), FORMAT=alerta (one alert to
-- Alerta's /alert instead, the baseline of bench/intake.py --alerta).
local threads = {}
local counter = 0
local batch = tonumber(os.getenv("BATCH") or "0")
local key = os.getenv("KEY") or ""
local alerta = os.getenv("FORMAT") == "alerta"

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  ok, shed, other = 0, 0, 0
end

local function generic()
  counter = counter + 1
  return string.format(
    '{"dedup_key":"wrk-%d-%d-%d","status":"firing","title":"disk 95%% full on db-%d","severity":"critical","service":"payments-db"}',
    id, math.random(1, 2000000000), counter, counter % 50)
end

local function alertmanager()
  counter = counter + 1
  local alerts = {}
  for j = 1, batch do
    alerts[j] = string.format(
      '{"status":"firing","labels":{"alertname":"Bench","n":"%d-%d-%d","severity":"warning"},"annotations":{"summary":"bench"},"startsAt":"2026-03-01T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","fingerprint":"fp-%d-%d-%d-%d"}',
      id, counter, j, id, math.random(1, 2000000000), counter, j)
  end
  return '{"version":"4","status":"firing","receiver":"opsledger","groupLabels":{},"commonLabels":{"job":"bench"},"commonAnnotations":{},"alerts":[' .. table.concat(alerts, ",") .. ']}'
end

-- Resource and event are new on every request, so Alerta creates an alert each time (a repeat
-- would only bump a duplicate count). The environment must be one of Alerta's default
-- ALLOWED_ENVIRONMENTS, or its reject plugin refuses the alert.
local function alerta_alert()
  counter = counter + 1
  local unique = string.format("%d-%d-%d", id, math.random(1, 2000000000), counter)
  return string.format(
    '{"resource":"db-%s","event":"DiskFull-%s","environment":"Production","service":["payments-db"],"severity":"critical","text":"disk 95%% full"}',
    unique, unique)
end

function request()
  if alerta then
    return wrk.format("POST", "/alert", {["Content-Type"] = "application/json"}, alerta_alert())
  end
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}
  if batch > 0 then
    return wrk.format("POST", "/v1/integrations/alertmanager", headers, alertmanager())
  end
  return wrk.format("POST", "/v1/alerts", headers, generic())
end

function response(status, headers, body)
  -- Alerta answers 202 for an alert it accepted but suppressed (blackout): only 201 counts there.
  if (alerta and status == 201) or (not alerta and status >= 200 and status < 300) then ok = ok + 1
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
