-- hand on: a page's images are queued (each id once per walk, crawl-wide), the chain's next
-- page goes into the pages stream (or the chain ends), the page is acknowledged and counted.
-- Nothing is done if the chain is no longer at the page's step: the page was taken over by
-- another worker meanwhile, which hands it on (so that a chain never forks).
--
-- KEYS: 1 chains (HASH), 2 pages (STREAM), 3 images (STREAM), 4 stats (HASH), 5 cursors (SET),
-- 6 queued-chunks (SET of the bitmap keys below), 7... the queued-ids bitmaps the images fall in.
-- ARGV[1], JSON ("" for a text field that has no value):
--   message_id   the page's message
--   chain, step  its chain and step (the chain's pages handed on before it)
--   next_url     the chain's next page; "" when it ends with this page
--   cursor_key   what the loop check remembers of the next page ("" for none)
--   end_reason   how the chain ends with this page ("" while it goes on)
--   loop_end     the end of a chain whose cursor came back (outcomes.CURSOR_LOOP)
--   streak, full the next page's message fields: the chain's streak, whether this page was full
--   counts       {stats field: count} of the page
--   images       [{key, bit, record}]: the index in KEYS of the image's bitmap, its bit there,
--                and the record (the API's JSON) to queue
-- Returns {1 if handed on else 0, images queued, duplicates, the chain's end or ""}.
local chains_key, pages_key, images_key = KEYS[1], KEYS[2], KEYS[3]
local stats_key, cursors_key, chunks_key = KEYS[4], KEYS[5], KEYS[6]
local args = cjson.decode(ARGV[1])

local raw = redis.call('HGET', chains_key, args.chain)
if not raw then return {0, 0, 0, ''} end
local chain = cjson.decode(raw)
if chain['end'] or chain.pages ~= args.step then return {0, 0, 0, ''} end
local ending = args.end_reason
if ending == '' and args.cursor_key ~= ''
    and redis.call('SADD', cursors_key, args.chain .. '\n' .. args.cursor_key) == 0 then
  ending = args.loop_end
end
local queued, duplicates = 0, 0
for _, image in ipairs(args.images) do
  if redis.call('SETBIT', KEYS[image.key], image.bit, 1) == 0 then
    redis.call('XADD', images_key, '*', 'record', image.record)
    queued = queued + 1
  else
    duplicates = duplicates + 1
  end
end
for i = 7, #KEYS do redis.call('SADD', chunks_key, KEYS[i]) end
chain.pages = chain.pages + 1
if ending == '' then
  chain.url = args.next_url
  redis.call('XADD', pages_key, '*', 'chain', args.chain, 'step', chain.pages, 'url', args.next_url,
             'streak', args.streak, 'full', args.full)
else
  chain.url = nil
  chain['end'] = ending
end
redis.call('HSET', chains_key, args.chain, cjson.encode(chain))
redis.call('XACK', pages_key, 'workers', args.message_id)
redis.call('XDEL', pages_key, args.message_id)
for field, value in pairs(args.counts) do redis.call('HINCRBY', stats_key, field, value) end
redis.call('HINCRBY', stats_key, 'queued', queued)
if duplicates > 0 then redis.call('HINCRBY', stats_key, 'dropped/duplicate', duplicates) end
redis.call('HINCRBY', stats_key, 'pages', 1)
return {1, queued, duplicates, ending}
