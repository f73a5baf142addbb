"""Many workers on one crawl: the crawl's work kept in Redis Streams.

:mod:`~civitai_spider.shared_crawl.crawl` is the Redis side (keys, the atomic steps), with
:mod:`~civitai_spider.shared_crawl.consumer` how a worker takes messages from the streams,
:mod:`~civitai_spider.shared_crawl.connection` its commands retried while Redis is away and
:mod:`~civitai_spider.shared_crawl.messages` what the messages hold;
:mod:`~civitai_spider.shared_crawl.worker` the Scrapy side (what a ``scrapy crawl`` process takes,
yields and acknowledges), :mod:`~civitai_spider.shared_crawl.walk` how the spider joins it and
what becomes of a page a worker fetched, :mod:`~civitai_spider.shared_crawl.status` what
``scrapy civitai-status`` reads.
"""
