"""From a store of files to a dataset: captions, the Parquet manifest, WebDataset shards.

:mod:`~civitai_spider.captions` turns a prompt into the caption training tools read
beside an image; :mod:`~civitai_spider.dataset.stored` reads back what a crawl stored (the
ids its id store lists and their files, in a folder or a bucket), which
:mod:`~civitai_spider.dataset.manifest` turns into Parquet and
:mod:`~civitai_spider.dataset.webdataset` into tar shards.
"""
