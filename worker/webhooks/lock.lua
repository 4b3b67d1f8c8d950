-- Take or keep the intake lock: KEYS[1] the lock, ARGV[1] the caller's token, ARGV[2] its life in ms.
-- Returns 1 when the caller holds it (now for ARGV[2] ms more), else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
