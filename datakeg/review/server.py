"""The review page over HTTP: Starlette + uvicorn (the ``[review]`` extra), bound to 127.0.0.1.

Security model:

* a random token (``secrets.token_urlsafe``) is in the printed URL and required on every request,
  the page and its script included (``?token=`` or the ``X-Datakeg-Token`` header); anything
  else gets 403, so another local user or a web page open in the same browser can neither read
  nor change the dataset;
* state changes only through POST with the token in the header (a cross-site form or GET cannot
  set it), JSON bodies only;
* no path from the client is ever used to open a file: pairs are named by opaque ids looked up in
  memory, and the page's three files are served from a fixed table of the package's own files.
"""

from __future__ import annotations

import hmac
import json
import secrets
from importlib import resources
from pathlib import Path

from datakeg.errors import DatakegError

STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
MISSING_EXTRA = ("`datakeg review` needs the [review] extra (Starlette and uvicorn).",
                 "Install it with: pip install 'datakeg[review]'")


def check_extra() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise DatakegError(*MISSING_EXTRA) from None


def _static(name: str) -> str:
    return resources.files("datakeg.review").joinpath("static", name).read_text(encoding="utf-8")


def create_app(model, token: str, on_change=None):
    """The Starlette app serving ``model`` (:class:`datakeg.review.model.ReviewModel`)."""
    check_extra()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    from datakeg.review.model import Refused

    class TokenRequired:
        """Every request carries the token (query or header), or it gets 403."""

        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            from starlette.requests import Request

            request = Request(scope)
            given = request.headers.get("x-datakeg-token") or request.query_params.get("token") or ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                response = Response("403 Forbidden: this datakeg review needs the token of the URL it printed.\n",
                                    status_code=403, media_type="text/plain")
                return await response(scope, receive, send)
            if request.method == "POST" and not request.headers.get("x-datakeg-token"):
                # a form posted from another page can carry a query string but never this header
                response = Response("403 Forbidden: changes need the X-Datakeg-Token header.\n", status_code=403,
                                    media_type="text/plain")
                return await response(scope, receive, send)
            return await self.app(scope, receive, send)

    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
               "X-Frame-Options": "DENY"}
    csp = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

    def error(exc: Refused) -> JSONResponse:
        return JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status, headers=headers)

    async def index(request):
        html = _static("index.html").replace("__TOKEN__", token).replace("__OUT__", _escape(str(model.out)))
        return HTMLResponse(html, headers={**headers, "Content-Security-Policy": csp})

    async def static(request):
        name = request.path_params["name"]
        if name not in STATIC:  # a fixed table: the name is never joined to a path
            return Response("404 Not Found\n", status_code=404, media_type="text/plain")
        return Response(_static(name), media_type=STATIC[name], headers=headers)

    def filters(params) -> dict:
        return {k: params.get(k, "")[:500] for k in ("split", "file", "status", "reason", "kind", "q")}

    async def pairs(request):
        p = request.query_params
        try:
            offset, limit = int(p.get("offset", 0)), int(p.get("limit", 200))
        except ValueError:
            return JSONResponse({"error": "offset and limit must be numbers"}, status_code=400)
        data = await run_in_threadpool(model.listing, offset, limit, **filters(p))
        return JSONResponse(data, headers=headers)

    async def facets(request):
        return JSONResponse(await run_in_threadpool(model.facets), headers=headers)

    async def pair(request):
        try:
            return JSONResponse(await run_in_threadpool(model.detail, request.query_params.get("id", "")),
                                headers=headers)
        except Refused as exc:
            return error(exc)

    async def body(request) -> dict:
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise Refused("send JSON (Content-Type: application/json)", 415)
        try:
            data = json.loads(await request.body())
        except ValueError:
            raise Refused("the body is not JSON", 400) from None
        if not isinstance(data, dict):
            raise Refused("the body must be a JSON object", 400)
        return data

    async def change(request, call) -> JSONResponse:
        """A decision from a JSON body: ``call(body)`` runs in a worker thread; a refusal is its error."""
        try:
            result = await run_in_threadpool(call, await body(request))
        except Refused as exc:
            return error(exc)
        if on_change:
            on_change()
        return JSONResponse(result, headers=headers)

    async def decide(request):
        return await change(request, lambda d: model.decide(d.get("id"), d.get("action"), d.get("version"),
                                                            d.get("question"), d.get("answer"), d.get("note")))

    async def bulk(request):
        return await change(request, lambda d: model.bulk(
            d.get("action"), filters(d.get("filters") if isinstance(d.get("filters"), dict) else {}), d.get("expected")))

    async def apply(request):
        try:
            await body(request)
            return JSONResponse(await run_in_threadpool(model.apply), headers=headers)
        except Refused as exc:
            return error(exc)

    routes = [Route("/", index), Route("/static/{name}", static), Route("/api/pairs", pairs),
              Route("/api/facets", facets), Route("/api/pair", pair),
              Route("/api/decide", decide, methods=["POST"]), Route("/api/bulk", bulk, methods=["POST"]),
              Route("/api/apply", apply, methods=["POST"])]
    return Starlette(routes=routes, middleware=[Middleware(TokenRequired)])


def _escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


class ReviewServer:
    """Binds a socket first (so the URL, port 0 included, is known before serving), then serves."""

    def __init__(self, out: Path, host: str = "127.0.0.1", port: int = 8765):
        check_extra()
        import socket

        from datakeg.review.model import ReviewModel

        self.model = ReviewModel(Path(out))
        self.token = secrets.token_urlsafe(24)
        self.changed = False
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise DatakegError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                               "Choose another port with --port (0 picks a free one).") from None
        self.sock.listen(128)  # connections made as soon as the URL is printed wait for uvicorn to accept them
        self.host, self.port = host, self.sock.getsockname()[1]
        self.app = create_app(self.model, self.token, on_change=self._mark)
        from datakeg.curation.leakage import preload_libraries

        preload_libraries()  # the leakage check of the first edit would load them (about a second)

    def _mark(self) -> None:
        self.changed = True

    @property
    def url(self) -> str:
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "") else (f"[{self.host}]" if ":" in self.host else self.host)
        return f"http://{shown}:{self.port}/?token={self.token}"

    def close(self) -> None:
        """Stop listening without serving."""
        self.sock.close()

    def serve(self, stop=None) -> None:
        """Serve until ``stop`` (a ``threading.Event``) is set, or until Ctrl+C when none is given
        (uvicorn's graceful shutdown: requests in flight finish).

        uvicorn runs in a thread (where it installs no signal handlers) and the main thread waits
        for it. The CLI passes an Event that its SIGINT/SIGTERM handler sets, so a Ctrl+C at any
        moment, even while uvicorn starts, is a clean stop rather than an exception raised wherever
        the main thread happens to be."""
        import threading
        import time

        import uvicorn

        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        done = threading.Event()
        stop = stop or threading.Event()

        def run() -> None:
            try:
                server.run(sockets=[self.sock])
            finally:
                done.set()

        threading.Thread(target=run, name="datakeg-review", daemon=True).start()
        try:
            while not done.is_set() and not stop.wait(0.2):
                pass
        except KeyboardInterrupt:
            stop.set()
        if stop.is_set():
            deadline = time.monotonic() + 10  # stopped while starting: let it start, then stop it
            while not done.is_set() and not server.started and time.monotonic() < deadline:
                time.sleep(0.05)
            server.should_exit = True
            done.wait(15)
        if not server.started:
            self.sock.close()  # uvicorn closes it on its way out; this covers a start that failed
