"""Reaching the Hugging Face hub (models and datasets): offline mode and a quick reachability check, so that a
missing network fails in seconds instead of after huggingface_hub's retries."""
from __future__ import annotations

import os


def offline() -> bool:
    """Whether downloads are switched off (``HF_HUB_OFFLINE``, as huggingface_hub reads it or from the environment)."""
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return True
    except Exception:  # noqa: BLE001
        pass
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


_REACH: dict[str, tuple[float, bool]] = {}


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """A quick TCP connect to the host of ``url`` (cached 60 s), so that no network fails in seconds rather
    than after huggingface_hub's retries. With an HTTP(S) proxy configured, assume reachable."""
    import socket
    import time
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True
    u = urlparse(url)
    host, port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
    if not host:
        return True
    now = time.monotonic()
    hit = _REACH.get(host)
    if hit and now - hit[0] < 60:
        return hit[1]
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        ok = True
    except OSError:
        ok = False
    _REACH[host] = (now, ok)
    return ok
