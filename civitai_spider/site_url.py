"""``-a url=<address>``: a Civitai page, as copied from the browser, read as spider arguments.

Each page the site lists media on (its routes in the server's src/pages) is read as the
spider arguments that ask ``/api/v1/images`` for the same media, with the site's own defaults
for that page (a user's images tab is newest first, the images feed this week's most reacted),
and the API of the page's host: a ``civitai.red`` page is crawled from the ``civitai.red`` API.
The arguments are defaults that explicit ones override (:func:`civitai_spider.query.parse_arguments`).

A feed filter that the public API cannot ask (followed users, collections, tools...) is refused,
never dropped: the crawl would list more than the page shows. Parameters the site itself ignores
on a page (anything but ``modelVersionId`` on a model page, tracking parameters) are ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

#: The site's hosts and the API each page is crawled from.
API_URLS = {
    "civitai.com": "https://civitai.com/api/v1/images",
    "civitai.red": "https://civitai.red/api/v1/images",
    "civitai.green": "https://civitai.green/api/v1/images",
}
#: The pages understood, for the one line that refuses any other.
FORMS = (
    "/user/<name>",
    "/user/<name>/images",
    "/user/<name>/videos",
    "/user-id/<id>",
    "/models/<id>[/<slug>][?modelVersionId=<id>]",
    "/posts/<id>[/<slug>]",
    "/images/<id>",
    "/images[?<filters>]",
    "/videos[?<filters>]",
)
_KNOWN = (
    f"known are https://civitai.com (or civitai.red, civitai.green, with or without www.) "
    f"followed by {', '.join(FORMS)}"
)
_NUMBER = re.compile(r"[1-9][0-9]*")
_USERNAME = re.compile(r"[A-Za-z0-9_]+")

#: Defaults of the feeds' filters in a new browser (src/providers/FiltersProvider.tsx
#: imageFilterSchema lines 72-77; videoFilterSchema, line 147, is the same).
_FEED_DEFAULTS = {"sort": "Most Reactions", "period": "Week"}
#: A user's images and videos tabs (src/components/Image/Infinite/UserMediaInfinite.tsx,
#: ``period = AllTime, sort = Newest``) and a model's gallery (FiltersProvider.tsx
#: modelImageFilterSchema lines 104-108: newest, all time, every media type).
_NEWEST = {"sort": "Newest", "period": "AllTime"}

#: Pages under a model's that are not its gallery (src/pages/models/[id]/*.tsx).
_MODEL_SUBPAGES = frozenset({"edit", "wizard", "reviews", "model-versions"})
#: Feed parameters (src/components/Image/image.utils.ts imagesQueryParamSchema) that are
#: spider arguments of the same meaning.
_FEED_ARGUMENTS = {
    "sort": "sort",
    "period": "period",
    "username": "username",
    "userId": "user_id",
    "modelId": "model_id",
    "modelVersionId": "model_version_id",
    "postId": "post_id",
}
#: Feed parameters that change how the page looks, not what it lists.
_LAYOUT_PARAMETERS = frozenset({"view", "limit"})
#: Feed parameters whose value the API always has: periodMode=published is what the API's
#: searches use (image-search.service.ts lines 169, 187, 205); section=images is the tab every
#: visitor sees (UserMediaInfinite).
_API_VALUES = {"periodMode": ("published",), "section": ("images",)}
#: The feed's true/false filters (booleanString): false is no filter, true one the API lacks.
_BOOLEAN_FILTERS = frozenset(
    {
        "hideAutoResources", "hideManualResources", "followed", "newCreators", "fromPlatform",
        "hidden", "includeBaseModel", "notPublished", "publishedOnly", "pendingReviewOnly",
        "scheduled", "requiringMeta", "includePG13", "withMeta", "poiOnly", "minorOnly", "disablePoi",
        "disableMinor", "remixesOnly", "nonRemixesOnly", "hideChallenges",
    }
)  # fmt: skip
#: What to do instead of a filter the API lacks, where there is something.
#: (The API's own withMeta only adds the metadata: it passes withMeta: false to every search,
#: image-search.service.ts lines 171, 189, 207.)
_INSTEAD = {"withMeta": "; CIVITAI_REQUIRE_PROMPT (on by default) keeps the items with a prompt"}
#: The feed's other filters, none of which the public API takes.
_UNSUPPORTED = frozenset(
    {"collectionId", "collectionTagId", "prioritizedUserIds", "reactions", "techniques", "tools", "remixOfId"}
)
#: The media types the feed's ``types`` names (MediaType), as the ``media`` argument.
_MEDIA = {frozenset({"image"}): "image", frozenset({"video"}): "video", frozenset({"image", "video"}): "all"}


@dataclass(frozen=True)
class SiteAddress:
    """What a page of the site asks: its spider arguments and the API of its host."""

    arguments: dict[str, str]
    api_url: str


def parse_address(address: str) -> SiteAddress:
    """The page at ``address`` as spider arguments; ``ValueError`` (one line) for any other."""
    text = address.strip()
    parts = urlsplit(text if "://" in text else f"https://{text}")
    host = (parts.hostname or "").removeprefix("www.")
    if parts.scheme not in ("http", "https") or host not in API_URLS or parts.username or _port(parts):
        raise ValueError(f"url={address!r} is not an address on Civitai: {_KNOWN}")
    segments = [unquote(segment) for segment in parts.path.split("/") if segment]
    parameters: dict[str, list[str]] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        parameters.setdefault(name, []).append(value)
    arguments = _page_arguments(address, segments, parameters)
    if arguments is None:
        raise ValueError(f"url={address!r} is not a page this crawler knows: {_KNOWN}")
    return SiteAddress(arguments, API_URLS[host])


def _port(parts: SplitResult) -> bool:
    """Whether the address names a port (or a bad one): the site has none."""
    try:
        return parts.port is not None
    except ValueError:
        return True


def _page_arguments(
    address: str, segments: list[str], parameters: dict[str, list[str]]
) -> dict[str, str] | None:
    """The spider arguments of the page at ``segments`` (None: not a page listing media)."""
    match segments:
        # src/pages/user/[username]/index.tsx: the profile shows whatever the user posted.
        # Newest first, as on its tabs: stop_after_seen then works for a user's daily runs.
        case ["user", name]:
            return {**_NEWEST, "username": _username(address, name), "media": "all"}
        # images.tsx, videos.tsx: UserMediaInfinite type="image" / "video", with the feed's filters.
        case ["user", name, ("images" | "videos") as tab]:
            media = "image" if tab == "images" else "video"
            filters = _feed_filters(address, parameters)
            return {**_NEWEST, "media": media, **filters, "username": _username(address, name)}
        # src/pages/user-id/[userId].tsx: redirects to the user's page.
        case ["user-id", user_id]:
            return {**_NEWEST, "user_id": _id(address, "user id", user_id), "media": "all"}
        # src/pages/models/[id]/[[...slug]].tsx: ?modelVersionId= picks the version shown.
        # With ?modelVersionId= (the first, as the page reads it, lines 417-420) the page shows
        # that version's images. Without it the page shows its newest version's, but a model's
        # address without a version is read as the whole model: each version's images.
        case ["models", model_id, *slug] if not (slug and slug[0] in _MODEL_SUBPAGES):
            model = _id(address, "model id", model_id)
            if version := parameters.get("modelVersionId"):
                version_id = _id(address, "modelVersionId", version[0])
                return {**_NEWEST, "media": "all", "model_version_id": version_id}
            return {**_NEWEST, "media": "all", "model_id": model}
        # src/pages/posts/[postId]/[[...postSlug]].tsx: every image and video of the post.
        case ["posts", post_id, *slug] if not (slug and slug[0] == "edit"):
            return {"post_id": _id(address, "post id", post_id), "media": "all"}
        # src/pages/images/[imageId].tsx: one image (or video: an image id can be either).
        case ["images", image_id]:
            return {"image_id": _id(address, "image id", image_id), "media": "all"}
        # src/pages/images/index.tsx, src/pages/videos/index.tsx (which forces types: ['video']).
        case ["images"]:
            return {**_FEED_DEFAULTS, "media": "image", **_feed_filters(address, parameters)}
        case ["videos"]:
            return {**_FEED_DEFAULTS, **_feed_filters(address, parameters), "media": "video"}
    return None


def _feed_filters(address: str, parameters: dict[str, list[str]]) -> dict[str, str]:
    """The spider arguments of a feed's query string (imagesQueryParamSchema, image.utils.ts)."""
    arguments: dict[str, str] = {}
    for name, values in parameters.items():
        value = values[-1]
        if name in _FEED_ARGUMENTS:
            arguments[_FEED_ARGUMENTS[name]] = _id(address, name, value) if name.endswith("Id") else value
        elif name == "baseModels":
            arguments["base_models"] = ",".join(values)
        elif name == "tags":
            arguments["tags"] = ",".join(_tag_ids(address, values))
        elif name == "types":
            media = _MEDIA.get(frozenset(values))
            if media is None:
                raise ValueError(
                    f"url={address!r}: its filter types={','.join(values)} cannot be crawled: "
                    "allowed are image, video or both"
                )
            arguments["media"] = media
        elif name in _LAYOUT_PARAMETERS or value in _API_VALUES.get(name, ()):
            continue
        elif name in _BOOLEAN_FILTERS and value.lower() in ("false", "0"):
            continue  # booleanString: false is the same as no filter
        elif name in _BOOLEAN_FILTERS or name in _UNSUPPORTED or name in _API_VALUES:
            raise ValueError(
                f"url={address!r}: its filter {name}={value} is not one the public API can ask, "
                "so the crawl would list more than the page shows: remove it from the address"
                + _INSTEAD.get(name, "")
            )
        # Any other parameter the site's schema drops as well (tracking parameters...).
    return arguments


def _tag_ids(address: str, values: list[str]) -> list[str]:
    """numericStringArray: ``tags=5&tags=4``, or a JSON list ``tags=[5,4]``."""
    ids: list[str] = []
    for value in values:
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        for tag in parsed if isinstance(parsed, list) else [parsed]:
            ids.append(_id(address, "tag id", str(tag)))
    return ids


def _id(address: str, what: str, value: str) -> str:
    if not _NUMBER.fullmatch(value):
        raise ValueError(f"url={address!r}: its {what} {value!r} is not a number: {_KNOWN}")
    return value


def _username(address: str, name: str) -> str:
    if not _USERNAME.fullmatch(name):
        raise ValueError(
            f"url={address!r}: its user name {name!r} is not one the API takes (letters, digits and _)"
        )
    return name
