-- Release the refresh lock only if we still own it (it may have expired and been taken over).
-- KEYS[1] lock key; ARGV[1] owner id
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
