"""The family script: a parent job's aggregate, updated from one child event in O(1).

It touches the parent's keys only (its state, history, file, channel and family hash,
all in the parent's hash tag), so it runs in the parent's Redis Cluster slot; the child's
own publish is a separate call in the child's slot (see `family_update.py` for the
order). The parent's events go through the publish script's own code (embedded below as
a function), so `seq`, history, snapshot and the refusal after a terminal event apply.
"""

from __future__ import annotations

from progress_streamer.protocol.scripts import publish_script

# KEYS[1..4] the parent's state hash, history, file hash, channel; KEYS[5] its family hash
# ARGV[1] op: 'child' | 'flush' | 'cancel' | 'cancelled'
# ARGV[2] parent id   ARGV[3] history bound   ARGV[4] TTL seconds
# ARGV[5] largest event bytes   ARGV[6] throttle seconds (parent progress)
# op 'child': ARGV[7] child id, ARGV[8] child seq, ARGV[9] child status,
#   ARGV[10] child percent ('' = none), ARGV[11] child step as JSON ('' = none),
#   ARGV[12] child result as JSON (on success), ARGV[13] child error as JSON ('' = none)
# Returns {what, number, link, revoke, status, percent, step, result, error}:
#   what: 'unknown' (no such family or child), 'dup' (event already applied, or the
#   child had finished), 'same' (nothing the parent shows changed), 'held' (throttled;
#   number = seconds to wait before a 'flush'), 'closed' (the parent has ended; counts
#   kept), 'emitted' (number = the parent event's seq), 'refused' (the publish script
#   refused it), 'cancelling' (op 'cancel': revoke is the unfinished children), or
#   'terminal' (op 'cancel' on an ended parent);
#   link: the parent's own parent ('' = none), to drive next with the fields after it;
#   revoke: children to publish `revoked` for (already counted as revoked).
FAMILY_TEMPLATE = r"""
local function publish_event(KEYS, ARGV)
__PUBLISH__
end
local F = KEYS[5]
local op = ARGV[1]
if redis.call('EXISTS', F) == 0 then return {'unknown', 0, '', {}} end
local now = redis.call('TIME')
local now_s = tonumber(now[1]) + tonumber(now[2]) / 1000000
local h = redis.call('HMGET', F, 'kind', 'ff', 'n', 'p', 'r', 's', 'f', 'v', 'sum', 'shown',
                     'emit_at', 'cancel', 'dirty')
local kind, ff, n = h[1], h[2] == '1', tonumber(h[3])
local cnt = {p = tonumber(h[4]), r = tonumber(h[5]), s = tonumber(h[6]), f = tonumber(h[7]),
             v = tonumber(h[8])}
local sum, shown, emit_at = tonumber(h[9]), tonumber(h[10]), tonumber(h[11]) or 0
local pst = redis.call('HGET', KEYS[1], 'status')
local ttl = tonumber(ARGV[4])
local ended = {s = true, f = true, v = true}
local classes = {pending = 'p', started = 'r', progress = 'r', success = 's', failure = 'f',
                 revoked = 'v'}
local function save()
  redis.call('HSET', F, 'p', cnt.p, 'r', cnt.r, 's', cnt.s, 'f', cnt.f, 'v', cnt.v,
             'sum', sum)
  redis.call('EXPIRE', F, ttl)
end
local function move(cid, oldc, oldp, newc, newp)
  cnt[oldc] = cnt[oldc] - 1
  cnt[newc] = cnt[newc] + 1
  sum = sum + newp - oldp
  redis.call('HSET', F, 'c:' .. cid, newc, 'p:' .. cid, newp)
end
local function ids() return redis.call('HGET', F, 'ids') end
local function unfinished()
  local out = {}
  for cid in string.gmatch(ids(), '[^,]+') do
    if not ended[redis.call('HGET', F, 'c:' .. cid) or 'p'] then out[#out + 1] = cid end
  end
  return out
end
local function mark_revoked(list)
  for _, cid in ipairs(list) do
    local c = redis.call('HMGET', F, 'c:' .. cid, 'p:' .. cid)
    move(cid, c[1] or 'p', tonumber(c[2]) or 0, 'v', 100)
  end
end
local function pct_text(p) return string.format('%.2f', math.min(math.max(p, 0), 100)) end
local function step_json()
  if kind ~= 'chain' then return 'null' end
  local i = math.min(cnt.s + 1, n)
  local t = redis.call('HMGET', F, 't:' .. i, 'name:' .. i)
  if t[1] then return t[1] end
  if t[2] then return cjson.encode(t[2]) end
  return 'null'
end
local function emit(status, pct, message, result, err)
  local step = step_json()
  local tail = '"status":"' .. status .. '","step":' .. step .. ',"percent":' .. pct
    .. ',"current":' .. (cnt.s + cnt.f + cnt.v) .. ',"total":' .. n .. ',"message":'
    .. message .. ',"result":' .. result .. ',"error":' .. err .. ',"data":null,"ts":'
    .. string.format('%.6f', now_s) .. ',"children":{"total":' .. n .. ',"pending":'
    .. cnt.p .. ',"running":' .. cnt.r .. ',"succeeded":' .. cnt.s .. ',"failed":'
    .. cnt.f .. ',"revoked":' .. cnt.v .. '}}'
  local head = '{"job_id":"' .. ARGV[2] .. '",'
  if status == 'success' and #head + #tail + 80 > tonumber(ARGV[5]) then
    local e = cjson.encode({type = 'ResultTooLarge', message =
      'the children\'s results are over the ' .. ARGV[5] .. '-byte event limit'})
    return emit('failure', pct, 'null', 'null', e)
  end
  local reply = publish_event({KEYS[1], KEYS[2], KEYS[3], KEYS[4]},
    {head, tail, status, '', pct, ARGV[3], ARGV[4], '', '', '', ''})
  redis.call('HSET', F, 'emit_at', now_s, 'dirty', 0)
  if tonumber(pct) > shown then
    shown = tonumber(pct)
    redis.call('HSET', F, 'shown', shown)
  end
  if reply[1] ~= 1 then return {'refused', reply[3] or 0, '', {}} end
  pst = status
  local link = redis.call('HGET', KEYS[1], 'parent') or ''
  return {'emitted', reply[2], link, {}, status, pct, step, result, err}
end
local function results()
  local fields = {}
  for i = 1, n do fields[i] = 'r:' .. i end
  local got = redis.call('HMGET', F, unpack(fields))
  for i = 1, n do got[i] = got[i] or 'null' end
  return '{"children":[' .. table.concat(got, ',') .. ']}'
end
local function child_failed(failed, what)
  return cjson.encode({type = 'ChildFailed', message =
    failed .. ' of ' .. n .. ' ' .. what .. ' failed'})
end
-- The parent's end, once its children decide it: status, message, result, error, or nil.
local function verdict()
  local fin = cnt.s + cnt.f + cnt.v
  if kind == 'chain' then
    if cnt.f > 0 then return 'failure', 'null', 'null', redis.call('HGET', F, 'err') end
    if cnt.v > 0 then return 'revoked', '"a link was cancelled"', 'null', 'null' end
    if cnt.s == n then return 'success', 'null', redis.call('HGET', F, 'r:' .. n), 'null' end
    return nil
  end
  local hn, hf, hv, hfin = n, cnt.f, cnt.v, fin
  if kind == 'chord' then
    local cb = redis.call('HGET', F, 'c:' .. redis.call('HGET', F, 'cb')) or 'p'
    if cb == 's' then return 'success', 'null', redis.call('HGET', F, 'r:' .. n), 'null' end
    if cb == 'f' then return 'failure', 'null', 'null', redis.call('HGET', F, 'err') end
    if cb == 'v' then return 'revoked', '"the callback was cancelled"', 'null', 'null' end
    hn = n - 1
    if cb ~= 'p' then hfin = fin end
  end
  if hf > 0 and (ff or hfin >= hn) then
    return 'failure', 'null', 'null', child_failed(hf, 'children')
  end
  if hfin < hn then return nil end
  if hv > 0 then
    return 'revoked', cjson.encode(hv .. ' of ' .. hn .. ' children were cancelled'), 'null',
      'null'
  end
  if kind == 'group' then return 'success', 'null', results(), 'null' end
  return nil
end
local function settle(changed)
  if pst == 'success' or pst == 'failure' or pst == 'revoked' then
    save()
    return {'closed', 0, '', {}}
  end
  if h[12] then save() return {'held', 0, '', {}} end
  local pct = math.max(shown, sum / n)
  local status, message, result, err = verdict()
  if status then
    local revoke = unfinished()
    mark_revoked(revoke)
    save()
    if status == 'success' then pct = 100 end
    if pst == 'pending' and status == 'success' then emit('started', pct_text(pct), 'null',
      'null', 'null') end
    local reply = emit(status, pct_text(pct), message, result, err)
    reply[4] = revoke
    return reply
  end
  save()
  if pst == nil or pst == 'pending' then
    if cnt.p == n then return {'same', 0, '', {}} end
    return emit('started', pct_text(pct), 'null', 'null', 'null')
  end
  if not changed and pct <= shown then return {'same', 0, '', {}} end
  local wait = tonumber(ARGV[6]) - (now_s - emit_at)
  if wait > 0 then
    redis.call('HSET', F, 'dirty', 1)
    return {'held', tostring(wait), '', {}}
  end
  return emit('progress', pct_text(pct), 'null', 'null', 'null')
end
if op == 'flush' then
  if h[13] ~= '1' then return {'same', 0, '', {}} end
  return settle(true)
end
if op == 'cancel' then
  if pst == 'success' or pst == 'failure' or pst == 'revoked' then
    return {'terminal', redis.call('HGET', KEYS[1], 'seq') or 0, '', {}}
  end
  redis.call('HSET', F, 'cancel', now_s)
  return {'cancelling', 0, '', unfinished()}
end
if op == 'cancelled' then
  if pst == 'success' or pst == 'failure' or pst == 'revoked' then
    return {'terminal', redis.call('HGET', KEYS[1], 'seq') or 0, '', {}}
  end
  mark_revoked(unfinished())
  save()
  return emit('revoked', pct_text(math.max(shown, sum / n)), '"cancelled"', 'null', 'null')
end
-- op 'child'
local cid = ARGV[7]
local c = redis.call('HMGET', F, 'i:' .. cid, 's:' .. cid, 'c:' .. cid, 'p:' .. cid)
if not c[1] then return {'unknown', 0, '', {}} end
local seq = tonumber(ARGV[8])
if seq <= (tonumber(c[2]) or 0) then return {'dup', 0, '', {}} end
redis.call('HSET', F, 's:' .. cid, seq)
local oldc, oldp = c[3] or 'p', tonumber(c[4]) or 0
if ended[oldc] then return {'dup', 0, '', {}} end
local newc = classes[ARGV[9]]
local newp = oldp
if ended[newc] then newp = 100
elseif ARGV[10] ~= '' then newp = tonumber(ARGV[10])
elseif ARGV[9] == 'started' then newp = 0 end
local step_changed = false
if ARGV[11] ~= '' and kind == 'chain' then
  step_changed = redis.call('HGET', F, 't:' .. c[1]) ~= ARGV[11]
  redis.call('HSET', F, 't:' .. c[1], ARGV[11])
end
if newc == 's' then redis.call('HSET', F, 'r:' .. c[1], ARGV[12]) end
if newc == 'f' and redis.call('HEXISTS', F, 'err') == 0 then
  redis.call('HSET', F, 'err', ARGV[13] ~= '' and ARGV[13] or 'null')
end
if newc == oldc and newp == oldp and not step_changed then return {'same', 0, '', {}} end
move(cid, oldc, oldp, newc, newp)
return settle(newc ~= oldc or step_changed)
"""


def _embedded_publish(cluster: bool) -> str:
    """The publish script's body as a Lua function body (its `KEYS`/`ARGV` become the
    function's parameters), so a parent's events take exactly the same path."""
    return publish_script(cluster)


FAMILY = FAMILY_TEMPLATE.replace("__PUBLISH__", _embedded_publish(False))
SHARDED_FAMILY = FAMILY_TEMPLATE.replace("__PUBLISH__", _embedded_publish(True))


def family_script(cluster: bool) -> str:
    """The family script for one Redis (`PUBLISH`) or a Redis Cluster (`SPUBLISH`)."""
    return SHARDED_FAMILY if cluster else FAMILY
