"""Reads a keyturn status list the way an independent verifier does: PyJWT checks the
Status List Token's signature against the key set's JWKS, then zlib and the draft's bit
rule (entry i at byte i*bits/8, bit offset (i*bits)%8, least significant bits first) give
the statuses. Prints one JSON object: the response's Content-Type, the token's typ, sub,
ttl, iat, exp, bits, size, and every index whose status is not VALID, with its status.

    python statuslist.py LIST_URL JWKS_URL
"""

import base64
import json
import sys
import urllib.request
import zlib

import jwt


def main():
    list_url, jwks_url = sys.argv[1:3]
    request = urllib.request.Request(
        list_url, headers={"Accept": "application/statuslist+jwt"}
    )
    with urllib.request.urlopen(request) as response:
        content_type = response.headers["Content-Type"]
        token = response.read().decode()
    header = jwt.get_unverified_header(token)
    key = jwt.PyJWKClient(jwks_url).get_signing_key(header["kid"]).key
    claims = jwt.decode(
        token,
        key,
        algorithms=[header["alg"]],
        options={"require": ["sub", "iat", "exp"]},
    )
    bits = claims["status_list"]["bits"]
    lst = claims["status_list"]["lst"]
    raw = zlib.decompress(base64.urlsafe_b64decode(lst + "=" * (-len(lst) % 4)))
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    not_valid = {}
    for position, byte in enumerate(raw):
        if byte:
            for k in range(per_byte):
                value = (byte >> (k * bits)) & mask
                if value:
                    not_valid[str(position * per_byte + k)] = value
    print(
        json.dumps(
            {
                "content_type": content_type,
                "typ": header.get("typ"),
                "sub": claims["sub"],
                "ttl": claims.get("ttl"),
                "iat": claims["iat"],
                "exp": claims["exp"],
                "bits": bits,
                "size": len(raw) * per_byte,
                "not_valid": not_valid,
            }
        )
    )


if __name__ == "__main__":
    main()
