"""The soak driver (bench/soak.sh starts the servers and weir, then this).

Mixed legitimate load on HTTP, memcached and DNS through weir, hostile
clients beside it (slow HTTP heads, idle memcached connections, denied
requests), and a policy rewrite every second. Counts every legitimate request
that did not get its right answer, and samples weir's RSS.

    python3 bench/soak.py --duration 600 --weir-pid PID --http PORT \
        --memcached PORT --dns PORT --policy FILE --client 127.0.0.2

Exit status 1 if any legitimate request failed or RSS grew past the bound.
"""

import argparse
import os
import random
import socket
import struct
import sys
import threading
import time

CLIENT_IP = "127.0.0.2"
stop = threading.Event()
lock = threading.Lock()
counts = {}
failures = []


def count(what, ok=True, detail=""):
    with lock:
        counts[what] = counts.get(what, 0) + 1
        if not ok:
            counts[what + " FAILED"] = counts.get(what + " FAILED", 0) + 1
            if len(failures) < 20:
                failures.append(f"{what}: {detail}")


def connect(port, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(CLIENT_IP, 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_http_response(f):
    status = f.readline()
    if not status:
        raise ConnectionError("connection closed before a status line")
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    f.read(length)
    return int(status.split()[1])


def http_client(port):
    """Keep-alive GETs: allowed ones must be 200, denied ones 403."""
    s = f = None
    while not stop.is_set():
        try:
            if s is None:
                s = connect(port)
                f = s.makefile("rb")
            allowed = random.random() < 0.9
            path = "/public/soak" if allowed else "/private/soak"
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: soak\r\n\r\n".encode())
            status = read_http_response(f)
            want = 200 if allowed else 403
            count("http allowed" if allowed else "http denied", status == want, f"{path}: {status}")
        except Exception as e:  # a legitimate request that got no answer
            count("http allowed", False, repr(e))
            s = f = None
            time.sleep(0.05)


def memcached_client(port, n):
    """set/get of allowed keys: every answer must be the one memcached gives."""
    s = f = None
    i = 0
    while not stop.is_set():
        try:
            if s is None:
                s = connect(port)
                f = s.makefile("rb")
            i += 1
            key = f"soak/{n}/{i % 100}"
            value = f"v{i}".encode()
            s.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (key.encode(), len(value), value))
            line = f.readline()
            count("memcached set", line == b"STORED\r\n", repr(line))
            s.sendall(b"get %s\r\n" % key.encode())
            head = f.readline()
            ok = head.startswith(b"VALUE ")
            if ok:
                f.readline()
                ok = f.readline() == b"END\r\n"
            count("memcached get", ok, repr(head))
            if i % 10 == 0:  # a denied key: refused, the connection stays
                s.sendall(b"get secret/x\r\n")
                line = f.readline()
                count("memcached denied", line.startswith(b"CLIENT_ERROR"), repr(line))
        except Exception as e:
            count("memcached set", False, repr(e))
            s = f = None
            time.sleep(0.05)


def dns_query(name, qid):
    header = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return header + qname + struct.pack(">HH", 1, 1)


def dns_client(port):
    """Allowed names must resolve (NOERROR with an answer); denied get REFUSED."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((CLIENT_IP, 0))
    s.settimeout(3.0)
    qid = 0
    while not stop.is_set():
        qid = (qid + 1) & 0xFFFF
        allowed = random.random() < 0.9
        name = f"q{qid % 50}.soak.example" if allowed else "blocked.other.example"
        try:
            s.sendto(dns_query(name, qid), ("127.0.0.1", port))
            while True:
                reply, _ = s.recvfrom(4096)
                if struct.unpack(">H", reply[:2])[0] == qid:
                    break
            rcode = reply[3] & 0x0F
            answers = struct.unpack(">H", reply[6:8])[0]
            if allowed:
                count("dns allowed", rcode == 0 and answers > 0, f"{name}: rcode {rcode}")
            else:
                count("dns denied", rcode == 5, f"{name}: rcode {rcode}")
        except Exception as e:
            # a UDP datagram may be lost; a lost answer to an allowed name is
            # still counted: on loopback nothing should be lost
            count("dns allowed" if allowed else "dns denied", False, f"{name}: {e!r}")


def slow_http(port, n):
    """n connections trickling one header line every 2 s (slowloris)."""
    conns = []
    while not stop.is_set():
        while len(conns) < n:
            try:
                s = connect(port)
                s.sendall(b"GET /public/slow HTTP/1.1\r\n")
                conns.append(s)
            except OSError:
                break
        alive = []
        for s in conns:
            try:
                s.sendall(b"X-Slow: 1\r\n")
                alive.append(s)
            except OSError:
                s.close()
        conns = alive
        count("slow http lines")
        stop.wait(2.0)
    for s in conns:
        s.close()


def idle_memcached(port, n):
    """n memcached connections that never send anything."""
    conns = []
    while not stop.is_set():
        conns = [s for s in conns if s.fileno() != -1]
        while len(conns) < n:
            try:
                conns.append(connect(port))
            except OSError:
                break
        stop.wait(5.0)
    for s in conns:
        s.close()


def reload_policy(path, every):
    """Rewrite the policy file every `every` seconds (same rules, new text)."""
    original = open(path).read()
    i = 0
    while not stop.wait(every):
        i += 1
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(original + f"\n# soak reload {i}\n")
        os.rename(tmp, path)
        count("policy reloads")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=600)
    ap.add_argument("--weir-pid", type=int, required=True)
    ap.add_argument("--http", type=int, required=True)
    ap.add_argument("--memcached", type=int, required=True)
    ap.add_argument("--dns", type=int, required=True)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--slow", type=int, default=50)
    a = ap.parse_args()

    workers = [threading.Thread(target=http_client, args=(a.http,)) for _ in range(4)]
    workers += [threading.Thread(target=memcached_client, args=(a.memcached, n)) for n in range(3)]
    workers += [threading.Thread(target=dns_client, args=(a.dns,)) for _ in range(2)]
    workers += [
        threading.Thread(target=slow_http, args=(a.http, a.slow)),
        threading.Thread(target=idle_memcached, args=(a.memcached, a.slow)),
        threading.Thread(target=reload_policy, args=(a.policy, 1.0)),
    ]
    for w in workers:
        w.daemon = True
        w.start()

    samples = []
    started = time.time()
    while time.time() - started < a.duration:
        time.sleep(min(10, a.duration))
        samples.append(rss_kib(a.weir_pid))
        with lock:
            done = sum(v for k, v in counts.items() if "FAILED" not in k)
        print(f"soak: {time.time() - started:5.0f}s rss {samples[-1] / 1024:6.1f} MiB, {done} operations", flush=True)
    stop.set()
    for w in workers:
        w.join(timeout=10)

    print("\nsoak: what ran")
    for k in sorted(counts):
        print(f"  {k:24} {counts[k]}")
    failed = sum(v for k, v in counts.items() if k.endswith("FAILED"))
    for f in failures:
        print(f"  failure: {f}")
    # RSS: the first sample is after 10 s of load (pools and caches warm);
    # flat means the last is within 25% (+16 MiB) of it
    first, last = samples[0], samples[-1]
    print(f"soak: rss first {first / 1024:.1f} MiB, max {max(samples) / 1024:.1f} MiB, last {last / 1024:.1f} MiB")
    grew = last > first * 1.25 + 16 * 1024
    print(f"soak: {failed} failed legitimate or denied requests; RSS {'GREW' if grew else 'flat'}")
    sys.exit(1 if failed or grew else 0)


if __name__ == "__main__":
    main()
