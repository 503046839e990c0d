"""`tunery serve` with test hooks, for tests/serve/test_hardening.py (run as a script, never imported
by the product). The hooks are installed from the outside, so the product has no test-only code:

- ``TUNERY_TEST_AUTH_GATE=DIR``: when ``DIR/armed`` holds a token, the next authentication of that
  token reads the store, touches ``DIR/read`` and waits for ``DIR/go`` before it returns, so a test
  can revoke the key while that authentication is in flight.
- ``TUNERY_TEST_NOFILE=N``: the soft limit on open files, as a small server host might have.
"""

import os
import resource
import time
from pathlib import Path

if os.environ.get("TUNERY_TEST_NOFILE"):
    _soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(os.environ["TUNERY_TEST_NOFILE"]), _hard))

if os.environ.get("TUNERY_TEST_AUTH_GATE"):
    from tunery.serve import keys

    _gate = Path(os.environ["TUNERY_TEST_AUTH_GATE"])
    _authenticate = keys.authenticate

    def _gated(store, token):
        info = _authenticate(store, token)
        armed = _gate / "armed"
        if armed.exists() and armed.read_text() == token:
            armed.unlink()
            (_gate / "read").touch()
            deadline = time.monotonic() + 60
            while not (_gate / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return info

    keys.authenticate = _gated

if __name__ == "__main__":
    from tunery.cli import app

    app(prog_name="tunery")
