"""Keep secrets out of errors and logs: broker URLs carry passwords."""

from __future__ import annotations

import re

#: The password runs to the LAST '@' before the path, as URL parsers (urllib, redis-py, kombu) read it: a password
#: holding an unencoded '@' must not leave its tail in the text.
_URL_PASSWORD = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^/\s]*@")


def redact(text: str) -> str:
    """Replace the password in every ``scheme://user:password@host`` in ``text`` with ``***``."""
    return _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", text)


def describe_error(exc: BaseException) -> str:
    """A one-line, password-free description of a failure, for logs and the ``/info`` 503 body's log twin."""
    message = " ".join(str(exc).split()) or "no message"
    return redact(f"{type(exc).__name__}: {message}")[:300]


def scrub_credentials(message: str, url: str) -> str:
    """``message`` without the URL's password. A parser may quote it out of place: in ``redis://app:s3cret/0``
    (host forgotten) the password is read as the port, and the error quotes it. The user name is no secret and is
    left alone (scrubbing a user ``u`` would mangle every word of the message that holds a ``u``)."""
    netloc = url.partition("://")[2].partition("/")[0]
    userinfo, at, hostinfo = netloc.rpartition("@")
    secret = userinfo.partition(":")[2] if at else hostinfo.partition(":")[2]
    return message.replace(secret, "***") if secret else message
