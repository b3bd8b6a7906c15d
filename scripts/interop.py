#!/usr/bin/env python3
"""Verify keyturn tokens with an independent library: PyJWT and its PyJWKClient.

Reads one JSON object per line on stdin: {"jwks": URL, "token": JWS, "alg": ALG,
"issuer": ISS, "audience": AUD}. Each JWKS URL gets one long-lived PyJWKClient (it caches
the key set and refetches on an unknown kid), so feeding tokens from before and after a
rotation exercises what a real verifier does. Writes one JSON line per token:
{"ok": true, "kid": ..., "sub": ...} or {"ok": false, "error": ...}.
Used by the integration test tests/it/interop.rs (run through scripts/test.sh).
"""
import json
import sys

import jwt
from jwt import PyJWKClient

clients = {}

for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    req = json.loads(line)
    try:
        client = clients.setdefault(req["jwks"], PyJWKClient(req["jwks"], cache_keys=True))
        key = client.get_signing_key_from_jwt(req["token"])
        claims = jwt.decode(
            req["token"],
            key.key,
            algorithms=[req["alg"]],
            audience=req.get("audience"),
            issuer=req.get("issuer"),
            options={"require": ["exp", "iat", "iss", "jti"]},
        )
        out = {"ok": True, "kid": key.key_id, "sub": claims.get("sub")}
    except Exception as e:  # report, never crash: the test reads every line
        out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)
