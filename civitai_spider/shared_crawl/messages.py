"""What a worker takes from a shared crawl's streams: page and image messages; and what a hand-on did."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: Deliveries of an image after which it is given up (failed, logged): a message whose
#: workers keep dying must not go round for ever.
MAX_DELIVERIES = 3


@dataclass(frozen=True)
class PageMessage:
    """A chain's next page, as taken from the pages stream."""

    message_id: str
    chain: str
    step: int
    url: str
    streak: int
    #: Times it was delivered (1 unless it was taken over from a worker that stopped).
    deliveries: int = 1
    #: Whether the chain's page before it held ``limit`` items (an empty answer is asked again).
    after_full: bool = False

    @classmethod
    def from_fields(cls, message_id: str, fields: Mapping[str, str], deliveries: int) -> PageMessage:
        """The page of a message's fields, as the *join* and *hand on* steps write them."""
        return cls(
            message_id,
            fields["chain"],
            int(fields["step"]),
            fields["url"],
            int(fields.get("streak") or 0),
            deliveries,
            fields.get("full") == "1",
        )


@dataclass(frozen=True)
class ImageMessage:
    message_id: str
    record: str
    deliveries: int = 1

    @classmethod
    def from_fields(cls, message_id: str, fields: Mapping[str, str], deliveries: int) -> ImageMessage:
        """The image of a message's fields, as the *hand on* step writes them."""
        return cls(message_id, fields["record"], deliveries)


@dataclass(frozen=True)
class HandOn:
    """What a hand-on did: ``accepted`` False when the page had been taken over meanwhile."""

    accepted: bool
    queued: int = 0
    duplicates: int = 0
    #: How the chain ended with this page ("" while it goes on).
    end: str = ""
