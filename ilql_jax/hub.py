"""Where weights and tokenizers come from: a local path, or a hub id the user named.

One rule for every loader, so that a mistyped local path is reported as missing
instead of being sent to the network as a model id; and `unreachable`, a
bounded check a command line runs before it hands a hub id to the hub client
(whose retries take tens of seconds on a machine without network).
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse


def is_hub_id(path_or_hub_id: str) -> bool:
    """True for a Hugging Face hub id ("gpt2", "org/name") that is not on disk.

    Anything path-like ("./x", "/x", "~/x", "a/b/c") or present on disk is local.
    """
    if not path_or_hub_id or os.path.exists(os.path.expanduser(path_or_hub_id)):
        return False
    return not path_or_hub_id.startswith((".", "/", "~")) and path_or_hub_id.count("/") <= 1


# How long `unreachable` waits for the hub (or the proxy) to accept a connection.
PROBE_TIMEOUT_S = 3.0
_TRUE = ("1", "on", "true", "yes")


def _probe_address() -> tuple[str, int]:
    """(host, port) a download would connect to first: the HTTPS proxy when one is set, else the hub's endpoint."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urllib.parse.urlsplit(proxy if proxy else os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def unreachable(hub_id: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when `hub_id` can be loaded: in the local Hugging Face cache, or the hub accepts a TCP connection
    within `timeout_s`; otherwise why it cannot, in a few words.

    The hub client retries for tens of seconds before it gives up on a machine without network, and prints
    pages of warnings meanwhile: one connection attempt (name lookup included) bounded by `timeout_s` answers
    the same question first. `HF_HUB_OFFLINE=1` is honoured without any attempt.
    """
    try:
        from huggingface_hub import try_to_load_from_cache
        if isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
            return None
    except Exception:  # noqa: BLE001 - an id the cache cannot hold is the download's to report
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE:
        return "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
    host, port = _probe_address()
    result: list[BaseException | None] = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            result.append(None)
        except OSError as e:
            result.append(e)

    # A thread, since a name lookup (getaddrinfo) takes no timeout of its own.
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not result:
        return f"{host}:{port} did not answer within {timeout_s:g} s (no network?)"
    if result[0] is not None:
        return f"{host}:{port} cannot be reached ({result[0]})"
    return None
