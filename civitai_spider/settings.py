"""Settings of the civitai-spider project: the one documented list of knobs.

Every project setting starts with ``CIVITAI_``; the Scrapy settings below are the
defaults this project needs. Override any of them with ``-s NAME=VALUE`` (or
``setting=NAME=VALUE`` on Scrapyd). The README has the same list as a table, and
:mod:`civitai_spider.setting_rules` what each allows: a new setting goes in all three.
"""

import os

BOT_NAME = "civitai_spider"
SPIDER_MODULES = ["civitai_spider.spiders"]
NEWSPIDER_MODULE = "civitai_spider.spiders"
# Our ``crawl`` command checks spider arguments and settings before crawling, so
# that a typo ends with one clear line instead of a traceback.
COMMANDS_MODULE = "civitai_spider.commands"

# --- Civitai ---------------------------------------------------------------------------
# The images endpoint (images and videos alike). Mature content lives on civitai.red since
# April 2026: https://civitai.red/api/v1/images, with a key. Tests point it at a local fake.
CIVITAI_API_URL = "https://civitai.com/api/v1/images"
# Sent as "Authorization: Bearer <key>" on API page requests only, never on image
# requests nor to another host. Empty: anonymous (SFW results only).
CIVITAI_API_KEY = os.environ.get("CIVITAI_API_KEY", "")
# Minimum reaction counts, {stat: minimum}; an item passes when every listed stat is
# >= its minimum (a missing stat counts as 0). Stats: cryCount laughCount likeCount
# dislikeCount heartCount commentCount. JSON on the command line:
#   -s CIVITAI_THRESHOLDS='{"likeCount": 10}'
CIVITAI_THRESHOLDS = {"heartCount": 2}
# Drop images and videos without generation metadata or with an empty prompt. Most videos
# come without a prompt: a video crawl usually wants this off.
CIVITAI_REQUIRE_PROMPT = True
# --- Filters before download (README, "Filters before download"): read from the API record, so
# a dropped item costs no request; each has its drop reason. Off by default (0 or empty).
# Keep only items whose nsfwLevel is one of these names (None, Soft, Mature, X: X covers X and
# XXX) or whose browsingLevel is in one of these numbers (sums of PG=1 PG13=2 R=4 X=8 XXX=16):
#   -s CIVITAI_NSFW_LEVELS=None,Soft,Mature   or   -s CIVITAI_NSFW_LEVELS=15 (all but XXX)
CIVITAI_NSFW_LEVELS: list[str] = []
# Width, height and pixel count (width*height) bounds, from the record's width and height; an item
# without them is dropped (no_size) while any size or aspect bound is set.
CIVITAI_MIN_WIDTH = 0
CIVITAI_MAX_WIDTH = 0
CIVITAI_MIN_HEIGHT = 0
CIVITAI_MAX_HEIGHT = 0
CIVITAI_MIN_PIXELS = 0
CIVITAI_MAX_PIXELS = 0
# Aspect ratio (width/height) bounds: a number, or W:H for an exact ratio (4:3 keeps 1024x768,
# which 1.33 would drop).
CIVITAI_MIN_ASPECT_RATIO = 0
CIVITAI_MAX_ASPECT_RATIO = 0
# Words the prompt must all contain, and words it must contain none of. A word or phrase matches
# as whole words ("cat" is not in "category" nor in "long_cat"); "re:<expression>" is a regular
# expression searched anywhere. Comma-separated on the command line, or a JSON list when an entry
# holds a comma: -s CIVITAI_PROMPT_INCLUDE='portrait,re:\bsmil(e|ing)\b'
CIVITAI_PROMPT_INCLUDE: list[str] = []
CIVITAI_PROMPT_EXCLUDE: list[str] = []
# Match those words and expressions case-sensitively (by default "Portrait" is "portrait").
CIVITAI_PROMPT_CASE_SENSITIVE = False
# Ask the API for each item's tags (withTags=true): they land in <id>_meta.json as
# "tags": [{"id": ..., "name": ...}]. Off by default: it costs the server a join per page.
CIVITAI_WITH_TAGS = False
# --- Where things are kept (README, "Output") ------------------------------------------
# Ids of images already downloaded, one per line, when CIVITAI_REDIS_URL is empty. A relative
# path is inside IMAGES_STORE for a folder, inside CIVITAI_LOG_DIR for a bucket.
CIVITAI_ID_FILE = "downloaded_image_ID_DB.txt"
# Keep the ids in Redis instead of the ID file, e.g. redis://127.0.0.1:6379/0 (rediss:// for
# TLS; a password in the URL never reaches a log). Empty: the ID file. Alone, it changes only
# where the ids are: the crawl is this process's, JOBDIR and all.
CIVITAI_REDIS_URL = ""
# Every Redis key this project writes starts with this and a colon.
CIVITAI_REDIS_PREFIX = "civitai"
# Make this process a worker of the crawl shared through CIVITAI_REDIS_URL by every worker with
# the same spider arguments (README, "Many machines"). Needs CIVITAI_REDIS_URL; the crawl keeps
# where it stands in Redis, so JOBDIR and CIVITAI_NEW_WALK are refused with it.
CIVITAI_SHARED_CRAWL = False
# Shared crawl: seconds after which a page or image that a worker took and did not finish is
# taken over by another: it must exceed the longest download with its retries.
CIVITAI_REDIS_CLAIM_AFTER = 300
# Seconds Redis is waited for (retrying with backoff) when it does not answer. Then a worker of
# a shared crawl stops with the finish reason redis_error (exit status 1); any other crawl
# fails the item (CIVITAI_MAX_STORE_FAILURES of them in a row: store_error).
CIVITAI_REDIS_TIMEOUT = 60
# Also write <id>.txt beside each saved image or video: its training caption, the file that
# kohya-ss sd-scripts, OneTrainer and SimpleTuner read next to an image of the same name. The
# prompt with its A1111/ComfyUI syntax cleaned (<lora:...> tags removed, (word:1.2) and [word]
# unwrapped, BREAK and repeated commas collapsed); empty without a prompt (README, "Datasets").
CIVITAI_CAPTION_FILES = False
# Captions (the files above, and those of scrapy civitai-export) as the prompt was received.
CIVITAI_CAPTION_RAW = False
# Rows per part file of the Parquet manifest (scrapy civitai-manifest; README, "Datasets"): a
# run adds parts of at most this many rows, and a killed run redoes at most one part.
CIVITAI_MANIFEST_PART_ROWS = 100_000
# The manifest as you crawl: each recorded item's manifest row is also written during the crawl,
# in small Parquet parts (crawl-*.parquet) of the manifest folder, readable at once; scrapy
# civitai-manifest then compacts them without reading the store's files (README, "Datasets").
CIVITAI_MANIFEST = True
# A part is written once this many rows wait, or this many seconds after the first of them
# waited, and at the crawl's end: a crawl killed with kill -9 loses at most these rows of its
# own, which the next scrapy civitai-manifest reads from the files instead.
CIVITAI_MANIFEST_FLUSH_ROWS = 1_000
CIVITAI_MANIFEST_FLUSH_SECONDS = 60
# error_log.txt and DecompressionBombWarning_log.txt: in IMAGES_STORE when it is a folder,
# else in this local folder, where each video is also written as it downloads (a temporary
# file), then uploaded to the bucket and removed.
CIVITAI_LOG_DIR = "civitai-logs"
# JPEG quality for images that must be converted (WebP, GIF, CMYK JPEG...). JPEG and
# PNG originals are kept byte for byte and never re-encoded.
CIVITAI_JPEG_QUALITY = 95
# Ask Civitai's image CDN for images this many pixels wide instead of the originals; 0: the
# originals. Asked as the site's pages ask: snapped up to the CDN's widths (96 320 450 512 800
# 1200 1600, at most 1800; 1024 asks 1200). The file is what the CDN sent, byte for byte (JPEG
# or PNG; WebP or AVIF at 450 and less), and <id>_meta.json says "cdn_width". Videos, and images
# whose URL has no transform segment, are fetched as they are (README, "Resized images").
CIVITAI_IMAGE_WIDTH = 0
# Images over this many pixels are saved but logged to DecompressionBombWarning_log.txt;
# over twice this they are refused. Default: Pillow's own limit.
CIVITAI_MAX_IMAGE_PIXELS = 89_478_485
# Retries wait base * 2^(try-1) seconds, or the server's Retry-After when longer,
# never more than the maximum. The wait does not block other downloads.
CIVITAI_RETRY_BASE_DELAY = 1.0
CIVITAI_RETRY_MAX_DELAY = 60.0

