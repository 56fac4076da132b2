-- wrk script for `benchmarks/serving.py --part latency` (issue 16): POST /v1/recommend with
-- top-k for a random MovieLens-100k user ("1".."943").
--
--   wrk -t2 -c8 -d30s --latency -s benchmarks/serving_recommend.lua http://127.0.0.1:PORT \
--       -- POLICY K N_USERS BETA
--
-- POLICY: greedy (default) | ucb | thompson; K: items per request (10); N_USERS: user ids
-- are drawn uniformly from 1..N_USERS (943); BETA: UCB's weight on the std (1.0; sent with
-- policy ucb only). Each wrk thread has its own
-- Lua state, seeded from its thread number. done() prints one line
--   WAGER_RESULT {"requests": .., "duration_s": .., "requests_per_s": .., "p50_ms": .., ...}
-- that the benchmark parses (latencies in milliseconds; errors as wrk counts them, "status"
-- being the responses with a status >= 400).

local counter = 0
local threads = {}

function setup(thread)
   counter = counter + 1
   thread:set("thread_id", counter)
   table.insert(threads, thread)
end

function init(args)
   policy = args[1] or "greedy"
   k = tonumber(args[2] or "10")
   n_users = tonumber(args[3] or "943")
   extra = ""
   if policy == "ucb" then
      extra = string.format(', "beta": %s', args[4] or "1.0")
   end
   math.randomseed(1000 + (thread_id or 0))
   headers = { ["content-type"] = "application/json" }
end

function request()
   local body = string.format(
      '{"user_id": "%d", "k": %d, "policy": "%s"%s}', math.random(1, n_users), k, policy, extra
   )
   return wrk.format("POST", "/v1/recommend", headers, body)
end

function done(summary, latency, requests)
   local seconds = summary.duration / 1e6
   local e = summary.errors
   io.write(string.format(
      'WAGER_RESULT {"requests": %d, "duration_s": %.3f, "requests_per_s": %.1f, '
         .. '"p50_ms": %.3f, "p95_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, '
         .. '"mean_ms": %.3f, "errors": {"connect": %d, "read": %d, "write": %d, '
         .. '"status": %d, "timeout": %d}}\n',
      summary.requests, seconds, summary.requests / seconds,
      latency:percentile(50) / 1e3, latency:percentile(95) / 1e3,
      latency:percentile(99) / 1e3, latency.max / 1e3, latency.mean / 1e3,
      e.connect, e.read, e.write, e.status, e.timeout
   ))
end
