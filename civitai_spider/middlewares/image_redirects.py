"""Decide which redirects of image downloads are followed: ``CIVITAI_IMAGE_REDIRECTS``.

Image downloads follow redirects through Scrapy's RedirectMiddleware (``MEDIA_ALLOW_REDIRECTS``).
This middleware sees each answer just before it (priority 650, above its 600) and refuses a
redirect that the setting does not allow: the image then fails, with the target and the reason
in the log and in ``error_log.txt``, and is tried again next run.

- ``https`` (the default): follow a redirect to an ``https://`` address, on any host. Civitai's
  CDN is https; a redirect down to plain http is how a downloaded file could be swapped on the way.
- ``any``: follow every redirect. ``none``: follow none.

API requests are not concerned (their redirects carry no key off the API host: see api_key.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from scrapy.exceptions import IgnoreRequest

from civitai_spider.api import API_META_KEY

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.http import Request, Response

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class ImageRedirectPolicyMiddleware:
    def __init__(self, policy: str):
        self.policy = policy

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler.settings.get("CIVITAI_IMAGE_REDIRECTS"))

    def process_response(self, request: Request, response: Response) -> Response:
        if (
            response.status not in _REDIRECT_STATUSES
            or request.meta.get(API_META_KEY)
            or b"Location" not in response.headers
        ):
            return response
        location = response.headers[b"Location"]
        assert location is not None  # in the headers, checked above
        target = urljoin(request.url, location.decode("latin-1"))
        if self.policy == "any" or (self.policy == "https" and urlsplit(target).scheme == "https"):
            return response
        setting = f"CIVITAI_IMAGE_REDIRECTS={self.policy}"
        raise IgnoreRequest(f"HTTP {response.status} redirect to {target} not followed ({setting})")
