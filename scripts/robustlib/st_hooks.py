"""Schemathesis hooks for scripts/api-fuzz (loaded through SCHEMATHESIS_HOOKS).

The master's key can be regenerated through the API itself
(`PATCH /instances/******** {"action":"restart"}`, also reachable as
`PATCH /instances/{id}` with that id), and the fuzzer finds that call. Every
later request would then be a 401 and the rest of the run would test nothing.
So the key is not passed with `-H`: an auth provider sends the current key,
and an `after_call` hook picks the new key out of the answer that made it.
Checks that send no key or a wrong one (`ignored_auth`,
`missing_required_header`) still do so: they bypass the provider.
"""

from __future__ import annotations

import os
import re
import threading

import schemathesis

_lock = threading.Lock()
_key = os.environ["DROVER_FUZZ_KEY"]
_rotations = 0
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def current_key() -> str:
    with _lock:
        return _key


@schemathesis.auth(refresh_interval=None)
class DroverKey:
    """Sends the key the master holds now."""

    def get(self, case, ctx):
        return current_key()

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["X-API-Key"] = data


@schemathesis.hook
def after_call(context, case, response):
    global _key, _rotations
    if case.method.upper() != "PATCH" or response.status_code != 200:
        return
    try:
        body = response.json()
    except ValueError:
        return
    if isinstance(body, dict) and body.get("id") == "********":
        new = body.get("url")
        if isinstance(new, str) and HEX32.match(new):
            with _lock:
                if new != _key:
                    _key = new
                    _rotations += 1
                    path = os.environ.get("DROVER_FUZZ_KEY_FILE")
                    if path:
                        with open(path, "w") as fh:
                            fh.write(new)
