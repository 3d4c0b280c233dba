"""The Lua scripts that own a job's state in Redis; each touches one job's keys only.

Every write to a job goes through `PUBLISH`, so ordering, refusal after a terminal event
and `seq` assignment happen in one atomic round trip, whichever process publishes.
"""

from __future__ import annotations

from progress_streamer.protocol.incarnation import state_lost_tail_prefix

# Publish one event.
# KEYS[1] state hash (seq, status, attempt, percent, lease, epoch, event, lost, parent)
# KEYS[2] history list, KEYS[3] attached-file hash, KEYS[4] the job's pub/sub channel
# ARGV[1] JSON head `{"job_id":"<id>",`   ARGV[2] JSON tail `"status":...}`
# ARGV[3] status   ARGV[4] attempt ('' = the job's current one; for `started`, a minimum)
# ARGV[5] percent ('' = none)   ARGV[6] history bound   ARGV[7] TTL seconds
# ARGV[8] condition: '' ; 'lease_expired' (the sweeper: only if the worker's lease ran
#   out) ; 'lost' (a stream reports that the incarnation ARGV[10] it saw is gone: publish
#   nothing of ARGV[1..2], only the loss)
# ARGV[9] lease seconds to grant the running attempt ('' = leave the lease alone)
# ARGV[10] the epoch the publisher saw ('' = none), ARGV[11] the last seq it saw ('' = 0)
# ARGV[12] the publish's idempotency token ('' = none: one Redis, where redis-py does not
#   resend; publisher.py sends one on a cluster): the state's field `tokens` keeps
#   the last four accepted tokens with their answers ("<token> <seq> <attempt> <epoch>;"),
#   so a publish sent again (a client's retry across a failover or a lost reply) gets
#   its first answer back (and the parent, so the caller updates it then) and never
#   bumps `seq` or `attempt` twice.
# Returns {1, seq, attempt, epoch, parent} when accepted (parent: the state's `parent`
# field, the job's parent job id, '' = none: family_update.py), {0, reason, seq} when refused.
# The last call publishes on the job's channel: PUBLISH on one Redis, SPUBLISH (sharded
# pub/sub, Redis >= 7) on a cluster: `publish_script(cluster)`.
# The loss wins (protocol/incarnation.py): when the state the publisher saw is gone, or a
# stream marked the job lost, the script stores a `StateLost` failure instead and
# refuses with 'state_lost'; with the state gone, a 'lost' report only marks the job
# (field `lost`: the highest seq known lost), so it answers 404 until published again.
PUBLISH_TEMPLATE = r"""
local st = redis.call('HMGET', KEYS[1], 'seq', 'status', 'attempt', 'percent', 'lease',
                      'epoch', 'lost', 'parent')
local token = ARGV[12] or ''  -- none from the family script's embedded call
local tokens = false
if token ~= '' then
  tokens = redis.call('HGET', KEYS[1], 'tokens')
  local at = tokens and string.find(tokens, token .. ' ', 1, true)
  if at then
    local s, a, e = string.match(tokens, '^(%d+) (%d+) (%d+);', at + #token + 1)
    return {1, tonumber(s), tonumber(a), e, st[8] or ''}
  end
end
local seq = tonumber(st[1]) or 0
local cur = st[2]
local cur_attempt = tonumber(st[3]) or 0
local epoch = st[6] or '0'
local status = ARGV[3]
local terminal = {success=true, failure=true, revoked=true}
local now = redis.call('TIME')
local now_s = tonumber(now[1]) + tonumber(now[2]) / 1000000
local function write(s, e, stat, att, tail)
  local event = ARGV[1] .. '"seq":' .. s .. ',"epoch":' .. e .. ',"attempt":' .. att .. ','
                .. tail
  redis.call('HSET', KEYS[1], 'seq', s, 'status', stat, 'attempt', att, 'epoch', e,
             'event', event)
  redis.call('RPUSH', KEYS[2], event)
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[6]), -1)
  local ttl = tonumber(ARGV[7])
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('EXPIRE', KEYS[3], ttl)
  redis.call('__PUBLISH__', KEYS[4], event)
end
local function lose()
  if cur and terminal[cur] then return {0, 'terminal', seq} end
  local tail = [==[__STATE_LOST_TAIL__]==] .. string.format('%.6f', now_s) .. '}'
  local lost = math.max(tonumber(st[7]) or 0, tonumber(ARGV[11]) or 0)
  if st[1] then
    seq = seq + 1
    write(seq, epoch, 'failure', math.max(cur_attempt, 1), tail)
  elseif ARGV[8] == 'lost' then
    redis.call('HSET', KEYS[1], 'lost', lost)
    redis.call('EXPIRE', KEYS[1], tonumber(ARGV[7]))
    return {0, 'state_lost', 0}
  else
    seq = lost + 1
    write(seq, now[1] .. string.format('%06d', tonumber(now[2])), 'failure',
          tonumber(ARGV[4]) or 1, tail)
  end
  redis.call('HDEL', KEYS[1], 'lease', 'percent', 'lost')
  return {0, 'state_lost', seq}
end
if ARGV[10] ~= '' and (not st[1] or epoch ~= ARGV[10]) then return lose() end
if not st[1] and st[7] then return lose() end
if ARGV[8] == 'lost' then return {0, 'not_lost', seq} end
if cur and terminal[cur] then return {0, 'terminal', seq} end
if ARGV[8] == 'lease_expired' then
  local lease = tonumber(st[5])
  if not lease or lease > now_s then return {0, 'lease_active', seq} end
end
local allowed = {
  pending = {started=true, failure=true, revoked=true},
  started = {started=true, progress=true, success=true, failure=true, revoked=true},
  progress = {started=true, progress=true, success=true, failure=true, revoked=true},
}
if cur and not allowed[cur][status] then return {0, 'illegal_transition', seq} end
local asked = tonumber(ARGV[4])
local attempt = cur_attempt
if status == 'started' then
  if cur == 'started' or cur == 'progress' then attempt = cur_attempt + 1 end
  if asked and asked > attempt then attempt = asked end
  if attempt < 1 then attempt = 1 end
elseif asked then
  if cur and asked ~= cur_attempt then return {0, 'stale_attempt', seq} end
  attempt = asked
end
if attempt < 1 then attempt = 1 end
local percent = tonumber(ARGV[5])
if status == 'progress' and percent and st[4] and cur_attempt == attempt
   and tonumber(st[4]) > percent then
  return {0, 'percent_decreased', seq}
end
if not st[1] then epoch = now[1] .. string.format('%06d', tonumber(now[2])) end
seq = seq + 1
write(seq, epoch, status, attempt, ARGV[2])
if status == 'started' then redis.call('HDEL', KEYS[1], 'percent') end
if percent then redis.call('HSET', KEYS[1], 'percent', ARGV[5]) end
if terminal[status] then
  redis.call('HDEL', KEYS[1], 'lease')
elseif ARGV[9] ~= '' then
  redis.call('HSET', KEYS[1], 'lease', now_s + tonumber(ARGV[9]))
end
if token ~= '' then
  local kept = token .. ' ' .. seq .. ' ' .. attempt .. ' ' .. epoch .. ';' .. (tokens or '')
  redis.call('HSET', KEYS[1], 'tokens', string.match(kept, '^[^;]*;[^;]*;[^;]*;[^;]*;') or kept)
end
return {1, seq, attempt, epoch, st[8] or ''}
"""
_PUBLISH = PUBLISH_TEMPLATE.replace("__STATE_LOST_TAIL__", state_lost_tail_prefix())
PUBLISH = _PUBLISH.replace("__PUBLISH__", "PUBLISH")  # one Redis (the embedded 6.2 too)
SHARDED_PUBLISH = _PUBLISH.replace("__PUBLISH__", "SPUBLISH")  # a Redis Cluster (>= 7.0)


