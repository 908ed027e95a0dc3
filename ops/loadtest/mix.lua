-- wrk script for ops/loadtest/run.sh: a realistic mix over Chronicle's HTTP API with the
-- latency of every route measured on its own.
--
-- Each wrk thread drives ONE connection (run.sh passes -c equal to -t), so its request()
-- and response() calls alternate and the time between them is that request's latency
-- (LuaJIT's ffi reads CLOCK_MONOTONIC). Each thread acts as one user with one agent of its
-- own (read from $LOADTEST_USERS: "<access token> <agent id>" a line) and repeats a cycle:
--
--   create a task, read it, list the user's tasks, lease (the agent), complete the leased
--   task, read it again; every tenth cycle the usage analytics as well.
--
-- done() prints requests/s and p50/p95/p99/max per route and writes the same figures, with
-- every unexpected status, as JSON to $LOADTEST_REPORT.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } chronicle_timespec;
int clock_gettime(int clock_id, chronicle_timespec *tp);
]]
local clock = ffi.new("chronicle_timespec")
local function now_us()
  ffi.C.clock_gettime(1, clock) -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1e6 + tonumber(clock.tv_nsec) / 1e3
end

-- route name, expected status
local ROUTES = {
  create = { "POST /api/tasks", 201 },
  get = { "GET /api/tasks/{id}", 200 },
  list = { "GET /api/tasks", 200 },
  lease = { "POST /api/agents/{id}/lease", 200 },
  complete = { "PATCH /api/tasks/{id}", 200 },
  analytics = { "GET /api/analytics/usage", 200 },
}
local ORDER = { "create", "get", "list", "lease", "complete", "analytics" }

