"""Secrets: the one list of credential variables and the one way to mask them, for reports, logs and job listings.

Nothing vtok prints or writes (run reports, `vtok submit`, `vtok jobs`) may carry a credential: values under
credential-looking keys, URL userinfo, AWS key ids and the values of this process's credential variables are
masked wherever they appear.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

REDACTED = "***redacted***"

CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
"""Environment variables that hold credentials: never printed, sent to a cluster by reference only."""

# Key-name segments that mark a secret. Matched per "_"-separated segment so that e.g.
# tokenizer.frame_tokens is kept while aws_secret_access_key or session_token are not.
_SECRET_SEGMENTS = {"key", "secret", "token", "password", "passwd", "pwd", "credential", "credentials",
                    "auth", "authorization", "signature", "private", "cookie"}
# Keys that contain a secret segment but are not secrets themselves.
_NOT_SECRET_KEYS = {"key_tokens_per_clip", "key_frame"}
_AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def looks_secret(key: str) -> bool:
    """True for a key name that holds a credential (aws_secret_access_key, session_token, password...)."""
    name = key.lower()
    if name in _NOT_SECRET_KEYS:
        return False
    return any(part in _SECRET_SEGMENTS for part in re.split(r"[_\-.]", name))


def mask_text(value: str) -> str:
    """`value` with URL userinfo, AWS key ids and this process's credential values masked."""
    out = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", value)
    out = _AWS_KEY_ID.sub(REDACTED, out)
    # A secret pasted into some unrelated field (an override typo, a URI) is still caught.
    for secret in credential_values():
        out = out.replace(secret, REDACTED)
    return out


def redact(value: Any, in_storage_options: bool = False) -> Any:
    """A copy of `value` safe to write into a shared report.

    Values under credential-looking keys become REDACTED, as do URL userinfo, AWS key ids and the
    values of this process's AWS credential variables wherever they appear. Under any
    `storage_options` every non-empty value of a credential-looking key is dropped, nested dicts
    (client_kwargs, config_kwargs) included.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = str(k)
            nested_opts = in_storage_options or key.endswith("storage_options")
            if looks_secret(key) and v not in (None, "", {}, []):
                out[key] = REDACTED
            else:
                out[key] = redact(v, nested_opts)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(v, in_storage_options) for v in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


def credential_values(environ: dict[str, str] | None = None) -> list[str]:
    """This process's credential values long enough to recognise (short ones would mask ordinary text)."""
    env = os.environ if environ is None else environ
    return [v for name in CREDENTIAL_VARS if len(v := env.get(name, "")) >= 8]


def is_secret_name(name: str) -> bool:
    """An environment variable or config key whose value is a credential."""
    return name in CREDENTIAL_VARS or looks_secret(name)
