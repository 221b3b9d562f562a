"""Wait until every URL's /readyz answers 200, within a deadline; print why not on failure."""

import argparse
import time
import urllib.error
import urllib.request


def status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=3) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("urls", nargs="+")
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    pending = set(args.urls)
    last: dict[str, tuple[int, str]] = {}
    while pending and time.monotonic() < deadline:
        for url in sorted(pending):
            last[url] = status(url)
            if last[url][0] == 200:
                pending.discard(url)
                print(f"ready: {url}")
        if pending:
            time.sleep(0.5)
    for url in sorted(pending):
        print(f"NOT READY after {args.timeout:.0f}s: {url}: {last[url][0]} {last[url][1][:300]}")
    return 1 if pending else 0


if __name__ == "__main__":
    raise SystemExit(main())
