-- join: the first worker of a crawl seeds its walk; the others join the walk under way.
-- Once a walk is done, the next worker to join starts the crawl's next walk.
--
-- KEYS: the set of crawls (P:crawls) and the crawl's hash (P:crawl:D), whose name is also
-- the start of every key of its walks (P:crawl:D:R:...).
-- ARGV[1], JSON:
--   digest       the crawl's name D
--   definition   its definition (JSON text, stored as it is)
--   started      the time now (seconds, text)
--   order        the chains' names in the spider's order (JSON text, for civitai-status)
--   chains       [{name, url}]: each chain and its first page
-- Returns {walk number, 1 if this call seeded it else 0}.
local crawls_key = KEYS[1]
local crawl_key = KEYS[2]
local args = cjson.decode(ARGV[1])

local run = tonumber(redis.call('HGET', crawl_key, 'run') or '0')
if run > 0 and redis.call('HGET', crawl_key .. ':' .. run .. ':state', 'status') ~= 'done' then
  return {run, 0}
end
run = run + 1
local prefix = crawl_key .. ':' .. run .. ':'
local pages_key = prefix .. 'pages'
redis.call('SADD', crawls_key, args.digest)
redis.call('HSET', crawl_key, 'definition', args.definition, 'run', run)
-- A walk of this number may have left keys (the crawl's hash deleted since, not its walks'):
-- the new walk starts from none, and XGROUP CREATE would fail on a stream that has the group.
redis.call('DEL', prefix .. 'state', prefix .. 'chains', pages_key, prefix .. 'images', prefix .. 'stats',
           prefix .. 'workers')
redis.call('HSET', prefix .. 'state', 'status', 'running', 'started', args.started, 'chains', args.order)
redis.call('XGROUP', 'CREATE', pages_key, 'workers', '$', 'MKSTREAM')
redis.call('XGROUP', 'CREATE', prefix .. 'images', 'workers', '$', 'MKSTREAM')
for _, chain in ipairs(args.chains) do
  redis.call('HSET', prefix .. 'chains', chain.name, cjson.encode({pages = 0, url = chain.url}))
  redis.call('XADD', pages_key, '*', 'chain', chain.name, 'step', 0, 'url', chain.url, 'streak', 0, 'full', 0)
end
return {run, 1}
