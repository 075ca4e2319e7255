"""Whether a Hugging Face hub id can be loaded here, decided in seconds.

Left to itself, loading an uncached hub id with no network retries for about a minute before
it fails. So before loading, the local cache is checked first; an id that is not cached fails
at once when the hub is disabled (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``), and otherwise
the hub gets one short request (``HUB_PROBE_TIMEOUT`` seconds, DNS included) before any load.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request

from autoprompt_py.default_model import DEFAULT_MODEL
from autoprompt_py.errors import AutopromptError

HUB_PROBE_TIMEOUT = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"
# headers the hub sets on its answers, errors included (message lookup is case-insensitive)
_HUB_HEADERS = ("x-request-id", "x-error-code", "x-repo-commit", "x-linked-etag")
_TRUE = {"1", "on", "yes", "true"}


def hub_disabled() -> str | None:
    """The variable that disables the hub (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``), read
    at call time as huggingface_hub reads it at import time; None when the hub is enabled."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return var
    return None


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def is_cached(name: str) -> bool:
    """Whether the hub id's ``config.json`` is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # a name that is not a valid repo id is not cached
        return False


def hub_reachable(name: str, timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """One HEAD request for the model's config, bounded as a whole by ``timeout``: in a thread,
    because a socket timeout does not bound a hanging DNS lookup.

    Any answer of the hub, even 401 or 404, counts (the real load then says what is wrong);
    an answer without the hub's headers is a proxy or captive portal speaking for a network
    that does not reach the hub. A custom ``HF_ENDPOINT`` (a mirror) counts on any answer.
    """
    answered = threading.Event()
    endpoint = hub_endpoint()
    url = f"{endpoint}/{name}/resolve/main/config.json"
    custom = endpoint != DEFAULT_ENDPOINT

    def probe() -> None:
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout) as r:
                headers = r.headers
        except urllib.error.HTTPError as e:
            headers = e.headers
        except Exception:  # DNS failure, refused, timeout, TLS: not reachable
            return
        if custom or any(h in (headers or {}) for h in _HUB_HEADERS):
            answered.set()

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return answered.is_set()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The hub's own redirect (to its file store) is its answer: do not follow it."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def check_hub_model(name: str) -> bool:
    """Fail fast, with one line, when hub id ``name`` cannot be loaded here.

    Returns True when the load must use the local cache only (cached, but the hub is disabled
    or cannot be reached), False when the hub can be asked.
    """
    cached = is_cached(name)
    disabled_by = hub_disabled()
    if disabled_by:
        if cached:
            return True
        raise AutopromptError(
            f"--model {name}: not available offline (the Hugging Face hub is disabled by "
            f"{disabled_by} and the model is not in the local cache); {_HOW}"
        )
    if hub_reachable(name):
        return False
    if cached:
        return True
    raise AutopromptError(
        f"--model {name}: the Hugging Face hub ({hub_endpoint()}) cannot be reached and the "
        f"model is not in the local cache; {_HOW}"
    )


_HOW = (
    "pass --model a local folder saved with save_pretrained (e.g. --model ./my-bert), or "
    f"leave --model out to use the bundled {DEFAULT_MODEL}"
)