-- setup() runs in the main script state, once per thread.
local threads = {}
local accounts = nil
function setup(thread)
  if not accounts then
    accounts = {}
    local path = os.getenv("LOADTEST_USERS") or error("LOADTEST_USERS is not set")
    for line in io.lines(path) do
      local token, agent = line:match("^(%S+)%s+(%S+)$")
      if token then
        accounts[#accounts + 1] = { token, agent }
      end
    end
    assert(#accounts > 0, "no accounts in " .. path)
  end
  local account = accounts[#threads % #accounts + 1]
  thread:set("token", account[1])
  thread:set("agent", account[2])
  threads[#threads + 1] = thread
end

-- Per thread, globals so that done() can read them with thread:get, and flat (wrk's copy
-- of a nested table crashes): lat_<step> = { microseconds, ... }, st_<step> = { [status] =
-- count }, un_<step> = the first unexpected answer (status and the start of the body).

local plan = {}
local cycle = 0
local step, started, path
local previous = "none"
local task_id, leased_id, lease_id

local function new_cycle()
  cycle = cycle + 1
  plan = { "create", "get", "list", "lease", "complete", "get" }
  if cycle % 10 == 0 then
    plan[#plan + 1] = "analytics"
  end
end

function init(args)
  wrk.headers["Authorization"] = "Bearer " .. token
  wrk.headers["Content-Type"] = "application/json"
  for _, name in ipairs(ORDER) do
    _G["lat_" .. name] = {}
    _G["st_" .. name] = {}
  end
end

function request()
  while true do
    if #plan == 0 then
      new_cycle()
    end
    previous = step or "none"
    step = table.remove(plan, 1)
    -- Nothing leased (the queue was empty): no complete. No task yet: no read (wrk builds
    -- one request per thread before the connection's first, and never sends it).
    if (step ~= "complete" or lease_id) and (step ~= "get" or task_id) then
      break
    end
  end
  local r
  if step == "create" then
    r = wrk.format("POST", "/api/tasks", nil,
      string.format('{"capability":"load.work","input":{"cycle":%d},"tags":["load"]}', cycle))
  elseif step == "get" then
    r = wrk.format("GET", "/api/tasks/" .. (task_id or "missing"), nil, nil)
  elseif step == "list" then
    r = wrk.format("GET", "/api/tasks?limit=20", nil, nil)
  elseif step == "lease" then
    r = wrk.format("POST", "/api/agents/" .. agent .. "/lease", nil, '{"max_tasks":1,"wait_secs":0}')
  elseif step == "complete" then
    r = wrk.format("PATCH", "/api/tasks/" .. leased_id, nil,
      string.format('{"status":"succeeded","lease_id":"%s","output":{"ok":true}}', lease_id))
    task_id = leased_id
    lease_id, leased_id = nil, nil
  else
    r = wrk.format("GET", "/api/analytics/usage?group_by=capability", nil, nil)
  end
  path = r:match("^%S+ (%S+)")
  started = now_us()
  return r
end

function response(status, headers, body)
  local took = now_us() - started
  local samples = _G["lat_" .. step]
  samples[#samples + 1] = took
  local counts = _G["st_" .. step]
  counts[status] = (counts[status] or 0) + 1
  if status ~= ROUTES[step][2] then
    if not _G["un_" .. step] then
      _G["un_" .. step] = string.format("%d on %s (after %s, cycle %d): %s", status, path,
        previous, cycle, string.sub(body or "", 1, 300))
    end
    return
  end
  if step == "create" then
    task_id = body:match('[{,]"id":"([%x%-]+)"')
  elseif step == "lease" then
    local first = body:match('"tasks":%[(.*)$')
    if first and first:sub(1, 1) == "{" then
      leased_id = first:match('[{,]"id":"([%x%-]+)"')
      lease_id = first:match('"lease_id":"([%x%-]+)"')
    end
  end
end

local function percentile(sorted, p)
  if #sorted == 0 then
    return 0
  end
  local index = math.ceil(p * #sorted)
  if index < 1 then
    index = 1
  end
  return sorted[index]
end

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local merged, counts, firsts = {}, {}, {}
  for _, name in ipairs(ORDER) do
    merged[name], counts[name] = {}, {}
  end
  for _, thread in ipairs(threads) do
    for _, name in ipairs(ORDER) do
      local into = merged[name]
      for _, v in ipairs(thread:get("lat_" .. name) or {}) do
        into[#into + 1] = v
      end
      for status, n in pairs(thread:get("st_" .. name) or {}) do
        counts[name][status] = (counts[name][status] or 0) + n
      end
      local first = thread:get("un_" .. name)
      if first and not firsts[name] then
        firsts[name] = first
      end
    end
  end
  local all, report = {}, {}
  io.write(string.format("\n%-30s %9s %9s %9s %9s %9s %9s %6s\n",
    "route", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "bad"))
  for _, name in ipairs(ORDER) do
    local samples = merged[name]
    table.sort(samples)
    for _, v in ipairs(samples) do
      all[#all + 1] = v
    end
    local bad = 0
    for status, n in pairs(counts[name]) do
      if status ~= ROUTES[name][2] then
        bad = bad + n
      end
    end
    local row = {
      route = ROUTES[name][1], requests = #samples, rps = #samples / seconds,
      p50 = percentile(samples, 0.50) / 1e3, p95 = percentile(samples, 0.95) / 1e3,
      p99 = percentile(samples, 0.99) / 1e3, max = (samples[#samples] or 0) / 1e3,
      unexpected = bad, first_unexpected = firsts[name] or "",
    }
    report[#report + 1] = row
    io.write(string.format("%-30s %9d %9.1f %9.2f %9.2f %9.2f %9.2f %6d\n", row.route, row.requests,
      row.rps, row.p50, row.p95, row.p99, row.max, row.unexpected))
  end
  table.sort(all)
  local total = {
    requests = #all, rps = #all / seconds, p50 = percentile(all, 0.50) / 1e3,
    p95 = percentile(all, 0.95) / 1e3, p99 = percentile(all, 0.99) / 1e3,
    max = (all[#all] or 0) / 1e3,
  }
  io.write(string.format("%-30s %9d %9.1f %9.2f %9.2f %9.2f %9.2f\n", "all", total.requests,
    total.rps, total.p50, total.p95, total.p99, total.max))
  local errors = summary.errors
  io.write(string.format("socket errors: connect %d, read %d, write %d, timeout %d\n",
    errors.connect, errors.read, errors.write, errors.timeout))
  for _, name in ipairs(ORDER) do
    if firsts[name] then
      io.write(string.format("unexpected answer on %s: %s\n", ROUTES[name][1], firsts[name]))
    end
  end
  local path = os.getenv("LOADTEST_REPORT")
  if path then
    local rows = {}
    for _, row in ipairs(report) do
      rows[#rows + 1] = string.format(
        '{"route":%s,"requests":%d,"rps":%.3f,"p50_ms":%.3f,"p95_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,"unexpected":%d,"first_unexpected":%s}',
        json_string(row.route), row.requests, row.rps, row.p50, row.p95, row.p99, row.max,
        row.unexpected, json_string(row.first_unexpected))
    end
    local file = assert(io.open(path, "w"))
    file:write(string.format(
      '{"seconds":%.3f,"connections":%d,"routes":[%s],"total":{"requests":%d,"rps":%.3f,"p50_ms":%.3f,"p95_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f},"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d}}\n',
      seconds, #threads, table.concat(rows, ","), total.requests, total.rps, total.p50, total.p95,
      total.p99, total.max, errors.connect, errors.read, errors.write, errors.timeout))
    file:close()
  end
end
