#!/usr/bin/env python3
"""Fallback for bench/run when the kisgw binary has no usable broker (BENCH_NO_BROKER=1, or
`kisgw broker` missing): obtain one KIS token per user from the simulator's /oauth2/tokenP and
publish it in Redis exactly as the broker does (shared/spec/store.md): the sealed record at
kisgw:tok:{sha256}, the user's set kisgw:user:{id}:LIVE, an "issued" event. The results say
when this path was used. Needs the `cryptography` package (Debian: python3-cryptography).

usage: publish_tokens.py SIM_URL REDIS_PORT SEAL_KEY_B64 USER_ID APP_KEY APP_SECRET
prints the access token
"""
import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sim, port, key_b64, user, app_key, app_secret = sys.argv[1:7]
req = urllib.request.Request(
    sim + "/oauth2/tokenP", method="POST", headers={"content-type": "application/json"},
    data=json.dumps({"grant_type": "client_credentials", "appkey": app_key, "appsecret": app_secret}).encode())
with urllib.request.urlopen(req, timeout=10) as r:
    tok = json.load(r)
access = tok["access_token"]
ttl = int(tok.get("expires_in", 86400))
now = int(time.time())
sha = hashlib.sha256(access.encode()).hexdigest()
name = f"kisgw:tok:{sha}"
nonce = os.urandom(12)
plain = json.dumps({"access_token": access, "app_key": app_key, "app_secret": app_secret}).encode()
sealed = base64.b64encode(nonce + AESGCM(base64.b64decode(key_b64)).encrypt(nonce, plain, name.encode())).decode()
record = json.dumps({"v": 1, "user_id": user, "env": "LIVE", "issued_at": now, "expires_at": now + ttl,
                     "kid": "k1", "sealed": sealed}, separators=(",", ":"))
event = json.dumps({"type": "issued", "sha256": sha, "user_id": user, "env": "LIVE"}, separators=(",", ":"))
cli = ["redis-cli", "-h", "127.0.0.1", "-p", port]
for args in (["SET", name, record, "EX", str(ttl)], ["SADD", f"kisgw:user:{user}:LIVE", sha],
             ["EXPIRE", f"kisgw:user:{user}:LIVE", str(ttl)], ["PUBLISH", "kisgw:events", event]):
    subprocess.run(cli + args, check=True, stdout=subprocess.DEVNULL, timeout=10)
print(access)
