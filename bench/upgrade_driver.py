"""bench/upgrade.sh's driver: load in one-second slices from the client pod,
weir replaced REPLACES times, one table. See bench/upgrade.sh."""
import os
import re
import statistics
import subprocess
import threading
import time

P, WEIR, WORK = os.environ["P"], os.environ["WEIR"], os.environ["work"]
SERVER, RESOLVER = os.environ["SERVER"], os.environ["RESOLVER"]
REPLACES, CONNS, QPS = int(os.environ["REPLACES"]), int(os.environ["CONNS"]), int(os.environ["QPS"])
ADMIN = "127.0.0.1:19911"


def in_ns(ns, *command):
    return ["ip", "netns", "exec", f"{P}-{ns}", *command]


def health():
    out = subprocess.run(in_ns("node", "curl", "-s", "-m", "1", f"http://{ADMIN}/healthz"),
                         capture_output=True, text=True).stdout
    m = re.search(r" pid=(\d+) ", out)
    return int(m.group(1)) if m else None


def start_weir(n):
    log = open(f"{WORK}/weir-{n}.log", "w")
    env = dict(os.environ, WEIR_STATE_DIR=f"{WORK}/state", WEIR_LOG="info", NO_COLOR="1")
    return subprocess.Popen(["nsenter", f"--net=/run/netns/{P}-node", WEIR, "run", "--config", WORK,
                             "--datapath", "ebpf"], env=env, stdout=subprocess.DEVNULL, stderr=log)


def wait_serving(process, started):
    while time.time() - started < 60:
        if health() == process.pid:
            return time.time()
        if process.poll() is not None:
            raise SystemExit(f"weir exited: see {WORK}/weir-*.log")
        time.sleep(0.005)
    raise SystemExit("weir did not serve within 60 s")


def ms(text):
    value = float(re.sub(r"[a-z]+$", "", text))
    unit = re.search(r"[a-z]+$", text).group(0)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


stop = threading.Event()
http_slices, dns_slices = [], []


def http_load():
    while not stop.is_set():
        t0 = time.time()
        out = subprocess.run(in_ns("cli", "wrk", "-t1", f"-c{CONNS}", "-d1s", "--timeout", "3s", "--latency",
                                   f"http://{SERVER}/"), capture_output=True, text=True).stdout
        requests = re.search(r"(\d+) requests in", out)
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        p99 = re.search(r"\s99%\s+(\S+)", out)
        http_slices.append({
            "start": t0, "end": time.time(),
            "requests": int(requests.group(1)) if requests else 0,
            "errors": (sum(map(int, errors.groups())) if errors else 0) + (int(non2xx.group(1)) if non2xx else 0),
            "p99": ms(p99.group(1)) if p99 else None,
        })


def dns_load():
    while not stop.is_set():
        t0 = time.time()
        out = subprocess.run(in_ns("cli", "dnsperf", "-s", RESOLVER, "-d", f"{WORK}/queries", "-l", "1",
                                   "-Q", str(QPS), "-t", "2", "-v"), capture_output=True, text=True).stdout
        latencies = [float(m.group(1)) * 1000 for m in re.finditer(r"^> \S+ .* (\d+\.\d+)$", out, re.M)]
        sent = re.search(r"Queries sent:\s+(\d+)", out)
        lost = re.search(r"Queries lost:\s+(\d+)", out)
        dns_slices.append({
            "start": t0, "end": time.time(), "latencies": latencies,
            "sent": int(sent.group(1)) if sent else 0, "lost": int(lost.group(1)) if lost else 0,
        })


def p99(values):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))] if values else float("nan")


def main():
    weir = start_weir(0)
    wait_serving(weir, time.time())
    loads = [threading.Thread(target=http_load), threading.Thread(target=dns_load)]
    for t in loads:
        t.start()
    time.sleep(4)
    windows, serving, drains = [], [], []
    for n in range(1, REPLACES + 1):
        started = time.time()
        new = start_weir(n)
        served = wait_serving(new, started)
        weir.wait(timeout=30)
        ended = time.time()
        windows.append((started, ended))
        serving.append((served - started) * 1000)
        drains.append((ended - served) * 1000)
        weir = new
        time.sleep(4)
    stop.set()
    for t in loads:
        t.join()
    weir.terminate()
    weir.wait(timeout=30)

    def during(s):
        return any(s["start"] < e and s["end"] > b for b, e in windows)

    rows = []
    for label, pick in (("outside", lambda s: not during(s)), ("during", during)):
        hs = [s for s in http_slices if pick(s)]
        ds = [s for s in dns_slices if pick(s)]
        slice_p99 = [s["p99"] for s in hs if s["p99"] is not None]
        rows.append((label, len(hs), sum(s["requests"] for s in hs), sum(s["errors"] for s in hs),
                     statistics.median(slice_p99) if slice_p99 else float("nan"),
                     max(slice_p99) if slice_p99 else float("nan"),
                     sum(s["sent"] for s in ds), sum(s["lost"] for s in ds),
                     p99([x for s in ds for x in s["latencies"]])))
    print(f"weir replaced {REPLACES} times under load (eBPF datapath, one node): wrk -c{CONNS} keep-alive "
          f"through the transparent L7 proxy to nginx, dnsperf {QPS} qps over UDP through the DNS proxy to unbound")
    print(f"{'window':8} {'slices':>6} {'http_requests':>13} {'http_errors':>11} {'p99_ms(median)':>15} "
          f"{'p99_ms(worst)':>13} {'dns_sent':>8} {'dns_lost':>8} {'dns_p99_ms':>10}")
    for r in rows:
        print(f"{r[0]:8} {r[1]:>6} {r[2]:>13} {r[3]:>11} {r[4]:>15.2f} {r[5]:>13.2f} {r[6]:>8} {r[7]:>8} {r[8]:>10.2f}")
    out, dur = rows
    if out[4] == out[4] and dur[4] == dur[4]:
        print(f"p99 during / outside (median slice): {dur[4] / out[4]:.2f}")
    print("start to serving, ms (a new process's spawn to its /healthz): "
          + " ".join(f"{x:.0f}" for x in serving) + f"  (median {statistics.median(serving):.0f})")
    print("old process drained and exited after the new one served, ms: "
          + " ".join(f"{x:.0f}" for x in drains) + f"  (median {statistics.median(drains):.0f})")


if __name__ == "__main__":
    main()
