"""The durable records of background jobs in Redis: JobQueue's table (jobs.py) as one hash per (kind, project, key),
with the same fields and semantics, each change one Lua script (atomic, whichever process or machine runs it).

Indexes: ``{prefix}:jobs:updated`` (GET /jobs order) and one sorted set per status (pending scored by next_run,
running by claimed_at: the sweep finds due and stale jobs without scanning). ``wakeup``/``wakeup_at`` remember the
last wake-up sent to a worker (rq_jobs.py), so that sweeping workers do not flood the queues with duplicates.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis

from .jobs import Job, backoff_delay
from .redis_state import DEFAULT_PREFIX, key_part

INTS, FLOATS = ("generation", "attempts"), ("next_run", "claimed_at", "updated", "progress")
PUBLIC = ("kind", "project", "key", "status", *INTS, "last_error", *FLOATS, "message")
STATUSES = ("pending", "running", "done", "failed")

# KEYS: record, updated index, pending (score next_run), running (score claimed_at), done, failed. ARGV[1]: now (< 0: Redis TIME).
PROLOGUE = """
local rec = KEYS[1]
local IDX = {pending = KEYS[3], running = KEYS[4], done = KEYS[5], failed = KEYS[6]}
local function clock(v)
  v = tonumber(v)
  if v >= 0 then return v end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local now = clock(ARGV[1])
local function set_status(old, new, score)
  if old and old ~= new then redis.call('ZREM', IDX[old], rec) end
  redis.call('ZADD', IDX[new], score, rec)
  redis.call('HSET', rec, 'status', new)
end
local function touch() redis.call('HSET', rec, 'updated', now); redis.call('ZADD', KEYS[2], now, rec) end
"""
ENQUEUE = PROLOGUE + """
local status = redis.call('HGET', rec, 'status')
local gen = redis.call('HINCRBY', rec, 'generation', 1)
redis.call('HSET', rec, 'payload', ARGV[2], 'kind', ARGV[3], 'project', ARGV[4], 'key', ARGV[5], 'next_run', now)
if not status then redis.call('HSET', rec, 'progress', 0, 'attempts', 0) end
if status ~= 'running' then redis.call('HSET', rec, 'attempts', 0); set_status(status, 'pending', now) end
touch()
return {gen, redis.call('HGET', rec, 'status'), redis.call('HGET', rec, 'wakeup') or ''}
"""
CLAIM = PROLOGUE + """
local r = redis.call('HMGET', rec, 'status', 'next_run', 'claimed_at')
if not ((r[1] == 'pending' and tonumber(r[2]) <= now) or
        (r[1] == 'running' and tonumber(r[3] or 0) < now - tonumber(ARGV[2]))) then return false end
redis.call('HSET', rec, 'claim', ARGV[3], 'claimed_at', now, 'progress', 0)
redis.call('HDEL', rec, 'message')
local attempts = redis.call('HINCRBY', rec, 'attempts', 1)
set_status(r[1], 'running', now)
touch()
return {redis.call('HGET', rec, 'payload'), redis.call('HGET', rec, 'generation'), attempts}
"""
FINISH = PROLOGUE + """
if redis.call('HGET', rec, 'claim') ~= ARGV[2] then return false end
redis.call('HDEL', rec, 'claim', 'last_error')
redis.call('HSET', rec, 'next_run', now)
if redis.call('HGET', rec, 'generation') == ARGV[3] then
  redis.call('HSET', rec, 'progress', 1); set_status('running', 'done', now)
else
  redis.call('HSET', rec, 'progress', 0, 'attempts', 0); set_status('running', 'pending', now)
