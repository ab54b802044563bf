"""The aiohttp application: GET-only routes that render pages in worker threads (a large stage's index
never blocks another request), static files from the package, and the `engine runs` plot."""

from __future__ import annotations

import asyncio
import tempfile
import threading
import traceback
from collections.abc import Callable
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from engine import history
from engine.errors import SpecError
from viewer.compare_page import compare_page
from viewer.html import e, layout
from viewer.pages import run_page, runs_page
from viewer.record_page import record_page
from viewer.state import NotFound, State

STATIC = {"view.css": "text/css", "view.js": "text/javascript"}
# Everything comes from this server: no CDN, no inline script; inline SVG and data images only.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
STATE = web.AppKey("state", State)
_plot_lock = threading.Lock()  # matplotlib's pyplot is not thread-safe


def make_app(root: Path) -> web.Application:
    state = State(root)
    app = web.Application(middlewares=[_errors])
    app[STATE] = state
    app.router.add_get("/", _page(lambda s, q: runs_page(s)))
    app.router.add_get("/run", _page(lambda s, q: run_page(s, q.get("run", ""), q)))
    app.router.add_get("/record", _page(lambda s, q: record_page(s, q.get("run", ""), q)))
    app.router.add_get("/compare", _page(compare_page, multi=("run",)))
    app.router.add_get("/plot.png", _plot)
    app.router.add_get("/static/{name}", _static)
    return app


def _page(render: Callable[[State, dict[str, Any]], str], multi: tuple[str, ...] = ()) -> Any:
    async def handler(request: web.Request) -> web.Response:
        params: dict[str, Any] = {k: v for k, v in request.query.items() if k not in multi}
        params.update({k: request.query.getall(k) for k in multi if k in request.query})
        state = request.app[STATE]
        text = await asyncio.get_running_loop().run_in_executor(None, partial(render, state, params))
        return web.Response(text=text, content_type="text/html", charset="utf-8", headers=HEADERS)

    return handler


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """A missing run or a bad file is a readable page with what to do, never a traceback."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except NotFound as exc:
        return _message(404, "Not found", str(exc))
    except SpecError as exc:
        return _message(500, "Cannot read this run", str(exc))
    except Exception as exc:  # a bug: say so on the page, keep the traceback for the report
        traceback.print_exc()
        return _message(
            500, "Internal error", f"{type(exc).__name__}: {exc} (the traceback is in the terminal)"
        )


def _message(status: int, title: str, text: str) -> web.Response:
    body = (
        f'<h1>{e(title)}</h1><p class="callout failed">{e(text)}</p><p><a href="/">back to the runs</a></p>'
    )
    return web.Response(
        status=status, text=layout(title, body, [("Runs", "/")]), content_type="text/html", headers=HEADERS
    )


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    data = resources.files("viewer").joinpath("static", name).read_bytes()
    return web.Response(body=data, content_type=STATIC[name], charset="utf-8", headers=HEADERS)


async def _plot(request: web.Request) -> web.Response:
    state: State = request.app[STATE]
    png = await asyncio.get_running_loop().run_in_executor(None, _plot_png, state)
    if png is None:
        raise web.HTTPNotFound()
    return web.Response(body=png, content_type="image/png", headers={**HEADERS, "Cache-Control": "no-cache"})


def _plot_png(state: State) -> bytes | None:
    """`engine runs --plot`, drawn into a temporary file outside the runs (the view never writes there)."""
    rows = history.table([ref.run for ref in state.runs()])
    if not rows:
        return None
    key = ("plot", orjson.dumps(rows, default=str))
    png = state.cache.get(key)
    if png is None:
        with _plot_lock, tempfile.TemporaryDirectory(prefix="engine-view-") as tmp:
            path = Path(tmp) / "plot.png"
            history.plot(rows, path)
            png = state.cache[key] = path.read_bytes()
    return png
