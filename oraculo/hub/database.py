"""Database URLs for the hub and the stores shared between processes.

One machine keeps the hub's state in sqlite and the model service's usage in a sqlite file of its
own. Past one machine both go to PostgreSQL, by URL, through psycopg 3 (the ``postgres`` extra):
``postgresql://user:password@host:5432/oraculo``. SQLAlchemy 2.1 reads a bare ``postgresql://``
as psycopg 3; :func:`sqlalchemy_url` names the driver all the same (and turns Heroku-style
``postgres://``, which SQLAlchemy refuses, into it), so the URL means the same under any
SQLAlchemy the hub image carries.

The hub's tables and ``usage_events`` do not overlap, so one PostgreSQL database can hold both:
with a PostgreSQL ``db_url`` the model service uses it too unless ``usage_db_url`` says otherwise
(:func:`shared_usage_url`). sqlite stays one file per process kind: two processes writing one
sqlite file over a network file system is what this module exists to avoid.
"""

from __future__ import annotations

from urllib.parse import urlsplit

#: URL schemes that mean PostgreSQL, and the one SQLAlchemy needs for psycopg 3.
_POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
PSYCOPG_SCHEME = "postgresql+psycopg"


def is_postgres(url: str) -> bool:
    return urlsplit(url).scheme in _POSTGRES_SCHEMES


def sqlalchemy_url(url: str) -> str:
    """``url`` with psycopg 3 named as the PostgreSQL driver; other URLs unchanged."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        return f"{PSYCOPG_SCHEME}://{rest}"
    return url


def shared_usage_url(db_url: str, usage_db_url: str = "") -> str:
    """The usage store's URL: ``usage_db_url`` if set, else the hub's database when that is
    PostgreSQL, else empty (the model service keeps its own sqlite file)."""
    if usage_db_url:
        return sqlalchemy_url(usage_db_url)
    if is_postgres(db_url):
        return sqlalchemy_url(db_url)
    return ""


def redacted(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