end
touch()
return redis.call('HGET', rec, 'status')
"""
FAIL = PROLOGUE + """
if redis.call('HGET', rec, 'claim') ~= ARGV[2] then return false end
local delay, status, attempts = tonumber(ARGV[7]), 'pending', ARGV[4]
if redis.call('HGET', rec, 'generation') ~= ARGV[3] then delay, attempts = 0, 0
elseif ARGV[6] == '1' then status = 'failed' end
redis.call('HSET', rec, 'attempts', attempts, 'last_error', ARGV[5], 'next_run', now + delay)
redis.call('HDEL', rec, 'claim')
set_status('running', status, status == 'pending' and now + delay or now)
touch()
return tostring(delay)
"""
RENEW = PROLOGUE + """
if redis.call('HGET', rec, 'claim') ~= ARGV[2] then return 0 end
redis.call('HSET', rec, 'claimed_at', now); redis.call('ZADD', IDX.running, now, rec)
return 1
"""
PROGRESS = PROLOGUE + """
if redis.call('HGET', rec, 'claim') ~= ARGV[2] then return 0 end
redis.call('HSET', rec, 'progress', ARGV[3], 'message', ARGV[4]); touch()
return 1
"""
DISPATCHED = PROLOGUE + "redis.call('HSET', rec, 'wakeup', ARGV[2], 'wakeup_at', now) return 1"
# Due pending records (since next_run) and stale running ones (since claimed_at + lease) that got no wake-up since then,
# or none for `recheck` s: marked now (one sweeper takes each) and returned with their last wake-up's RQ id.
SWEEP = PROLOGUE + """
local lease, recheck, limit, out = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), {}
local function consider(r, since)
  local at = tonumber(redis.call('HGET', r, 'wakeup_at') or '0')
  if at < since or at < now - recheck then
    redis.call('HSET', r, 'wakeup_at', now)
    local f = redis.call('HMGET', r, 'wakeup', 'kind', 'project', 'key')
    table.insert(out, {f[1] or '', f[2], f[3], f[4]})
  end
