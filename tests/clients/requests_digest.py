#!/usr/bin/env python3
"""Drives the server with Python `requests` and `HTTPDigestAuth`, unchanged, as a real client.

Usage: requests_digest.py BASE_URL GROUP_ID PUBLIC_KEY PRIVATE_KEY

Prints a JSON array of {"step", "status", "body"} on stdout; the Rust test
(tests/api/auth.rs) checks the statuses. Exits 2 with one line on stderr when
`requests` is not installed.
"""

import json
import sys

try:
    import requests
    from requests.auth import HTTPDigestAuth
except ImportError:
    sys.stderr.write("python `requests` is not installed: pip install requests (CI installs it)\n")
    sys.exit(2)

V2 = "application/vnd.atlas.2023-01-01+json"


def main():
    base, group, public_key, private_key = sys.argv[1:5]
    auth = HTTPDigestAuth(public_key, private_key)
    session = requests.Session()
    v1 = f"{base}/api/atlas/v1.0/groups/{group}/integrations"
    v2 = f"{base}/api/atlas/v2/groups/{group}/integrations"
    v2_headers = {"Accept": V2}
    steps = []

    def step(name, method, url, **kwargs):
        response = session.request(method, url, auth=auth, timeout=20, **kwargs)
        steps.append({"step": name, "status": response.status_code, "body": response.text})

    step("v1 GET list", "GET", v1)
    step("v1 POST", "POST", f"{v1}/OPS_GENIE",
         json={"type": "OPS_GENIE", "apiKey": "opsgenie-key-1234", "region": "US"})
    step("v1 PUT", "PUT", f"{v1}/OPS_GENIE",
         json={"type": "OPS_GENIE", "apiKey": "opsgenie-key-5678", "region": "EU"})
    step("v1 GET one", "GET", f"{v1}/OPS_GENIE")
    step("v1 DELETE", "DELETE", f"{v1}/OPS_GENIE")
    step("v2 POST", "POST", f"{v2}/DATADOG", headers=v2_headers,
         json={"type": "DATADOG", "apiKey": "0123456789abcdef0123456789abcdef", "region": "US"})
    step("v2 GET list", "GET", v2, headers=v2_headers)
    step("v2 PUT", "PUT", f"{v2}/DATADOG", headers=v2_headers,
         json={"type": "DATADOG", "apiKey": "fedcba9876543210fedcba9876543210", "region": "EU"})
    step("v2 DELETE", "DELETE", f"{v2}/DATADOG", headers=v2_headers)
    wrong = requests.get(v1, auth=HTTPDigestAuth(public_key, "wrong"), timeout=20)
    steps.append({"step": "wrong key", "status": wrong.status_code, "body": wrong.text})
    print(json.dumps(steps))


if __name__ == "__main__":
    main()
