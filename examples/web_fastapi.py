"""A FastAPI app protected by cscapi.web (the pure ASGI middleware), with the decisions an agent keeps in a store.

Run:  python examples/web_fastapi.py          (three visitors through FastAPI's test client: banned, captcha, clean)
      python examples/web_fastapi.py --serve  (uvicorn on http://127.0.0.1:8000)
"""

from __future__ import annotations

import os
import secrets

from _web import arguments, decision_store, show
from fastapi import FastAPI

from cscapi.remediation import RemediationEngine
from cscapi.web import Bouncer
from cscapi.web.asgi import BouncerMiddleware


def create_app(store: str) -> FastAPI:
    app = FastAPI()

    @app.get("/")
    async def home() -> dict[str, str]:
        return {"hello": "world"}

    engine = RemediationEngine(None, store=store)  # reads what the agent (cscapi run) pulls; no I/O per request
    bouncer = Bouncer(
        engine,
        secret_key=os.environ.get("CSCAPI_WEB_SECRET") or secrets.token_urlsafe(32),  # the same in every worker
        trusted_proxies=["127.0.0.1/32"],  # your reverse proxy
        exempt_paths=["/health"],
    )
    app.add_middleware(BouncerMiddleware, bouncer=bouncer)
    return app


def main() -> None:
    args = arguments(__doc__ or "")
    with decision_store(args.base_url) as store:
        app = create_app(store)
        if args.serve:
            import uvicorn

            uvicorn.run(app, host="127.0.0.1", port=args.port)
            return
        import warnings

        warnings.filterwarnings("ignore", message="Using `httpx`")  # Starlette's notice about its test client
        from fastapi.testclient import TestClient

        def get(ip: str) -> tuple[int, str]:
            r = TestClient(app, client=(ip, 50000)).get("/")
            return r.status_code, r.text

        show(get)


if __name__ == "__main__":
    main()