end
local due = redis.call('ZRANGEBYSCORE', IDX.pending, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #due, 2 do consider(due[i], tonumber(due[i + 1])) end
local stale = redis.call('ZRANGEBYSCORE', IDX.running, '-inf', now - lease, 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #stale, 2 do consider(stale[i], tonumber(stale[i + 1]) + lease) end
return out
"""


def _public(fields: Mapping[str, str]) -> dict:
    out: dict[str, Any] = {name: fields.get(name) for name in PUBLIC}
    for name in INTS:
        out[name] = int(out[name]) if out[name] is not None else None
    for name in FLOATS:
        out[name] = float(out[name]) if out[name] is not None else None
    return out


class RedisJobRecords:
    """The records without the transport: enqueue() reports whether a wake-up is needed, wakeups_due() which records
    need one now. clock: seconds, injected in tests; by default Redis's own clock, the same for every machine."""

    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX, lease_s: float = 60.0, backoff_s: float = 2.0,
                 max_backoff_s: float = 300.0, clock: Callable[[], float] | None = None) -> None:
        if not client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("job records need a Redis client with decode_responses=True")
        self.r, self.prefix, self.clock = client, prefix, clock
        self.lease_s, self.backoff_s, self.max_backoff_s = lease_s, backoff_s, max_backoff_s
        self._index = [f"{prefix}:jobs:{name}" for name in ("updated", *STATUSES)]
        scripts = {"enqueue": ENQUEUE, "claim": CLAIM, "finish": FINISH, "fail": FAIL, "renew": RENEW,
                   "progress": PROGRESS, "dispatched": DISPATCHED, "sweep": SWEEP}
        self._scripts = {name: client.register_script(text) for name, text in scripts.items()}

    def _run(self, script: str, record: str, *args: Any) -> Any:
        now = self.clock() if self.clock is not None else -1.0
        return self._scripts[script](keys=[record, *self._index], args=[now, *args])

    def record_key(self, kind: str, project: str, key: str) -> str:
        return f"{self.prefix}:job:{key_part(kind)}:{key_part(project)}:{key_part(key)}"

    def _job_key(self, job: Job) -> str:
        return self.record_key(job.kind, job.project, job.key)

    def store(self, project: str, key: str, payload: dict, kind: str = "masks") -> tuple[int, str, str]:
        """Store (or replace) the job: (generation, status, last wake-up id); a running job keeps running, reruns after."""
        generation, status, wakeup = self._run("enqueue", self.record_key(kind, str(project), str(key)),
                                               json.dumps(payload), kind, str(project), str(key))
        return int(generation), status, wakeup

    def mark_woken(self, kind: str, project: str, key: str, wakeup: str) -> None:
        self._run("dispatched", self.record_key(kind, project, key), wakeup)

    def wakeups_due(self, limit: int = 500) -> list[tuple[str, str, str, str]]:
        """(last wake-up id, kind, project, key) of due pending and stale running jobs not woken since (or for a lease);
        each is returned to one caller only, which must wake it unless its last wake-up is still waiting."""
        return [tuple(row) for row in self._run("sweep", "", self.lease_s, self.lease_s, limit)]

    def claim(self, kind: str, project: str, key: str) -> Job | None:
        """Take this job if it is due (or its claim outlived the lease), else None (it is done, running or not due)."""
        token = uuid.uuid4().hex
        got = self._run("claim", self.record_key(kind, project, key), self.lease_s, token)
        if got is None:
            return None
        payload, generation, attempts = got
        return Job(kind, project, key, json.loads(payload), int(generation), int(attempts), token)

    def finish(self, job: Job) -> str | None:
        """Done, unless a newer payload arrived meanwhile: then pending again. The new status (None: claim lost)."""
        return self._run("finish", self._job_key(job), job.claim, job.generation)

    def fail(self, job: Job, error: str, permanent: bool = False) -> float:
        """Record the error; due again after a backoff (at once for a newer payload). Returns the delay in seconds."""
        delay = backoff_delay(job.attempts, self.backoff_s, self.max_backoff_s)
        got = self._run("fail", self._job_key(job), job.claim, job.generation, job.attempts, error[:2000],
                        "1" if permanent else "0", delay)
        return 0.0 if got is None else float(got)

    def renew(self, job: Job) -> bool:
        """Heartbeat of a running job; False once its claim was taken over."""
        return bool(self._run("renew", self._job_key(job), job.claim))

    def progress(self, job: Job, fraction: float, message: str = "") -> None:
        self._run("progress", self._job_key(job), job.claim, min(max(float(fraction), 0.0), 1.0), message[:500])

    def get(self, project: str, key: str, kind: str = "masks") -> dict | None:
        """The job's public fields (as JobQueue.get), for /jobs and tests."""
        fields = self.r.hgetall(self.record_key(kind, str(project), str(key)))
        return _public(fields) if fields else None

    def list(self, limit: int = 100) -> list[dict]:
        """The most recently updated jobs first (GET /jobs)."""
        records = self.r.zrevrange(self._index[0], 0, int(limit) - 1)
        with self.r.pipeline(transaction=False) as pipe:
            for record in records:
                pipe.hgetall(record)
            return [_public(fields) for fields in pipe.execute() if fields]

    def counts(self) -> dict[str, int]:
        with self.r.pipeline(transaction=False) as pipe:
            for index in self._index[1:]:
                pipe.zcard(index)
            return {status: n for status, n in zip(STATUSES, pipe.execute()) if n}

    def active(self, kinds: Sequence[str]) -> int:
        """How many jobs of these kinds are pending or running (a burst worker stops at 0)."""
        starts = tuple(self.record_key(kind, "", "")[:-1] for kind in kinds)
        return sum(record.startswith(starts) for index in self._index[1:3] for record in self.r.zrange(index, 0, -1))

    def seconds_to_next(self) -> float | None:
        """Seconds until the next pending job is due (0 if overdue), None when nothing is pending."""
        first = self.r.zrange(self._index[1], 0, 0, withscores=True)
        if not first:
            return None
        if self.clock is not None:
            now = self.clock()
        else:
            seconds, micros = self.r.time()
            now = seconds + micros / 1e6
        return max(0.0, first[0][1] - now)
