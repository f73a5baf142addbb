-- finish an image: acknowledge its message and count its outcome, once, even if two workers
-- had it (the second's acknowledgement finds it acknowledged already, and counts nothing).
--
-- KEYS: 1 images (STREAM), 2 stats (HASH).
-- ARGV[1], JSON:
--   message_id   the image's message
--   counts       [stats field]: each is counted once (saved and saved/image, dropped/<reason>...)
-- Returns 1 if this call finished it, 0 if it was finished already.
local images_key, stats_key = KEYS[1], KEYS[2]
local args = cjson.decode(ARGV[1])

if redis.call('XACK', images_key, 'workers', args.message_id) == 1 then
  redis.call('XDEL', images_key, args.message_id)
  for _, field in ipairs(args.counts) do redis.call('HINCRBY', stats_key, field, 1) end
  return 1
end
return 0
