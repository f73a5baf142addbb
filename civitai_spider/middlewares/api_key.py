"""Send the API key to the API host only, and only while a request is on the wire.

The header is added last before the network (this middleware sits at 950) and removed
as soon as the answer or error comes back, so the copies that retries and redirects make,
the HTTP cache and a ``JOBDIR`` queue never hold it. Only API page requests to the API's
own origin carry it (pages, and the ``/me`` and ``/models/<id>`` asked before a crawl): never
an image download (even one redirected to the API host), never a request to another origin
(the image CDN, a redirect target).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from civitai_spider.api import API_META_KEY, origin

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.http import Request, Response

_HEADER = b"Authorization"


class ApiKeyMiddleware:
    def __init__(self, api_key: str, api_url: str):
        self._authorization = f"Bearer {api_key}".encode() if api_key else None
        self._api_origin = origin(api_url)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        return cls(settings.get("CIVITAI_API_KEY") or "", settings.get("CIVITAI_API_URL"))

    def process_request(self, request: Request) -> None:
        if self._authorization and request.meta.get(API_META_KEY) and origin(request.url) == self._api_origin:
            request.headers[_HEADER] = self._authorization
        else:
            request.headers.pop(_HEADER, None)

    def process_response(self, request: Request, response: Response) -> Response:
        request.headers.pop(_HEADER, None)
        return response

    def process_exception(self, request: Request, exception: Exception) -> None:
        request.headers.pop(_HEADER, None)
