-- A campaign's number set (worker/campaigns/rows.py): every member the campaign was given, spread over a
-- fixed number of small hashes (`campaign:<name>:n:<bucket>`, field = member, value = a short status) so
-- each stays listpack-encoded (~12 bytes a number instead of ~70 in a hash table). The bucket count is
-- fixed by the first append and kept in the campaign hash (field `buckets`).
-- A member is the number key (digits, see rules.normalize_number) of a row with a derived job id
-- (`<campaign>:<number key>`), or `=<id>` for a row with its own id (`#<sha1 hex, 30>` if over 60 chars).
-- The bucket: a polynomial hash of the member's last 8 bytes (rows.bucket() is the same in Python).

local function number_bucket(member, buckets)
  local n = #member
  local i = n - 7
  if i < 1 then
    i = 1
  end
  local h = 0
  for j = i, n do
    h = (h * 131 + string.byte(member, j)) % 1000003
  end
  return h % buckets
end

local function number_set_key(P, name, member, buckets)
  return P .. 'campaign:' .. name .. ':n:' .. number_bucket(member, buckets)
end
