"""Exceptions of the catalog stage. Messages name the URL and the problem, never header values."""

from __future__ import annotations


class CatalogError(Exception):
    """Base class: anything the catalog stage cannot do with the data or the APIs it was given."""


class CatalogHTTPError(CatalogError):
    """A request failed: bad status, malformed JSON, GraphQL `errors`, timeout or connection error.

    `kind` is one of "status", "json", "graphql", "timeout", "connection", "rate_limit".
    `status` is the HTTP status when a response arrived, else None.
    """

    def __init__(self, message: str, *, url: str, kind: str, status: int | None = None):
        super().__init__(message)
        self.url = url
        self.kind = kind
        self.status = status


class CatalogDataError(CatalogError):
    """A response parsed as JSON but does not have the shape the API documents."""


class CatalogConfigError(CatalogError):
    """The catalog stage is not configured to run (e.g. no User-Agent naming the application)."""
