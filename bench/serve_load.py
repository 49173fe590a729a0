"""Load-test `tuneloop serve` on loopback: the dynamic batcher against the same server one request at a time,
or (--compare-log) the server without and with its traffic log.

    .venv/bin/python bench/serve_load.py [--model smollm2-135m-instruct|tiny|FOLDER] [--duration 30]
                                         [--clients 1,8,32] [--max-tokens 32] [--max-batch 32]
                                         [--compare-log [--rounds 4] [--control]]

For each mode it starts `tuneloop serve` itself on 127.0.0.1 (a free port, no request log), runs
1, 8 and 32 concurrent clients for --duration seconds each (every client sends chat completions
back to back), then stops the server:
- batched: `--max-batch N` (requests that arrive together are decoded together);
- one at a time: `--max-batch 1`.
Prints requests/s, output tokens/s, p50/p95 latency and failed requests per level, and the
batching ratio (batched tokens/s over one-at-a-time tokens/s) at each client count.

With --compare-log it instead starts two batched servers, one without a traffic log and one with
`--log-file` (a fresh SQLite file, PII redacted with the default data.pii settings), and loads them
in turn, --rounds alternating slices of each client count, so that a change in the machine's load
hits both alike. It prints the p50 latency ratio with over without the log at each client count, with
a 95% bootstrap interval (the median of a few hundred latencies moves by several percent on its own),
and how many requests the log holds and dropped (from the file and /metrics), so a log that
silently wrote nothing cannot look free. --control adds a third server, again without the log, and
prints how far two identical servers' p50 differ: an overhead inside that spread is noise. Everything is
bounded: clients stop starting requests at the deadline, every request has a timeout, and the
server is stopped whatever happens. Traffic only goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

TOPICS = "password invoice refund login account billing plan upgrade cancel email order shipping".split()


@dataclass
class Level:
    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    failures: int = 0

    def line(self) -> str:
        done = len(self.latencies)
        p50 = statistics.median(self.latencies) if done else float("nan")
        p95 = _percentile(self.latencies, 95) if done else float("nan")
        return (
            f"{self.clients:3d} clients: {done / self.seconds:7.2f} requests/s, {self.tokens / self.seconds:8.1f} "
            f"output tokens/s, p50 {p50:6.3f} s, p95 {p95:6.3f} s, {done} requests, {self.failures} failed"
        )

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    errors: IO[str]  # its stderr: a file, not a pipe, which could fill unread and stall the server

    def stderr(self) -> str:
        self.errors.seek(0)
        return self.errors.read()[-4000:]


def start_server(model: str, port: int, max_batch: int, max_tokens: int, log_file: Path | None = None) -> Server:
    argv = [sys.executable, "-m", "tuneloop", "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--max-batch", str(max_batch), "--max-concurrent", "512", "--max-tokens", str(max_tokens)]
    argv += ["--no-log"] if log_file is None else ["--log-file", str(log_file)]
    errors = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by stop_server)
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors, text=True, start_new_session=True)
    return Server(process, errors)


def stop_server(server: Server) -> None:
    process = server.process
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)  # uvicorn shuts down cleanly on SIGINT
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    server.errors.close()


async def wait_ready(url: str, server: Server, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise SystemExit(f"the server exited early:\n{server.stderr()}")
            try:
                if (await client.get(url + "/health", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.25)
    raise SystemExit(f"the server did not answer /health within {timeout:.0f} s")


async def run_level(url: str, model: str, clients: int, duration: float, max_tokens: int) -> Level:
    """`clients` concurrent clients, each sending requests back to back until the deadline."""
    import httpx

    level = Level(clients)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=600) as http:

        async def client(i: int) -> None:
            rng = random.Random(i)
            while time.monotonic() < deadline:
                words = " ".join(rng.choice(TOPICS) for _ in range(rng.randint(4, 20)))
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": f"Ticket {i}: {words}. What should I do?"}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                }
                start = time.monotonic()
                try:
                    r = await http.post("/v1/chat/completions", json=body)
                    r.raise_for_status()
                    level.tokens += r.json()["usage"]["completion_tokens"]
                    level.latencies.append(time.monotonic() - start)
                except (httpx.HTTPError, KeyError, ValueError):
                    level.failures += 1

        started = time.monotonic()
        deadline = started + duration
        await asyncio.gather(*(client(i) for i in range(clients)))
        level.seconds = time.monotonic() - started  # includes finishing the requests in flight at the deadline
    return level


async def bench_mode(model: str, max_batch: int, levels: list[int], duration: float, max_tokens: int) -> list[Level]:
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(model, port, max_batch, max_tokens)
    try:
        await wait_ready(url, server)
        async with httpx.AsyncClient() as http:
            served = (await http.get(url + "/v1/models")).json()["data"][0]["id"]
        await run_level(url, served, 1, min(duration, 3), max_tokens)  # warm-up, not reported
        return [await run_level(url, served, n, duration, max_tokens) for n in levels]
    finally:
        stop_server(server)


def _sample(metrics: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise SystemExit(f"/metrics has no {name}")


def _p50(level: Level) -> float:
    return statistics.median(level.latencies) if level.latencies else float("nan")


def _ratio_interval(top: Level, bottom: Level, confidence: float = 0.95) -> tuple[float, float]:
    """A bootstrap interval for p50(top) / p50(bottom), each side resampled on its own (the requests of two
    servers are not paired). It says whether a few percent is the log or the spread of the medians."""
    import numpy as np
    from scipy.stats import bootstrap

    if len(top.latencies) < 2 or len(bottom.latencies) < 2:
        return float("nan"), float("nan")
    res = bootstrap(
        (top.latencies, bottom.latencies),
        lambda a, b, axis=-1: np.median(a, axis=axis) / np.median(b, axis=axis),
        n_resamples=2000,
        confidence_level=confidence,
        method="percentile",
        random_state=0,
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


async def compare_log(model: str, args: argparse.Namespace, levels: list[int], log_file: Path) -> None:
    """Two batched servers, without and with --log-file, up at once but loaded in turn: each client count
    runs in `--rounds` alternating slices (A B, B A, A B, ...), so a change in the machine's load hits both
    alike. Prints each, the p50 latency ratio per client count, and what the log stored and dropped."""
    import httpx

    from tuneloop import traffic

    servers, urls, names = [], [], []
    # A third server, a second one without the log, measures the noise floor: the p50 ratio of two
    # identical servers loaded the same way. An overhead inside that spread is not the log's.
    sides = (None, log_file, None) if args.control else (None, log_file)
    try:
        for log in sides:
            port = _free_port()
            servers.append(start_server(model, port, args.max_batch, args.max_tokens, log))
            urls.append(f"http://127.0.0.1:{port}")
        async with httpx.AsyncClient() as http:
            for url, server in zip(urls, servers, strict=True):
                await wait_ready(url, server)
                names.append((await http.get(url + "/v1/models")).json()["data"][0]["id"])
                await run_level(url, names[-1], 1, min(args.duration, 3), args.max_tokens)  # warm-up
        results: list[list[Level]] = [[Level(n) for n in levels] for _ in sides]
        slice_s = args.duration / args.rounds
        order = list(range(len(sides)))
        for i, n in enumerate(levels):
            for r in range(args.rounds):
                for side in order if r % 2 == 0 else order[::-1]:  # A B, B A, ...: the order favours neither
                    part = await run_level(urls[side], names[side], n, slice_s, args.max_tokens)
                    total = results[side][i]
                    total.seconds += part.seconds
                    total.latencies += part.latencies
                    total.tokens += part.tokens
                    total.failures += part.failures
        async with httpx.AsyncClient() as http:
            dropped = _sample((await http.get(urls[1] + "/metrics")).text, "tuneloop_log_dropped_total")
    finally:
        for server in servers:
            stop_server(server)  # the logged server writes what is queued before it exits
    labels = ["without a traffic log", "with --log-file (PII redaction on)", "without a traffic log (control)"]
    for label, side in zip(labels, range(len(sides)), strict=False):
        print(label)
        for level in results[side]:
            print("  " + level.line())
    sent = sum(len(level.latencies) + level.failures for level in results[1])
    stored = len(traffic.read_requests(log_file))
    print(f"traffic log: {stored} requests stored, {dropped:g} dropped, of {sent} sent after the warm-up")
    for i, (plain, logged) in enumerate(zip(results[0], results[1], strict=True)):
        ratio = _p50(logged) / _p50(plain) if plain.latencies and logged.latencies else float("nan")
        low, high = _ratio_interval(logged, plain)
        line = (
            f"log overhead at {plain.clients} clients: p50 {ratio:.3f}x without the log ({(ratio - 1) * 100:+.1f}%, "
            f"95% interval {(low - 1) * 100:+.1f}% to {(high - 1) * 100:+.1f}%)"
        )
        if args.control:
            same = _p50(results[2][i]) / _p50(plain) if results[2][i].latencies else float("nan")
            low, high = _ratio_interval(results[2][i], plain)
            line += (
                f"; two servers without it differ by {(same - 1) * 100:+.1f}% "
                f"({(low - 1) * 100:+.1f}% to {(high - 1) * 100:+.1f}%)"
            )
        print(line)


def tiny_model(folder: Path) -> str:
    from tuneloop.tiny import make_tiny_llama

    return str(make_tiny_llama(folder))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a model name or folder, or 'tiny'")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per client count")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request")
    parser.add_argument("--max-batch", type=int, default=32, help="the batched server's --max-batch")
    parser.add_argument(
        "--compare-log", action="store_true", help="compare the batched server without and with its traffic log"
    )
    parser.add_argument("--rounds", type=int, default=4, help="--compare-log: alternating slices per client count")
    parser.add_argument(
        "--control", action="store_true", help="--compare-log: a second server without the log, for the noise floor"
    )
    args = parser.parse_args()
    levels = [int(n) for n in args.clients.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(Path(tmp) / "tiny") if args.model == "tiny" else args.model
        print(f"model {args.model}, {args.duration:g} s per level, max_tokens {args.max_tokens}, loopback only")
        if args.compare_log:
            asyncio.run(compare_log(model, args, levels, Path(tmp) / "traffic.sqlite"))
            return
        results = {}
        for label, max_batch in ((f"batched (--max-batch {args.max_batch})", args.max_batch), ("one at a time", 1)):
            results[label] = asyncio.run(bench_mode(model, max_batch, levels, args.duration, args.max_tokens))
            print(label)
            for level in results[label]:
                print("  " + level.line())
    batched, single = results.values()
    for b, s in zip(batched, single, strict=True):
        ratio = b.tokens_per_second / s.tokens_per_second if s.tokens_per_second else float("nan")
        print(f"batching ratio at {b.clients} clients: {ratio:.2f}x the output tokens/s of one at a time")


if __name__ == "__main__":
    main()
