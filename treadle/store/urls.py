"""Store URLs: parsing, and masking credentials before anything is shown."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit

from ..errors import StoreError

_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:@/]*)(?::[^@/]*)?@")


_BARE = re.compile(r"^(?P<user>[^:@/]*):[^@/]*@")


def mask_url(url: str) -> str:
    """Replace any password in a URL with ``***`` (``postgresql://u:***@h/db``),
    also in a URL given without its scheme (``u:secret@host``)."""
    if "://" not in url:
        return _BARE.sub(lambda m: f"{m['user']}:***@", url)
    return _CREDENTIALS.sub(
        lambda m: f"{m['scheme']}{m['user']}{':***' if ':' in m.group(0)[len(m['scheme']):] else ''}@",
        url,
    )


def mask_text(text: str, url: str) -> str:
    """Remove the password of ``url`` from ``text`` (e.g. a driver's error message)."""
    password = urlsplit(url).password if "://" in url else None
    if password is None and "://" not in url and _BARE.match(url):
        password = url.split(":", 1)[1].split("@", 1)[0]
    text = text.replace(url, mask_url(url))
    if password:
        text = text.replace(password, "***")
    return text


def split(url: str) -> tuple[str, str, dict[str, str]]:
    """``scheme, rest, query`` of a store URL."""
    if "://" not in url:
        return "", url, {}
    scheme, rest = url.split("://", 1)
    query: dict[str, str] = {}
    if "?" in rest:
        rest, qs = rest.split("?", 1)
        query = dict(parse_qsl(qs, keep_blank_values=True))
    return scheme.lower(), rest, query


def pop_option(url: str, name: str) -> tuple[str, str | None]:
    """The URL without its ``name=`` option, and that option's (last) value (None
    when absent): options treadle reads itself, never passed on to the driver."""
    base, sep, qs = url.partition("?")
    if not sep:
        return url, None
    pairs = parse_qsl(qs, keep_blank_values=True)
    values = [v for k, v in pairs if k == name]
    if not values:
        return url, None
    rest = urlencode([(k, v) for k, v in pairs if k != name])
    return (f"{base}?{rest}" if rest else base), values[-1]


def no_store(url: str, why: str) -> StoreError:
    """The error of ``open_store(url, create=False)`` where no treadle store is."""
    return StoreError(
        f"no store at {mask_url(url)}: {why}; nothing was created or changed. Point --db "
        "(or TREADLE_DB) at the store you ran the pipeline with; run and submit create a new one."
    )
