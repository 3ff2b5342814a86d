#!/usr/bin/env python3
"""Connection setup rate with a plain asyncio client (Python stdlib only).

Opens N TCP connections to an MQTT broker, at most C of them being set up at
once; each sends a raw MQTT 3.1.1 CONNECT (clean session, keep alive 60 s)
and waits for CONNACK; connections stay open until all are up (plus
--hold seconds), answering nothing and sending PINGREQ at half the keep
alive. Reports connects/s (connected / time from the first TCP connect to the
last CONNACK) and the TCP-connect-to-CONNACK time (p50, p99, max).

Why it exists: the bench's Rust clients (rumqttc, the lean mqttbytes one)
share their runtime with no other client library; this one is the simplest
client there is, independent of both, a cross-check of the `connections`
scenario. It is CPU-heavier per connection than the Rust clients, so on a
small machine its figures are lower for every broker; compare brokers with
the same client only.

    bench/connect_rate.py --broker 127.0.0.1:1884 [--count 10000]
        [--concurrency 200] [--hold 2] [--target NAME] [--broker-pid PID]
        [--json]

--json prints one JSON object in the shape of `bench --json` (scenario
"connections", rate, p50_ms, p99_ms, max_ms, ...), which bench/run-all
collects with the other results.
"""

import argparse
import asyncio
import json
import os
import resource
import sys
import time

KEEP_ALIVE = 60
CONNACK_LEN = 4


def connect_packet(client_id: str, keep_alive: int) -> bytes:
    """A MQTT 3.1.1 CONNECT: clean session, no will, no credentials."""
    cid = client_id.encode()
    variable = b"\x00\x04MQTT" + bytes([4, 0x02]) + keep_alive.to_bytes(2, "big")
    payload = len(cid).to_bytes(2, "big") + cid
    body = variable + payload
    return bytes([0x10]) + remaining_length(len(body)) + body


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status: no VmRSS line")


class Conn(asyncio.Protocol):
    """One connection: CONNECT on connect, CONNACK resolves `acked`."""

    def __init__(self, packet: bytes, acked: asyncio.Future, stats):
        self.packet = packet
        self.acked = acked
        self.stats = stats
        self.buf = b""
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.packet)

    def data_received(self, data):
        if self.acked.done():
            return  # PINGRESP
        self.buf += data
        if len(self.buf) < CONNACK_LEN:
            return
        head = self.buf[:CONNACK_LEN]
        if head[0] == 0x20 and head[1] == 2 and head[3] == 0:
            self.acked.set_result(None)
        else:
            self.acked.set_exception(RuntimeError(f"CONNACK {head.hex()}"))

    def connection_lost(self, exc):
        if not self.acked.done():
            self.acked.set_exception(RuntimeError(f"closed before CONNACK: {exc}"))
        elif not self.stats["stopping"]:
            self.stats["dropped"] += 1


async def run(args) -> dict:
    host, _, port = args.broker.rpartition(":")
    host = host.strip("[]")
    port = int(port)
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(args.concurrency)
    stats = {"stopping": False, "dropped": 0, "errors": 0, "last": 0.0}
    times = []
    transports = []
    run_id = f"pyconn-{os.getpid()}-{int(time.time() * 1000) % 100_000_000}"
    rss_before = rss_kib(args.broker_pid) if args.broker_pid else None

    async def one(i: int):
        async with sem:
            acked = loop.create_future()
            packet = connect_packet(f"{run_id}-{i}", KEEP_ALIVE)
            t0 = time.perf_counter()
            try:
                transport, _ = await loop.create_connection(
                    lambda: Conn(packet, acked, stats), host, port
                )
                transports.append(transport)
                await asyncio.wait_for(acked, args.timeout)
            except Exception as e:  # counted and reported, the run goes on
                stats["errors"] += 1
                if stats["errors"] <= 5:
                    print(f"connect_rate: connection {i}: {e!r}", file=sys.stderr)
                return
            done = time.perf_counter()
            times.append(done - t0)
            stats["last"] = max(stats["last"], done)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(args.count)))
    connected = len(times)
    secs = stats["last"] - start if connected else 0.0
    # As the Rust scenario: let the broker settle, read its memory, hold.
    await asyncio.sleep(1)
    rss_after = rss_kib(args.broker_pid) if args.broker_pid else None
    deadline = time.monotonic() + args.hold
    ping = bytes([0xC0, 0])
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        await asyncio.sleep(min(left, KEEP_ALIVE / 2))
        if time.monotonic() < deadline:
            for t in transports:
                if not t.is_closing():
                    t.write(ping)
    still_up = connected - stats["dropped"]
    stats["stopping"] = True
    for t in transports:
        t.close()
    await asyncio.sleep(0)

    times.sort()

    def pct(p):
        if not times:
            return None
        idx = min(len(times) - 1, max(0, int(round(p / 100 * len(times) + 0.5)) - 1))
        return round(times[idx] * 1000, 3)

    note = ""
    result = {
        "scenario": "connections",
        "target": args.target or args.broker,
        "clients": str(args.count),
        "qos": None,
        "payload": None,
        "sent": args.count,
        "received": connected,
        "lost": args.count - connected,
        "dup": 0,
        "rate": round(connected / secs, 3) if secs > 0 else 0.0,
        "duration_s": round(secs, 3),
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "max_ms": round(times[-1] * 1000, 3) if times else None,
        "client": "python-asyncio",
        "concurrency": args.concurrency,
        "connected": connected,
        "still_up_after_hold": still_up,
        "hold_s": args.hold,
    }
    if rss_before is not None and rss_after is not None:
        per = (rss_after - rss_before) / connected if connected else 0.0
        result["rss_before_kib"] = rss_before
        result["rss_after_kib"] = rss_after
        result["rss_per_conn_kib"] = round(per, 2)
        note = f"RSS {per:.2f} KiB/conn ({rss_before} -> {rss_after} KiB); "
    result["note"] = note + (
        "python asyncio raw-socket client; msgs/s = connections/s; "
        "latency = TCP connect to CONNACK"
    )
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--broker", required=True, help="HOST:PORT")
    ap.add_argument("--target", help="label in the results (default: the address)")
    ap.add_argument("--count", type=int, default=10_000, help="connections to open")
    ap.add_argument("--concurrency", type=int, default=200, help="connections being set up at once")
    ap.add_argument("--hold", type=float, default=2.0, help="seconds to keep them open once all are up")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds allowed for each CONNACK")
    ap.add_argument("--broker-pid", type=int, help="the broker's pid: its VmRSS before and after")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if args.count < 1 or args.concurrency < 1:
        ap.error("--count and --concurrency must be at least 1")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count + 100
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
        except (ValueError, OSError):
            pass
    r = asyncio.run(run(args))
    if args.json:
        print(json.dumps(r))
    else:
        print(
            f"{r['target']}: {r['received']}/{r['sent']} connected, {r['rate']:.0f} connects/s, "
            f"CONNACK p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms max {r['max_ms']} ms"
        )
    return 0 if r["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
