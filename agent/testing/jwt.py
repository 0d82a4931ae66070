"""Unsigned JWT-shaped tokens for the stand-ins, which read the claims and verify nothing."""

from __future__ import annotations

import base64
import json
import time


def _segment(value: dict[str, object]) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def fake_jwt(subject: str, **claims: object) -> str:
    """Return a token with subject `subject` and the given extra claims, signed by nobody."""
    now = int(time.time())
    payload: dict[str, object] = {
        "iss": "https://kubernetes.default.svc",
        "sub": subject,
        "aud": ["sts.amazonaws.com"],
        "iat": now,
        "exp": now + 3600,
        **claims,
    }
    return f"{_segment({'alg': 'RS256', 'typ': 'JWT'})}.{_segment(payload)}.fake-signature"


def fake_service_account_token(*, namespace: str, service_account: str) -> str:
    """Return a token shaped like a projected Kubernetes service account token."""
    return fake_jwt(
        f"system:serviceaccount:{namespace}:{service_account}",
        **{"kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": service_account}}},
    )
