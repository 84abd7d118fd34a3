"""A Flask app protected by cscapi.web.flask.CrowdSec, configured from app.config, with the decisions an agent keeps
in a store.

Run:  python examples/web_flask.py          (three visitors through Flask's test client: banned, captcha, clean)
      python examples/web_flask.py --serve  (Flask's development server on http://127.0.0.1:8000)
"""

from __future__ import annotations

import os
import secrets

from _web import arguments, decision_store, show
from flask import Flask

from cscapi.web.flask import CrowdSec


def create_app(store: str) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=os.environ.get("FLASK_SECRET_KEY") or secrets.token_urlsafe(32),  # also signs the captcha cookie
        CSCAPI_DECISION_STORE=store,  # what the agent (cscapi run) keeps filled
        CSCAPI_TRUSTED_PROXIES=["127.0.0.1/32"],  # your reverse proxy
        CSCAPI_EXEMPT_PATHS=["/health"],
    )

    @app.get("/")
    def home() -> str:
        return "hello from Flask"

    CrowdSec(app)
    return app


def main() -> None:
    args = arguments(__doc__ or "")
    with decision_store(args.base_url) as store:
        app = create_app(store)
        if args.serve:
            app.run(host="127.0.0.1", port=args.port)
            return
        client = app.test_client()

        def get(ip: str) -> tuple[int, str]:
            r = client.get("/", environ_base={"REMOTE_ADDR": ip})
            return r.status_code, r.get_data(as_text=True)

        show(get)


if __name__ == "__main__":
    main()
