"""`python -m bench.gateway_plain`: `clipjet gateway` without the raw routes of services/gateway/fastpath.py (every
request through Litestar), for `python -m bench.gateway_cpu --ab` to measure both in the same run."""

from __future__ import annotations

from litestar.types import ASGIApp

from services.cli import _run_gateway
from services.gateway.app import app_from_environment
from shared.settings import load_settings


def plain_app() -> ASGIApp:
    return app_from_environment(fast_path=False)


if __name__ == "__main__":
    _run_gateway(load_settings(), factory="bench.gateway_plain:plain_app")
