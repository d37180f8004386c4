#!/usr/bin/env python3
"""A TCP proxy that adds a fixed latency to requests, like a remote bucket seen from a CI runner.

Usage: latency-proxy.py LISTEN_PORT UPSTREAM_PORT DELAY_MS

Listens on 127.0.0.1:LISTEN_PORT and forwards each connection to 127.0.0.1:UPSTREAM_PORT.
Client-to-server data goes through a delay line: every chunk read from the client is written to
the server at its arrival time + DELAY_MS, in order, and chunks do not queue behind each other's
delay (a chunk that arrives 1 ms after another is forwarded 1 ms after it). Server-to-client data
passes through without delay. A client's end of stream is forwarded with the same delay.

On SIGUSR1 it prints one line of totals to stdout: connections accepted, HTTP responses seen
from the server (status lines), bytes each way. On SIGUSR2 it prints one line of the requests
seen from clients, by S3 operation as R2 bills them (`PutObject=3 HeadObject=7 ...`), told apart
by method and query string. Request lines are found in the client's byte stream as responses are
in the server's: a body would have to hold one to be miscounted. Python standard library only.
"""
import asyncio
import re
import signal
import sys

# Bytes per connection waiting in the delay line before reading from the client pauses (TCP
# back-pressure, like a link's window): bounds memory when a client sends faster than 30 ms apart.
MAX_IN_FLIGHT = 16 << 20
CHUNK = 64 << 10

totals = {"connections": 0, "responses": 0, "up_bytes": 0, "down_bytes": 0}
operations = {}
REQUEST_LINE = re.compile(rb"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP/1\.1\r\n")


def operation(method, target):
    """The S3 operation of a request, by R2's names (path-style addressing)."""
    path, _, query = target.partition(b"?")
    names = {part.split(b"=")[0] for part in query.split(b"&") if part}
    if method == b"PUT":
        return "UploadPart" if b"partNumber" in names else "PutObject"
    if method == b"POST":
        if b"uploads" in names:
            return "CreateMultipartUpload"
        if b"uploadId" in names:
            return "CompleteMultipartUpload"
        return "DeleteObjects" if b"delete" in names else "POST"
    if method == b"GET":
        if b"list-type" in names:
            return "ListObjectsV2"
        return "ListMultipartUploads" if b"uploads" in names else "GetObject"
    if method == b"HEAD":
        return "HeadObject"
    return "AbortMultipartUpload" if b"uploadId" in names else "DeleteObject"


def count_requests(seen, tail_length):
    """Counts the request lines that end after the first tail_length bytes of seen."""
    for match in REQUEST_LINE.finditer(seen):
        if match.end() > tail_length:
            name = operation(match.group(1), match.group(2))
            operations[name] = operations.get(name, 0) + 1


async def delay_line(reader, writer, delay):
    """Client to server: each chunk is written at its arrival time + delay."""
    loop = asyncio.get_running_loop()
    line = asyncio.Queue()
    in_flight = 0
    room = asyncio.Event()
    room.set()

    async def receive():
        nonlocal in_flight
        tail = b""
        while True:
            chunk = await reader.read(CHUNK)
            seen = tail + chunk
            count_requests(seen, len(tail))
            tail = seen[-2048:]
            line.put_nowait((loop.time() + delay, chunk))
            if not chunk:
                return
            in_flight += len(chunk)
            if in_flight > MAX_IN_FLIGHT:
                room.clear()
                await room.wait()

    async def send():
        nonlocal in_flight
        while True:
            due, chunk = await line.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()
            totals["up_bytes"] += len(chunk)
            in_flight -= len(chunk)
            if in_flight <= MAX_IN_FLIGHT:
                room.set()

    receiving = asyncio.create_task(receive())
    try:
        await send()
        await receiving
    finally:
        receiving.cancel()


async def pass_through(reader, writer):
    """Server to client, undelayed; counts HTTP status lines (no response body here holds one)."""
    tail = b""
    while True:
        chunk = await reader.read(CHUNK)
        if not chunk:
            if writer.can_write_eof():
                writer.write_eof()
            return
        seen = tail + chunk
        totals["responses"] += seen.count(b"HTTP/1.") - tail.count(b"HTTP/1.")
        tail = seen[-7:]
        totals["down_bytes"] += len(chunk)
        writer.write(chunk)
        await writer.drain()


async def handle(client_reader, client_writer, upstream_port, delay):
    totals["connections"] += 1
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
    except OSError as e:
        print(f"latency-proxy: cannot connect upstream: {e}", file=sys.stderr, flush=True)
        client_writer.close()
        return
    up = asyncio.create_task(delay_line(client_reader, server_writer, delay))
    down = asyncio.create_task(pass_through(server_reader, client_writer))
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        # The client finished sending: the server may still be answering.
        if up in done and not up.cancelled() and up.exception() is None:
            await asyncio.wait({down})
    finally:
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        for writer in (server_writer, client_writer):
            writer.close()


def report():
    print(" ".join(f"{k}={v}" for k, v in totals.items()), flush=True)


def report_operations():
    print(" ".join(f"{k}={v}" for k, v in sorted(operations.items())) or "none", flush=True)


async def main():
    if len(sys.argv) != 4:
        sys.exit("usage: latency-proxy.py LISTEN_PORT UPSTREAM_PORT DELAY_MS")
    listen_port, upstream_port, delay_ms = (int(a) for a in sys.argv[1:])
    delay = delay_ms / 1000
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, upstream_port, delay), "127.0.0.1", listen_port, backlog=1024)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, report)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, report_operations)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
