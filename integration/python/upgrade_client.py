"""The client side of a weir upgrade: keep-alive HTTP (wrk), a new
connection per request (curl), and DNS over UDP and TCP (dig), all at once
for a number of seconds; prints one JSON summary of what succeeded and what
failed. Used by integration/tests/datapath_handover.rs and bench/upgrade.sh.

Every failure counts: dig gets one try (+tries=1), curl no retries.
"""
import argparse
import json
import re
import subprocess
import threading
import time


def keepalive(url, seconds, connections, out):
    text = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "3s", "--latency", url],
        capture_output=True, text=True).stdout
    requests = re.search(r"(\d+) requests in", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    p99 = re.search(r"99%\s+(\S+)", text)
    out["keepalive"] = {
        "requests": int(requests.group(1)) if requests else 0,
        "connect_errors": int(errors.group(1)) if errors else 0,
        "read_errors": int(errors.group(2)) if errors else 0,
        "write_errors": int(errors.group(3)) if errors else 0,
        "timeouts": int(errors.group(4)) if errors else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "p99": p99.group(1) if p99 else None,
        "output": text if not requests else "",
    }


def loop(seconds, command, ok):
    deadline = time.monotonic() + seconds
    result = {"ok": 0, "failed": 0, "failures": []}
    while time.monotonic() < deadline:
        started = time.time()
        done = subprocess.run(command, capture_output=True, text=True)
        if ok(done):
            result["ok"] += 1
        else:
            result["failed"] += 1
            if len(result["failures"]) < 5:
                result["failures"].append(
                    {"at": started, "rc": done.returncode, "out": (done.stdout + done.stderr)[-300:]})
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, required=True)
    parser.add_argument("--keepalive-url", required=True)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--new-connection-url", required=True)
    parser.add_argument("--dns-server", required=True)
    parser.add_argument("--dns-name", required=True)
    args = parser.parse_args()
    out = {}
    threads = [threading.Thread(target=keepalive, args=(args.keepalive_url, args.seconds, args.connections, out))]

    def curl():
        out["new_connections"] = loop(
            args.seconds,
            ["curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", args.new_connection_url],
            lambda d: d.stdout.strip() == "200")

    def dig(transport):
        # over TCP, long enough for a SYN's second retransmit (3 s): a lookup
        # begun while no weir runs then reaches the restarted one, as curl's
        # 5 s do, however slow the restart on a loaded machine (with 2 s,
        # a restart over ~1 s lost it). Over UDP a query in that gap is
        # lost whatever the wait (one try).
        wait = "+time=4" if transport == "tcp" else "+time=2"
        extra = ["+tcp"] if transport == "tcp" else []
        out[f"dns_{transport}"] = loop(
            args.seconds,
            ["dig", f"@{args.dns_server}", "+tries=1", wait, *extra, args.dns_name, "A"],
            lambda d: "status: NOERROR" in d.stdout)

    threads += [threading.Thread(target=curl), threading.Thread(target=dig, args=("udp",)),
                threading.Thread(target=dig, args=("tcp",))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
