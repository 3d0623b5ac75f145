"""Load test of the web app: N concurrent `gradio_client` clients on loopback for a bounded time.

    python -m bench.app_load                                # the demo model and demo collection (default)
    python -m bench.app_load --model runs/x/final --clients 8 --seconds 60
    python -m bench.app_load --clients 8 --hostile-every 4 --seconds 60   # then again, a hostile request mixed in
                                                                          # after every 4th request of each client

The app runs as `python app.py` in a subprocess (its own memory is measured); the peer loads the same model and
opens the same collection (read-only) in this process. Three phases, each endpoint called round-robin
(collection_info, a trivial call that measures the serving alone; classify, search_text, search_image, explain,
segment) with the demo's own images:
  1. sequential: one client, each served call followed by the same work done directly through the library (the peer),
     so "served / direct" is the cost of serving (HTTP, queue, upload, result images) measured side by side; the
     client's latency includes downloading every result image (12 thumbnails for a search), as a browser would;
  2. load: N clients for --seconds; p50/p95 latency per endpoint, errors, requests per second;
  3. the resident memory of the server process after warm-up, half-way through the load and at its end (flat means
     the second half added about nothing);
  4. with --hostile-every K (or --hostile H): the same N clients for --seconds again, each now also sending a hostile
     request after every K-th of its requests (or beside H clients sending only hostile requests, as fast as they
     are answered): overlong and formatting templates, a template naming a server file, huge and negative ids, a
     huge k, traversal in every path field (`hostile_calls`). Each must be refused by the app, and fast (an answer
     is a failure, and so is Gradio's generic "raised an exception" for an uncaught one: that request never reached
     the field under attack); the N clients' p95 is compared with phase 2's.
Claimed: the ratios (served/direct, load p50 / sequential p50, p95 with / without hostile clients), the absence of
errors and of memory growth, and that every hostile request was refused; milliseconds are printed for context (they
depend on the machine and on what else runs).

Size (~450 lines, over the ~400 guide): one benchmark, one run, four phases that share the server process,
the clients and the peer; a benchmark reads best top to bottom in one file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import report
from indexing.collection import Collection
from vlm import models
from vlm.models import Encoders
from vlm.readers.images import ImageRef
from vlm.segment import segment
from vlm.segment.explain import explain
from vlm.zeroshot import ClassifierCache, build_classifier, embed_images, top_k

ROOT = Path(__file__).resolve().parents[1]
LABELS = "red circle, blue square, green triangle, yellow star, grinning face, cat face, slice of pizza"
QUERY = "a red circle"
PHRASES = ["a red circle", "a blue square"]


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` (Linux /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, port: int, runs: str) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "app.py"), "--model", args.model, "--port", str(port), "--runs-dir", runs]
    cmd += ["--pretrained", args.pretrained] if args.pretrained else []
    cmd += ["--cache-dir", args.cache_dir] if args.cache_dir else []
    for folder in args.images:
        cmd += ["--images", folder]
    return subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for_server(proc: subprocess.Popen, url: str, timeout: float = 600.0):
    from gradio_client import Client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited with status {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            return Client(url, verbose=False)
        except Exception:  # not listening yet (it may be building the demo collection)
            time.sleep(1.0)
    raise SystemExit(f"the app did not answer at {url} within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def query_images(coll: Collection, n: int = 4) -> list[Path]:
    """A few files of the collection, to upload as queries."""
    found = []
    for image_id in range(coll.stats().count * 2):
        path = coll.image_path(image_id)
        if path is not None:
            found.append(path)
        if len(found) == n:
            return found
    raise SystemExit("the collection has too few image files to query with")


HOSTILE_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 120.0  # a request not answered by then is counted as hung, and the client goes on


def ask(client, *args, api_name: str):
    """`client.predict`, bounded: `TimeoutError` after REQUEST_TIMEOUT_S (gradio_client would wait forever)."""
    return client.submit(*args, api_name=api_name).result(timeout=REQUEST_TIMEOUT_S)


def served_calls(client, images: list[Path]) -> dict[str, Callable[[int], object]]:
    from gradio_client import handle_file

    def img(i: int):
        return handle_file(str(images[i % len(images)]))

    return {
        "collection_info": lambda i: ask(client, api_name="/collection_info"),  # baseline: the serving alone
        "classify": lambda i: ask(client, img(i), LABELS, "generic", 5, api_name="/classify"),
        "search_text": lambda i: ask(client, QUERY, 12, "", "", api_name="/search_text"),
        "search_image": lambda i: ask(client, img(i), 12, "", "", api_name="/search_image"),
        "explain": lambda i: ask(client, img(i), QUERY, api_name="/explain"),
        "segment": lambda i: ask(
            client, img(i), "\n".join(PHRASES), "training-free (dense)", "", 0.5, api_name="/segment"
        ),
    }


def hostile_calls(client, images: list[Path]) -> dict[str, Callable[[int], object]]:
    """Requests an attacker sends; each must be refused (raise). Uploads are real images, so that the refusal
    comes from the field under attack, not from a missing image."""
    from gradio_client import handle_file

    def img(i: int):
        return handle_file(str(images[i % len(images)]))

    def refuse(*args, api_name: str):  # a refusal takes well under a second; waiting longer only hides a hang
        return client.submit(*args, api_name=api_name).result(timeout=HOSTILE_TIMEOUT_S)

    train = ("vlm-tiny (from scratch, 32 px)", 1, 0, 8, 1e-3, 0)
    return {
        "long_template": lambda i: refuse(img(i), LABELS, "a {c} " + "x" * 20_000, 5, api_name="/classify"),
        "format_template": lambda i: refuse(img(i), LABELS, "{c:>999999999}", 5, api_name="/classify"),
        "file_template": lambda i: refuse(img(i), LABELS, "/etc/passwd", 5, api_name="/classify"),
        "huge_id": lambda i: refuse(10**30 + i, 12, "", "", api_name="/search_similar"),
        "negative_id": lambda i: refuse(-1 - i, QUERY, api_name="/explain_result"),
        "huge_k": lambda i: refuse(QUERY, 10**9, "", "", api_name="/search_text"),
        "traversal_folder": lambda i: refuse("../" * 12 + "etc", api_name="/add_folder"),
        "traversal_data": lambda i: refuse("/etc/passwd", None, *train, api_name="/train_start"),
        "traversal_model": lambda i: refuse("../../../../etc", "", api_name="/model_switch"),
        "traversal_decoder": lambda i: ask(
            client, img(i), "a", "learned decoder", "/root/../etc", 0.5, api_name="/segment"
        ),
    }


def direct_calls(enc: Encoders, coll: Collection, images: list[Path]) -> dict[str, Callable[[int], object]]:
    """The same work through the library, without the server (images are decoded each time, as uploads are)."""
    cache = ClassifierCache()

    def img(i: int):
        return ImageRef("file", str(images[i % len(images)])).open()

    def classify(i: int):
        clf = build_classifier(enc, LABELS, "generic", cache=cache)
        return top_k(clf.probs(embed_images(enc, [img(i)])), clf.labels, 5)

    return {
        "collection_info": lambda i: coll.stats(),
        "classify": classify,
        "search_text": lambda i: coll.search_text(QUERY, k=12),
        "search_image": lambda i: coll.search_image(img(i), k=12),
        "explain": lambda i: explain(enc, img(i), QUERY),
        "segment": lambda i: segment(enc, img(i), PHRASES),
    }


def timed(fn: Callable[[int], object], i: int) -> float:
    start = time.perf_counter()
    fn(i)
    return time.perf_counter() - start


def sequential(served: dict, direct: dict, rounds: int) -> tuple[dict, dict]:
    s_times, d_times = defaultdict(list), defaultdict(list)
    for i in range(rounds):
        for name in served:  # interleaved: served, then direct, for each endpoint and round
            s_times[name].append(timed(served[name], i))
            d_times[name].append(timed(direct[name], i))
    return s_times, d_times


def is_crash(error: Exception) -> bool:
    """Gradio's answer to an exception the app did not raise as a `gr.Error`: a wrong call (too few inputs, an
    endpoint that no longer exists) or a bug. Counting it as a refusal would pass a hostile request that never
    reached the field under attack."""
    return "has not enabled verbose error reporting" in str(error)


@dataclass
class Hostile:
    """What the hostile clients saw: time to each refusal, and any request that was answered instead."""

    refused: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    answered: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    hung: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # no answer within HOSTILE_TIMEOUT_S
    crashed: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # an uncaught exception, not a refusal
    messages: dict[str, str] = field(default_factory=dict)  # one refusal message per kind


def load(
    url: str, images: list[Path], clients: int, seconds: float, pid: int, hostile: int = 0, hostile_every: int = 0
) -> tuple[dict, dict, list, float, Hostile]:
    """Latencies and errors per endpoint from `clients` threads for `seconds` (each also sending a hostile request
    after every `hostile_every`-th request, and beside `hostile` threads sending only hostile requests); the server's
    RSS (MB) at each tenth of the time; the clients' (not hostile) requests per second."""
    from gradio_client import Client

    times: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, list[str]] = defaultdict(list)
    attacks = Hostile()
    lock = threading.Lock()
    series: list[float] = []
    started = time.monotonic()
    deadline = started + seconds

    def worker(w: int) -> None:
        client = Client(url, verbose=False)
        calls = served_calls(client, images)
        attacks_ = hostile_calls(client, images)
        names = list(calls)
        i = w
        while time.monotonic() < deadline:
            name = names[i % len(names)]
            try:
                elapsed = timed(calls[name], i)
                with lock:
                    times[name].append(elapsed)
            except Exception as e:  # counted and reported: the point of a load test
                with lock:
                    errors[name].append(f"{type(e).__name__}: {e}"[:200])
            i += 1
            if hostile_every and i % hostile_every == 0 and time.monotonic() < deadline:
                attack(attacks_, i // hostile_every + w)

    def attacker(w: int) -> None:
        calls = hostile_calls(Client(url, verbose=False), images)
        i = w
        while time.monotonic() < deadline:
            attack(calls, i)
            i += 1

    def attack(calls: dict[str, Callable[[int], object]], i: int) -> None:
        name = list(calls)[i % len(calls)]
        start = time.perf_counter()
        try:
            calls[name](i)
        except TimeoutError:
            with lock:
                attacks.hung[name] += 1
        except Exception as e:  # the expected outcome: the app refused (unless the call crashed the handler)
            with lock:
                if is_crash(e):
                    attacks.crashed[name] += 1
                else:
                    attacks.refused[name].append(time.perf_counter() - start)
                attacks.messages.setdefault(name, f"{type(e).__name__}: {e}"[:160])
        else:
            with lock:
                attacks.answered[name] += 1

    def sample() -> None:  # ten samples of the server's memory, the fifth at half time
        for k in range(1, 11):
            time.sleep(max(0.0, started + k * seconds / 10 - time.monotonic()))
            series.append(round(rss_mb(pid), 1))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    threads += [threading.Thread(target=attacker, args=(w,)) for w in range(hostile)]
    threads.append(threading.Thread(target=sample))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(len(v) for v in times.values())
    return times, errors, series, total / seconds, attacks


def pct(values: list[float], q: int) -> float:
    """The q-th percentile in milliseconds."""
    if len(values) < 2:
        return values[0] * 1e3 if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1e3


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="what the app loads (default: the demo model)")
    p.add_argument("--pretrained")
    p.add_argument("--images", action="append", default=[], help="search these folders instead of the demo collection")
    p.add_argument("--cache-dir", help="where the demo collection is kept (default: the app's)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--rounds", type=int, default=5, help="sequential rounds (served and direct, interleaved)")
    p.add_argument(
        "--hostile-every",
        type=int,
        default=0,
        help="then load again, each client sending a hostile request after every K-th request (0: no)",
    )
    p.add_argument("--hostile", type=int, default=0, help="... and/or beside this many hostile-only clients (0)")
    p.add_argument("--tag", help="write bench/results/app_load_TAG.json (default: app_load.json)")
    args = p.parse_args(argv)
    if args.clients < 1 or args.hostile < 0 or args.hostile_every < 0 or args.seconds <= 0 or args.rounds < 1:
        p.error("--clients, --seconds and --rounds must be positive, --hostile and --hostile-every at least 0")

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory() as runs:
        proc = start_server(args, port, runs)
        try:
            client = wait_for_server(proc, url)
            folder = client.predict(api_name="/collection_info")["folder"]
            enc = models.load(args.model, args.pretrained)
            coll = Collection.open(folder, read_only=True, encoders=enc)
            images = query_images(coll)
            served, direct = served_calls(client, images), direct_calls(enc, coll, images)
            sequential(served, direct, 1)  # warm-up: caches, first-call costs
            rss_warm = rss_mb(proc.pid)
            s_times, d_times = sequential(served, direct, args.rounds)
            times, errors, rss_series, rps, _ = load(url, images, args.clients, args.seconds, proc.pid)
            rss_half, rss_end = rss_series[4], rss_series[-1]
            if args.hostile or args.hostile_every:
                alone = hostile_alone(client, images)
                mixed = load(url, images, args.clients, args.seconds, proc.pid, args.hostile, args.hostile_every)
                mixed_times, mixed_errors, mixed_rss, mixed_rps, attacks = mixed
        finally:
            stop_server(proc)

    rows = []
    for name in s_times:
        seq, direct_ms = statistics.median(s_times[name]) * 1e3, statistics.median(d_times[name]) * 1e3
        p50 = pct(times[name], 50)
        rows.append({
            "endpoint": name,
            "direct_p50_ms": direct_ms,
            "served_p50_ms": seq,
            "served/direct": seq / direct_ms,
            "load_n": len(times[name]),
            "load_errors": len(errors[name]),
            "load_p50_ms": p50,
            "load_p95_ms": pct(times[name], 95),
            "load_p50/sequential": p50 / seq,
        })  # fmt: skip
    report(
        f"app_load_{args.tag}" if args.tag else "app_load",
        rows,
        model=args.model,
        clients=args.clients,
        seconds=args.seconds,
        requests_per_s=rps,
        errors={k: v[:3] for k, v in errors.items()},
        server_rss_mb={"after_warmup": rss_warm, "load_half": rss_half, "load_end": rss_end},
        server_rss_mb_each_tenth=rss_series,
        server_rss_growth_second_half_mb=rss_end - rss_half,
    )
    n_errors = sum(len(v) for v in errors.values())
    print(f"{rps:.1f} requests/s; server RSS {rss_warm:.0f} MB after warm-up, {rss_half:.0f} MB half-way, "
          f"{rss_end:.0f} MB at the end (each tenth: {rss_series}); {n_errors} errors")  # fmt: skip
    if args.hostile or args.hostile_every:
        hostile_report(args, times, mixed_times, mixed_errors, mixed_rss, mixed_rps, attacks, alone)


