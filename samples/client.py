"""GET each URL once and report: the demo's and the tests' client.

Prints one line per URL (`OK url status body` or `FAIL url reason`); exits 1 if any failed.
Usage: python3 -m samples.client [--timeout S] URL...
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request


def fetch(url: str, timeout_s: float) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - http only
            return True, f"{resp.status} {resp.read().decode(errors='replace').strip()}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, str(getattr(exc, "reason", exc))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m samples.client")
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("urls", nargs="+")
    args = parser.parse_args(argv)
    failed = 0
    for url in args.urls:
        ok, detail = fetch(url, args.timeout)
        failed += not ok
        print(f"{'OK' if ok else 'FAIL'} {url} {detail}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
