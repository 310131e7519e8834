"""The README's webhook verification examples verify what we actually send."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook

from notifier import signing

README = Path(__file__).resolve().parents[2] / "README.md"
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef01234567").decode()


def _python_example() -> dict[str, Any]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    code = next(b for b in blocks if "def verify(" in b)
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    return namespace


def test_readme_python_verifier_accepts_our_signature_and_rejects_forgery() -> None:
    verify = _python_example()["verify"]
    body = b'{"id":"e1","event":"ping"}'
    now = int(time.time())
    headers = signing.headers([signing.secret_key(SECRET)], "e1", now, body)
    header = headers["X-Discogsography-Signature"]
    assert verify(SECRET, body, header) is True
    assert verify(SECRET, body + b" ", header) is False
    old = signing.headers([signing.secret_key(SECRET)], "e1", now - 3600, body)
    assert verify(SECRET, body, old["X-Discogsography-Signature"]) is False


def test_readme_standardwebhooks_example() -> None:
    body = b'{"id":"e2","event":"ping"}'
    headers = signing.headers([signing.secret_key(SECRET)], "e2", int(time.time()), body)
    assert Webhook(SECRET).verify(body, headers) == {"id": "e2", "event": "ping"}


def test_readme_ed25519_example_accepts_our_signature_and_rejects_forgery() -> None:
    from cryptography.exceptions import InvalidSignature

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    code = compile(next(b for b in blocks if "Ed25519PublicKey" in b), "README.md", "exec")
    private, public = signing.new_ed25519()
    body = b'{"id":"m1","event":"ping"}'
    headers = signing.sign([private], "m1", int(time.time()), body)
    exec(code, {"public_key": public, "headers": headers, "raw_body": body})  # noqa: S102
    try:
        exec(code, {"public_key": public, "headers": headers, "raw_body": body + b" "})  # noqa: S102
    except InvalidSignature:
        pass
    else:
        raise AssertionError("a forged body was accepted")
