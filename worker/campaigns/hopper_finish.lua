-- The hopper is done with a chunk it took (every row materialised, or skipped as done before).
-- KEYS[1] the campaign's taken chunks (hash, see hopper_take.lua)
-- ARGV[1] the take's token
-- Returns 1, or 0 when the chunk was no longer this take's (its lease ran out and another hopper took it:
-- that one finishes it; the rows are materialised once either way).
return redis.call('HDEL', KEYS[1], ARGV[1])