# An empty API page without a cursor right after a full page is not taken for the end at once:
# the server can answer one and then the real page (a filtered-out page, a database timeout,
# civitai/civitai#1800). It is asked again this many times, waiting CIVITAI_EMPTY_PAGE_DELAY
# seconds before the first try and twice as long before each next one (10, 20, 40 s); a chain
# that then gets items goes on. 0: an empty page ends its chain at once.
CIVITAI_EMPTY_PAGE_RETRIES = 3
CIVITAI_EMPTY_PAGE_DELAY = 10.0

# Which redirects of an image download are followed: "https" (to an https:// address, any
# host), "any" or "none". A refused redirect fails the image with the reason logged.
CIVITAI_IMAGE_REDIRECTS = "https"
MEDIA_ALLOW_REDIRECTS = True

# API pages in flight at once per worker, across the crawl's chains (spider argument split;
# one chain has one page in flight at most). 2 is polite: Civitai answers 429 and 503 to
# clients that press it, and one page lists up to 200 images, more than a worker saves in a
# second.
CIVITAI_API_CONCURRENCY = 2

# Threads for Pillow (checks, conversions): -1 means one per usable core. 0 runs Pillow in
# the reactor thread, which stalls every download meanwhile (for benchmark comparison).
CIVITAI_IMAGE_THREADS = -1
# Images between request and recorded id at once, across all pages. This bounds memory (a
# 3 MB PNG is held two or three times meanwhile), the load on the image CDN and how many more
# a stop saves (CLOSESPIDER_ITEMCOUNT=N saves at most N + this).
CIVITAI_IMAGES_IN_FLIGHT = 32
# Videos between request and recorded id at once, apart from images. A video is written to a
# temporary file as it arrives (in IMAGES_STORE, or CIVITAI_LOG_DIR for a bucket), never held in
# memory: that folder needs room for this times the largest video.
CIVITAI_VIDEOS_IN_FLIGHT = 2
# A video larger than this many bytes fails (Scrapy's download_maxsize for video requests:
# cancelled from its Content-Length, or once that many bytes came). Default 1 GiB.
CIVITAI_MAX_VIDEO_BYTES = 1024**3
# Seconds a video download may take in all (DOWNLOAD_TIMEOUT, 120, is for images and pages:
# a 500 MB video needs over 4 MB/s to arrive within it).
CIVITAI_VIDEO_DOWNLOAD_TIMEOUT = 600
# Consecutive items whose files could not be stored (disk full, read-only) after which the
# crawl stops with the finish reason store_error (exit status 1), rather than fail every
# further item the same way.
CIVITAI_MAX_STORE_FAILURES = 10
# With JOBDIR, start a new walk from page 1 instead of resuming a paused job; needed to change
# a paused job's spider arguments (its chains were made from the old ones).
CIVITAI_NEW_WALK = False

