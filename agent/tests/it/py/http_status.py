"""Prints the HTTP status of each request given, one per line.

Usage: http_status.py CA_FILE METHOD URL [TOKEN|-] [METHOD URL TOKEN ...]
A TOKEN of `-` sends no Authorization header.
"""
import ssl
import sys
import urllib.error
import urllib.request

ctx = ssl.create_default_context(cafile=sys.argv[1])
args = sys.argv[2:]
for i in range(0, len(args), 3):
    method, url, token = args[i:i + 3]
    data = b"{}" if method in ("POST", "PUT") else None
    req = urllib.request.Request(url, method=method, data=data)
    if token != "-":
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            print(r.status)
    except urllib.error.HTTPError as e:
        print(e.code)