def publish_script(cluster: bool) -> str:
    """The publish script for one Redis (`PUBLISH`) or a Redis Cluster (`SPUBLISH`)."""
    return SHARDED_PUBLISH if cluster else PUBLISH


# Read what a client needs to catch up, atomically with respect to publishes.
# KEYS[1] state hash, KEYS[2] history list
# ARGV[1] the client's last seen seq (-1: none, give the snapshot)
# Returns {} for an unknown job, else {seq, status, mode, snapshot, events, epoch}:
# mode 'since' with the retained events after ARGV[1] (maybe none), or mode 'snapshot'
# when ARGV[1] is -1, older than the history or ahead of the job. seq is -1 when the
# state's seq is not a number (state this service did not write). epoch is the state's
# (its identity: protocol/incarnation.py), '0' for a state from before epochs.
READ_SINCE = r"""
local st = redis.call('HMGET', KEYS[1], 'seq', 'status', 'event', 'epoch')
if not st[1] then return {} end
local seq = tonumber(st[1])
local epoch = st[4] or '0'
if not seq then return {-1, '', 'snapshot', '', {}, epoch} end
local after = tonumber(ARGV[1])
if after < 0 or after > seq then return {seq, st[2], 'snapshot', st[3], {}, epoch} end
if after == seq then return {seq, st[2], 'since', st[3], {}, epoch} end
local first = seq - redis.call('LLEN', KEYS[2]) + 1
if after + 1 < first then return {seq, st[2], 'snapshot', st[3], {}, epoch} end
local events = redis.call('LRANGE', KEYS[2], after + 1 - first, -1)
return {seq, st[2], 'since', st[3], events, epoch}
"""

# Extend the running attempt's lease (the worker's heartbeat).
# KEYS[1] state hash   ARGV[1] attempt   ARGV[2] lease seconds
# Returns the new deadline (UNIX seconds, as a string), or false when the job is
# finished, gone, or running another attempt (the caller then stops its heartbeat).
TOUCH_LEASE = r"""
local st = redis.call('HMGET', KEYS[1], 'status', 'attempt')
if not st[1] then return false end
if st[1] == 'success' or st[1] == 'failure' or st[1] == 'revoked' then return false end
if tonumber(st[2]) ~= tonumber(ARGV[1]) then return false end
local now = redis.call('TIME')
local deadline = tonumber(now[1]) + tonumber(now[2]) / 1000000 + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'lease', deadline)
return tostring(deadline)
"""

# Write fields of one hash and give it a TTL, atomically (a MULTI/EXEC of DEL, HSET and
# EXPIRE before, which a Redis Cluster client cannot send; a script can, on one slot).
# KEYS[1] the hash   ARGV[1] TTL seconds   ARGV[2] '1': replace the hash, '0': add to it
# ARGV[3], ARGV[4], ...: field, value, field, value...
# Returns the number of fields written.
WRITE_HASH = r"""
if ARGV[2] == '1' then redis.call('DEL', KEYS[1]) end
local n = 0
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  n = n + 1
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return n
"""


def write_hash_args(
    ttl: int, mapping: dict[str, str | bytes | int], *, replace: bool
) -> list[str | bytes | int]:
    """WRITE_HASH's ARGV for `mapping`."""
    args: list[str | bytes | int] = [ttl, "1" if replace else "0"]
    for field, value in mapping.items():
        args += [field, value]
    return args