# --- Scrapy ----------------------------------------------------------------------------
# A folder (or file://folder), or an S3-compatible bucket: s3://bucket/prefix, with Scrapy's
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL,
# AWS_REGION_NAME, AWS_USE_SSL, AWS_VERIFY and IMAGES_STORE_S3_ACL (default "private").
IMAGES_STORE = "civitai-images"
# Uploads to a bucket at once (threads, and botocore's connections). Scrapy's default is
# botocore's 10; 16 keeps loopback SeaweedFS busy on 2 cores (README, "Performance").
AWS_MAX_POOL_CONNECTIONS = 16
ITEM_PIPELINES = {
    "civitai_spider.pipelines.item_filter.ItemFilterPipeline": 100,
    "civitai_spider.pipelines.already_downloaded.AlreadyDownloadedPipeline": 200,
    "civitai_spider.pipelines.media.CivitaiMediaPipeline": 300,
    "civitai_spider.pipelines.metadata.MetadataPipeline": 400,
    # The commit point: the id is recorded once every file of the item is durably stored.
    "civitai_spider.pipelines.record_id.RecordIdPipeline": 500,
    # After it: the manifest's row of an item whose id is recorded (CIVITAI_MANIFEST).
    "civitai_spider.pipelines.manifest.ManifestPipeline": 600,
}
DOWNLOADER_MIDDLEWARES = {
    # Replaces Scrapy's RetryMiddleware: same settings, plus backoff and Retry-After.
    "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
    "civitai_spider.middlewares.retry.BackoffRetryMiddleware": 550,
    # Just before RedirectMiddleware (600) on the way back: refuses image redirects that
    # CIVITAI_IMAGE_REDIRECTS does not allow.
    "civitai_spider.middlewares.image_redirects.ImageRedirectPolicyMiddleware": 650,
    # Last before the network, so the key is on the wire only: not in the retry and
    # redirect copies, the HTTP cache or a JOBDIR queue.
    "civitai_spider.middlewares.api_key.ApiKeyMiddleware": 950,
}
# Scrapy's HTTP/1.1 handler, except that a video's body is written to a temporary file as it
# arrives instead of being held in memory (civitai_spider/download_handler.py): memory stays flat
# whatever the size of the videos.
DOWNLOAD_HANDLERS = {
    "http": "civitai_spider.download_handler.SpoolingDownloadHandler",
    "https": "civitai_spider.download_handler.SpoolingDownloadHandler",
}
SPIDER_MIDDLEWARES = {
    # Asks the id store about a whole API page at once (one Redis round trip per page).
    "civitai_spider.middlewares.id_lookup.IdLookupMiddleware": 100,
}
EXTENSIONS = {
    # Says whether the crawl was told to stop; a stop starts no listed item (README, "Stops").
    "civitai_spider.extensions.stop.Stop": 0,
    # Scrapy's CLOSESPIDER_* limits, stopping as the other stops do.
    "scrapy.extensions.closespider.CloseSpider": None,
    "civitai_spider.extensions.close_spider.CloseSpider": 0,
    "civitai_spider.extensions.outcome_stats.OutcomeStats": 100,
    "civitai_spider.extensions.progress.ProgressBar": 200,
    "civitai_spider.extensions.gc_freeze.FreezeStartupObjects": 300,
    # Shows AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN as '***' in Scrapy's start-up log line.
    "civitai_spider.extensions.hidden_settings.HideSecretSettings": 400,
    # The file store and the id store every component shares (stores_of). Last, so that they
    # close at spider_closed after every other extension's handler, which may still use them.
    "civitai_spider.stores.Stores": 900,
    # Stops the crawl after CIVITAI_MAX_STORE_FAILURES items in a row failed because of a store.
    "civitai_spider.stores.failures.StoreFailures": 900,
}
# One line per dropped or failed image, without the whole item.
LOG_FORMATTER = "civitai_spider.logformatter.CivitaiLogFormatter"
# Scrapy's default, DEBUG, prints several lines per item (its request, its response, the
# item): a crawl of thousands of images would bury its warnings. -L DEBUG when tracing one.
LOG_LEVEL = "INFO"

