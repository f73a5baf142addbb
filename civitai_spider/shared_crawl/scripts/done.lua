-- done: a walk with nothing in either stream (acknowledged messages are deleted) is over:
-- every chain ended and every image is through. It is marked done, and what only served
-- while it ran (the queued-ids bitmaps, the cursors of the loop check) is deleted.
--
-- KEYS: 1 state (HASH), 2 pages (STREAM), 3 images (STREAM), 4 queued-chunks (SET of the
-- bitmap keys), 5 cursors (SET).
-- ARGV[1], JSON:
--   finished     the time now (seconds, text)
-- Returns 1 if the walk is done (now or before), 0 while work is left.
local state_key, pages_key, images_key = KEYS[1], KEYS[2], KEYS[3]
local chunks_key, cursors_key = KEYS[4], KEYS[5]
local args = cjson.decode(ARGV[1])

if redis.call('HGET', state_key, 'status') == 'done' then return 1 end
if redis.call('XLEN', pages_key) > 0 or redis.call('XLEN', images_key) > 0 then return 0 end
redis.call('HSET', state_key, 'status', 'done', 'finished', args.finished)
for _, key in ipairs(redis.call('SMEMBERS', chunks_key)) do redis.call('DEL', key) end
redis.call('DEL', chunks_key, cursors_key)
return 1
