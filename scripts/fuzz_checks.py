"""Schemathesis hooks for `scripts/fuzz-api`: a check that no answer body leaks internals,
and one-request Idempotency-Keys."""

import hashlib
import re

import schemathesis

# A panic message, a sqlx error, SQL text or a Rust backtrace in a body is a leak.
LEAKS = re.compile(
    r"panicked|sqlx|\bSELECT\b.+\bFROM\b|\bINSERT INTO\b|\bUPDATE\b.+\bSET\b|\bDELETE FROM\b"
    r"|stack backtrace|RUST_BACKTRACE|src/[a-z_/]+\.rs",
    re.IGNORECASE | re.DOTALL,
)


@schemathesis.check
def no_internal_leaks(ctx, response, case):
    """No body names a panic, sqlx, SQL text or a backtrace."""
    body = response.text or ""
    found = LEAKS.search(body)
    if found:
        raise AssertionError(f"the body leaks internals: {found.group(0)!r} in {body[:300]!r}")


VALID_KEY = re.compile(r"[!-~]{1,255}")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    """Make a generated Idempotency-Key stand for one request.

    The fuzzer draws keys without knowing that a key names one request: the same key on a
    different request is answered 422 (`idempotency.key_reused`), as documented, and a
    repeat answers what the first request got, whatever its other headers (If-Match). A
    valid key is therefore replaced by a digest of the key *and* the whole request, so a
    repeat of the same request still replays while any other gets a key of its own.
    Invalid keys are left as drawn: the server must still refuse them (400).
    """
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key" and isinstance(headers[name], str):
            key = headers[name]
            if VALID_KEY.fullmatch(key):
                others = sorted(
                    (n.lower(), str(v)) for n, v in headers.items()
                    if n.lower() not in ("idempotency-key", "x-request-id")
                )
                request = (
                    f"{key}|{case.method}|{case.formatted_path}|{case.query!r}|{others!r}|{case.body!r}"
                )
                headers[name] = hashlib.sha256(request.encode("utf-8", "surrogatepass")).hexdigest()
