"""The web page at `/`: static HTML, JS and CSS (no build step) under a strict Content-Security-Policy.

The page itself needs no key; the API calls it makes carry the one the user pasted (or passed as `#key=`).
Uploads go from the browser straight to object storage, so the bucket must allow the page's origin (CORS):
the gateway sets that at start-up when S3_CORS_ORIGINS names origins.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError
from litestar import MediaType, Response, Router, get
from litestar.di import NamedDependency
from litestar.static_files import create_static_files_router

from shared.runtime.logs import get_logger
from shared.runtime.resources import Resources
from shared.settings import Settings
from shared.storage.s3 import CORS_MAX_AGE_SEC, cors_origins

from .state import Gateway

log = get_logger("web")
STATIC_DIR = Path(__file__).parent / "static"
ASSETS_PATH = "/web"  # the page's script and style sheet
INDEX_HTML = (STATIC_DIR / "index.html").read_bytes()


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(settings: Settings) -> str:
    """Only the gateway's own script and style; fetches to the gateway and the bucket; media from anywhere
    (a pasted source URL plays in the page) and from blob: (a local file before it is uploaded)."""
    storage = origin_of(settings.public_s3_endpoint)
    return "; ".join([
        "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:",
        f"connect-src 'self' {storage}", "media-src 'self' blob: http: https:",
        "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
    ])


def page_headers(settings: Settings) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(settings), "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache",
    }


@get("/", operation_id="webPage", include_in_schema=False, media_type=MediaType.HTML)
async def web_page(gw: NamedDependency[Gateway]) -> Response[bytes]:
    """The web page: upload or name a source, set in and out points on the player, follow the job."""
    return Response(INDEX_HTML, media_type=MediaType.HTML, headers=page_headers(gw.res.settings))


web_router = Router(path="/", route_handlers=[
    web_page, create_static_files_router(path=ASSETS_PATH, directories=[STATIC_DIR], name="web-assets"),
])


async def allow_page_origins(res: Resources) -> None:
    """Set the bucket's CORS to S3_CORS_ORIGINS (a browser PUTs uploads and reads subtitles straight from it)."""
    origins = cors_origins(res.settings.s3_cors_origins)
    if not origins:
        return
    try:
        await res.storage.allow_browser_origins(origins, CORS_MAX_AGE_SEC)
    except (ClientError, BotoCoreError) as exc:
        log.warning("bucket_cors_failed", origins=origins, error=str(exc),
                    message="the web page cannot upload to this bucket until its CORS allows the page's origin")
        return
    log.info("bucket_cors", origins=origins)
