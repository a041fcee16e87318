"""What HireFire gets: the ``/info`` JSON, and the token check in front of it."""

from __future__ import annotations

import hmac
import logging
import os
from typing import Any

from . import __version__
from .collection import Snapshot
from .redaction import register
from .settings_check import TOKEN

log = logging.getLogger("hirefire_exporter")

#: The token accepted when none is configured, as in the old package (for local checks only).
DEVELOPMENT_TOKEN = "development"

HEADERS = {
    "Cache-Control": "must-revalidate, private, max-age=0",
    "HireFire-Resource": f"Python-hirefire-exporter-{__version__}",
}


class Token:
    """The HireFire token: from settings, else ``HIREFIRE_TOKEN``, else ``development`` with a warning. A token that
    HireFire could not send both in the path and in the header is refused (:data:`settings_check.TOKEN`)."""

    def __init__(self, configured: str | None = None) -> None:
        if configured:
            token = TOKEN.check(configured, "token")
        else:
            token = TOKEN.check(os.environ.get("HIREFIRE_TOKEN"), "HIREFIRE_TOKEN")
        register(token or "")
        self.development = token is None
        if token is None:
            log.warning(
                "no HireFire token configured (setting or HIREFIRE_TOKEN): accepting the token %r, "
                "which is only fit for local checks",
                DEVELOPMENT_TOKEN,
            )
            token = DEVELOPMENT_TOKEN
        self._expected = token.encode("ascii")

    def matches(self, candidate: str | None) -> bool:
        """Constant-time comparison: the time taken does not tell how much of a guess was right."""
        if candidate is None:
            return False
        return hmac.compare_digest(self._expected, candidate.encode("utf-8", "surrogateescape"))


def info(snapshot: Snapshot, now: float) -> tuple[int, Any]:
    """The status and JSON body of ``/info`` served at unix time ``now``: 200 with one entry per proc in configured
    order, or 503 naming the procs that have no usable reading at ``now`` (HireFire then leaves the dynos alone
    instead of scaling on a guess)."""
    failed = snapshot.failed(now)
    if failed:
        names = [status.name for status in failed]
        return 503, {"error": "no current reading for some procs; their broker could not be read", "procs": names}
    body = []
    for status in snapshot.procs:
        value = snapshot.value(status)
        body.append({"name": status.name, "value": value, "quantity": value})
    return 200, body
