"""One page fetcher for every paginated GraphQL catalog listing; the catalogs differ only in data.

A `ListingSpec` says how a catalog's listing is asked for and read: the query, the names of its
page-size and minimum-score variables, where the entries sit in the response, how the last page is
recognised, the largest page and the deepest entry the API serves. `shikimori.LISTING` and
`anilist.LISTING` are the two instances; `fetch_page` is the one fetcher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from anime_pipeline.catalog.errors import CatalogDataError
from anime_pipeline.catalog.http import HttpClient
from anime_pipeline.catalog.models import Page, TitleCandidate, as_dict


@dataclass(frozen=True)
class ListingSpec:
    name: str  # "shikimori" | "anilist": the catalog column and the reject-reason prefix
    query: str  # GraphQL query taking $page, $<size_var>, $<score_var>
    size_var: str  # page-size variable ("limit", "perPage")
    score_var: str  # minimum-score variable, omitted when `score_arg` gives None
    score_arg: Callable[[float], int | None]  # client min_score -> server filter value
    items_path: tuple[str, ...]  # keys from `data` to the list of entries
    has_next: Callable[[dict[str, Any], list[Any], int], bool]  # (container of the list, entries, page size)
    parse: Callable[..., TitleCandidate]  # entry -> TitleCandidate (keyword `min_score`)
    max_page_size: int
    max_depth: int | None = None  # deepest entry served (page × page size); None: no limit

    def page_size(self, wanted: int) -> int:
        return max(1, min(self.max_page_size, int(wanted)))

    def max_pages(self, page_size: int) -> int | None:
        """Pages within `max_depth` at this page size (None: unlimited)."""
        return None if self.max_depth is None else self.max_depth // self.page_size(page_size)


def fetch_page(
    client: HttpClient,
    spec: ListingSpec,
    url: str,
    *,
    page: int,
    page_size: int,
    min_score: float,
    max_age_s: float | None = None,
) -> Page:
    """Page `page` (1-based) of `spec`'s listing. Raises CatalogDataError when the entries are not a list,
    ValueError for a page beyond `spec.max_depth` (the API would refuse it)."""
    size = spec.page_size(page_size)
    if spec.max_depth is not None and page * size > spec.max_depth:
        raise ValueError(
            f"{spec.name}: page {page} × {size} per page is past the {spec.max_depth}-entry depth "
            f"the API serves"
        )
    variables: dict[str, Any] = {"page": page, spec.size_var: size}
    score = spec.score_arg(min_score)
    if score is not None:
        variables[spec.score_var] = score
    doc = client.post_graphql(url, spec.query, variables, max_age_s=max_age_s)
    where = f"POST {url} page {page}: data"
    container = as_dict(doc.get("data"), where)
    for key in spec.items_path[:-1]:
        where += f".{key}"
        container = as_dict(container.get(key), where)
    items = container.get(spec.items_path[-1])
    if not isinstance(items, list):
        raise CatalogDataError(f"{where}.{spec.items_path[-1]} is not a list")
    return Page(items=items, has_next=spec.has_next(container, items, size))
