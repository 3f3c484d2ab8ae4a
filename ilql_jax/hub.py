"""Where weights and tokenizers come from: a local path, or a hub id the user named.

One rule for every loader, so that a mistyped local path is reported as missing
instead of being sent to the network as a model id.
"""

from __future__ import annotations

import os


def is_hub_id(path_or_hub_id: str) -> bool:
    """True for a Hugging Face hub id ("gpt2", "org/name") that is not on disk.

    Anything path-like ("./x", "/x", "~/x", "a/b/c") or present on disk is local.
    """
    if not path_or_hub_id or os.path.exists(os.path.expanduser(path_or_hub_id)):
        return False
    return not path_or_hub_id.startswith((".", "/", "~")) and path_or_hub_id.count("/") <= 1
