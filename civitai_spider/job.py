"""What a JOBDIR keeps between runs of a job, and whether a run may resume it.

Scrapy's SpiderState extension pickles ``spider.state`` into ``<JOBDIR>/spider.state`` when the
spider closes and loads it when it opens. The spider keeps there the chains of its walk
(:class:`civitai_spider.chains.Chain`), how the last run ended (only a pause, ``shutdown``, is
resumed) and the walk itself: the API, query and spider arguments it lists. A paused job run
again with other arguments would go on with the old query's cursors; the crawl command refuses
that before any request (exit status 2), unless ``CIVITAI_NEW_WALK`` asks for a new walk.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

from civitai_spider.outcomes import SHUTDOWN
from civitai_spider.query import api_url

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

    from civitai_spider.query import CrawlQuery

#: Keys of the job state: the chains by name, the last run's finish reason, the walk.
CHAINS_KEY = "civitai_chains"
LAST_END_KEY = "civitai_last_end"
WALK_KEY = "civitai_walk"
#: Scrapy's SpiderState file in JOBDIR.
_STATE_FILE = "spider.state"
#: What a walk's fields are called on the command line.
_ARGUMENT_NAMES = {
    "api_url": "CIVITAI_API_URL",
    "with_tags": "CIVITAI_WITH_TAGS",
    "browsingLevel": "browsing_level",
    "baseModels": "base_models",
    "type": "media",
    "userId": "user_id",
    "modelId": "model_id",
    "modelVersionId": "model_version_id",
    "postId": "post_id",
    "imageId": "image_id",
}


def walk(settings: BaseSettings, crawl_query: CrawlQuery) -> dict[str, Any]:
    """What makes two runs of a job the same walk: flat, name -> value, for a message that names one."""
    return {
        "api_url": api_url(settings, crawl_query),
        **crawl_query.query,
        "split": ",".join(crawl_query.split) or None,
        "max_pages": crawl_query.max_pages,
        "stop_after_seen": crawl_query.stop_after_seen,
        "with_tags": settings.getbool("CIVITAI_WITH_TAGS"),
    }


def is_paused(state: dict[str, Any]) -> bool:
    """Whether the job state is a pause to resume: it ended as ``shutdown`` with a chain left."""
    chains = state.get(CHAINS_KEY)
    return (
        state.get(LAST_END_KEY) == SHUTDOWN
        and isinstance(chains, dict)
        and any(getattr(chain, "live", False) for chain in chains.values())
    )


def check_resume(jobdir: str, current: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first difference if ``jobdir`` holds a paused walk of
    other arguments than ``current``."""
    path = Path(jobdir, _STATE_FILE)
    try:
        with path.open("rb") as file:
            state = pickle.load(file)  # noqa: S301 - the user's own job folder
    except FileNotFoundError:
        return
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as error:
        raise ValueError(
            f"JOBDIR={jobdir!r}: its {_STATE_FILE} cannot be read ({type(error).__name__}: {error}); "
            "use another JOBDIR, or remove this one to start over"
        ) from None
    if not isinstance(state, dict) or not is_paused(state):
        return  # a job that ended walks again from page 1, whatever its arguments
    paused = state.get(WALK_KEY)
    if paused is None or paused == current:
        return
    names = sorted(set(paused) | set(current), key=lambda name: _ARGUMENT_NAMES.get(name, name))
    name = next(name for name in names if paused.get(name) != current.get(name))
    raise ValueError(
        f"JOBDIR={jobdir!r} holds a paused walk with {_shown(name, paused.get(name))}, "
        f"not {_shown(name, current.get(name))}: resume it with the same arguments and settings, "
        "or start a new walk in it with -s CIVITAI_NEW_WALK=true"
    )


def _shown(name: str, value: Any) -> str:
    argument = _ARGUMENT_NAMES.get(name, name)
    return f"{argument} unset" if value is None else f"{argument}={value!r}"
