"""The storefront page's routes at the local gateway: static files as Envoy direct responses.

The page (web/storefront/: plain HTML, CSS and JavaScript, no build step) speaks the HTTP/JSON
API of the same gateway, so it is served from the gateway's own origin: no CORS, and a
Content-Security-Policy of `'self'` keeps the token the user pastes to that origin. Envoy
serves each file with a route whose `direct_response` body is a DataSource `filename`; Envoy
reads the files when it starts (a changed page needs `make down && make up`).

The routes are public: jwt_authn requires a token only on the public RPCs' paths
(mesh/edge.py), and the page's own calls send the token. They come before the gateway's
catch-all `closed` route; `/` redirects to the page. In a cluster the chart does not serve the
page (docs/storefront.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

Json = dict[str, Any]

#: Where the page lives in the repository.
STOREFRONT_DIR: Final = Path(__file__).resolve().parent.parent / "web" / "storefront"
#: The page's address below the gateway.
PREFIX: Final = "/storefront/"

CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

#: Only this origin for everything (scripts, styles, the API calls); no inline script.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True)
class Storefront:
    """The folder the page is served from."""

    folder: Path = STOREFRONT_DIR

    def files(self) -> list[Path]:
        """The files served: those of known types directly in the folder, sorted."""
        if not (self.folder / "index.html").is_file():
            raise ValueError(f"no storefront page at {self.folder / 'index.html'}")
        return sorted(p for p in self.folder.iterdir() if p.is_file() and p.suffix in CONTENT_TYPES)

    def max_body_bytes(self) -> int:
        """RouteConfiguration.max_direct_response_body_size_bytes: Envoy's default is 4 KiB."""
        largest = max(p.stat().st_size for p in self.files())
        # Headroom so that editing a file a little does not need a new limit.
        return max(64 * 1024, 2 * largest)

    def routes(self) -> list[Json]:
        routes = [
            _redirect("storefront.root", {"path": "/"}),
            _redirect("storefront.bare", {"path": PREFIX.rstrip("/")}),
            _file_route("storefront.index", {"path": PREFIX}, self.folder / "index.html"),
        ]
        for path in self.files():
            routes.append(
                _file_route(f"storefront.{path.name}", {"path": PREFIX + path.name}, path)
            )
        return routes


def _headers(pairs: Iterable[tuple[str, str]]) -> list[Json]:
    return [
        {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        for k, v in pairs
    ]


def _get_or_head() -> list[Json]:
    return [{"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}]


def _file_route(name: str, match: Json, path: Path) -> Json:
    return {
        "name": name,
        "match": {**match, "headers": _get_or_head()},
        "direct_response": {"status": 200, "body": {"filename": str(path.resolve())}},
        "response_headers_to_add": _headers(
            [
                ("content-type", CONTENT_TYPES[path.suffix]),
                # A development page: always the files Envoy was started with.
                ("cache-control", "no-cache"),
                ("content-security-policy", CONTENT_SECURITY_POLICY),
                ("x-content-type-options", "nosniff"),
                ("referrer-policy", "no-referrer"),
            ]
        ),
    }


def _redirect(name: str, match: Json) -> Json:
    return {
        "name": name,
        "match": {**match, "headers": _get_or_head()},
        "redirect": {"path_redirect": PREFIX, "response_code": "FOUND"},
    }


__all__ = ["PREFIX", "STOREFRONT_DIR", "Storefront"]