# Civitai answers 429/503 under load: retry more than Scrapy's default 2 times.
RETRY_TIMES = 5
ROBOTSTXT_OBEY = False
USER_AGENT = "civitai-spider/0.1 (Scrapy)"
# --- Concurrency, tuned with benchmarks/run.py (README, "Performance"; 2 cores, loopback) ---
# API pages go through a download slot of their own ("civitai-api", see api.py), so that image
# traffic never crowds the API; the spider gives it CIVITAI_API_CONCURRENCY places.
# Images go wide: CIVITAI_IMAGES_IN_FLIGHT (32) bounds them; the CDN's slot allows as many.
# (Scrapy 2.19 under asyncio starts every request queued in a slot at once, whatever its
# concurrency; our in-flight bound is what holds.)
CONCURRENT_REQUESTS = 64
CONCURRENT_REQUESTS_PER_DOMAIN = 32
# Items processed in parallel per API page; an item waiting for an image slot costs about
# 1 KB. JPEG crawl, 3,000 images: 16 -> ~410 images/s, 32 -> ~460, 64 -> ~445; Scrapy's 100
# only adds tasks.
CONCURRENT_ITEMS = 32
# How far the spider may run ahead of the images, in bytes of API pages being processed
# (Scrapy's default is 5 MB). Pages arrive far faster than their images are saved; with
# 5 MB a long crawl piled up ~20 parsed pages and their items, so memory crept up for the
# first 20,000 images (PNG crawl: 20,000 images 1.20x the peak of 5,000). With 1 MB, a few
# pages: 1.06x, at the same speed.
SCRAPER_SLOT_MAX_ACTIVE_SIZE = 1_000_000
# Thread pools: Pillow has its own (CIVITAI_IMAGE_THREADS, one thread per core); file writes
# and the ID file's syncs use asyncio's default pool (cores + 4 threads), enough to keep the
# disk busy. Twisted's pool (REACTOR_THREADPOOL_MAXSIZE) only resolves host names here.
DOWNLOAD_TIMEOUT = 120
# Originals of 100+ megapixels exist; the default warning size (32 MB) would log noise.
# (Videos have their own cap, CIVITAI_MAX_VIDEO_BYTES, and no warning size.)
DOWNLOAD_WARNSIZE = 128 * 1024 * 1024
TELNETCONSOLE_ENABLED = False
REMOTE_CONTROL_ENABLED = False
FEED_EXPORT_ENCODING = "utf-8"