def hostile_alone(client, images: list[Path], rounds: int = 3) -> dict[str, float]:
    """Each hostile request on an idle server: the median milliseconds to its refusal (no queue to wait in)."""
    out = {}
    for name, call in hostile_calls(client, images).items():
        spent = []
        for i in range(rounds):
            start = time.perf_counter()
            with contextlib.suppress(Exception):  # refused, as it should be (answers are counted under load)
                call(i)
            spent.append(time.perf_counter() - start)
        out[name] = statistics.median(spent) * 1e3
    return out


def hostile_report(args, times, mixed_times, mixed_errors, mixed_rss, mixed_rps, attacks: Hostile, alone) -> None:
    """Phase 4: the clients' p95 without and with the hostile clients; each kind of hostile request refused, and how
    fast."""
    rows = []
    for name in times:
        rows.append({
            "endpoint": name,
            "p95_ms_alone": pct(times[name], 95),
            "p95_ms_with_hostile": pct(mixed_times[name], 95),
            "p95_ratio": pct(mixed_times[name], 95) / pct(times[name], 95),
            "n_with_hostile": len(mixed_times[name]),
            "errors_with_hostile": len(mixed_errors[name]),
        })  # fmt: skip
    every = [t for v in times.values() for t in v]
    every_mixed = [t for v in mixed_times.values() for t in v]
    refusals = {
        name: {"refused": len(attacks.refused[name]), "answered": attacks.answered.get(name, 0),
               "hung": attacks.hung.get(name, 0), "crashed": attacks.crashed.get(name, 0),
               "idle_server_ms": alone.get(name), "p50_ms": pct(attacks.refused[name], 50),
               "p95_ms": pct(attacks.refused[name], 95), "message": attacks.messages.get(name, "")}
        for name in sorted(set(attacks.refused) | set(attacks.answered) | set(attacks.hung) | set(attacks.crashed))
    }  # fmt: skip
    ratio = pct(every_mixed, 95) / pct(every, 95)
    report(
        f"app_load_hostile_{args.tag}" if args.tag else "app_load_hostile",
        rows,
        model=args.model,
        clients=args.clients,
        hostile_clients=args.hostile,
        hostile_every=args.hostile_every,
        seconds=args.seconds,
        requests_per_s_with_hostile=mixed_rps,
        all_endpoints_p95_ratio=ratio,
        hostile=refusals,
        errors_with_hostile={k: v[:3] for k, v in mixed_errors.items()},
        server_rss_mb_each_tenth_with_hostile=mixed_rss,
    )
    answered = sum(v["answered"] for v in refusals.values())
    refused = sum(v["refused"] for v in refusals.values())
    hung = sum(v["hung"] for v in refusals.values())
    crashed = sum(v["crashed"] for v in refusals.values())
    slowest = max((v["p95_ms"] for v in refusals.values()), default=float("nan"))
    idle = max(alone.values(), default=float("nan"))
    errors = sum(len(v) for v in mixed_errors.values())
    mix = f"a hostile request after every {args.hostile_every}" if args.hostile_every else ""
    mix += (" and " if mix else "") + f"{args.hostile} hostile clients" if args.hostile else ""
    print(f"with {mix}: {refused} hostile requests refused, {answered} answered, {hung} hung, {crashed} crashed "
          f"the handler instead of being refused; slowest kind's p95 {slowest:.0f} ms under load (queueing with the "
          f"others), {idle:.0f} ms on an idle server; the {args.clients} clients' p95 x{ratio:.2f} ({mixed_rps:.1f} "
          f"requests/s, {errors} errors); server RSS {mixed_rss}")  # fmt: skip


if __name__ == "__main__":
    main()
