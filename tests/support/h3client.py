"""An HTTP/3 client for the tests, built on aioquic (an implementation independent of
the node's quinn + h3). Reads a JSON job from argv[1]:
  {"host": "127.0.0.1", "port": 4433, "sni": "app.test", "ca": "/path/ca.crt",
   "zero_rtt": false, "report_retry": false,
   "replay_first_flight": seconds, "intercept_first_flight": seconds (both optional),
   "requests": [{"method": "GET", "authority": "app.test", "path": "/",
                 "headers": [["name", "value"]], "body": "..."}]}
and prints a JSON list of {"status": int, "headers": {name: value}, "body": str}.
"""

import asyncio
import json
import socket
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Client(QuicConnectionProtocol):
    intercept_next = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._http = H3Connection(self._quic)
        self._waiters = {}
        self._responses = {}
        # The datagrams sent before the server's first answer: the client's first
        # flight (Initial, and 0-RTT packets when resuming), for the replay test.
        self.first_flight = []
        self._recording = True
        # Whether this client's datagrams are held back (recorded, never sent): an
        # on-path attacker who intercepts them.
        self.intercepted = Client.intercept_next
        Client.intercept_next = False

    def connection_made(self, transport):
        outer = self

        class Recorder:
            def __getattr__(self, name):
                return getattr(transport, name)

            def sendto(self, data, addr=None):
                if outer._recording:
                    outer.first_flight.append((data, addr))
                if not outer.intercepted:
                    transport.sendto(data, addr)

        super().connection_made(Recorder())

    def datagram_received(self, data, addr):
        self._recording = False
        super().datagram_received(data, addr)

    def quic_event_received(self, event):
        for ev in self._http.handle_event(event):
            if isinstance(ev, (HeadersReceived, DataReceived)):
                r = self._responses.setdefault(ev.stream_id, {"headers": [], "body": b""})
                if isinstance(ev, HeadersReceived):
                    fields = dict(ev.headers)
                    if fields.get(b":status", b"").startswith(b"1"):
                        # An interim response (103 Early Hints): kept apart.
                        r.setdefault("interim", []).append({k.decode(): v.decode() for k, v in ev.headers})
                    else:
                        r["headers"] += ev.headers
                else:
                    r["body"] += ev.data
                if ev.stream_ended:
                    waiter = self._waiters.pop(ev.stream_id, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(r)

    async def request(self, req):
        sid = self._quic.get_next_available_stream_id()
        body = req.get("body", "").encode()
        headers = [
            (b":method", req["method"].encode()),
            (b":scheme", b"https"),
            (b":authority", req["authority"].encode()),
            (b":path", req["path"].encode()),
        ] + [(k.lower().encode(), v.encode()) for k, v in req.get("headers", [])]
        self._http.send_headers(sid, headers, end_stream=not body)
        if body:
            self._http.send_data(sid, body, end_stream=True)
        waiter = self._loop.create_future()
        self._waiters[sid] = waiter
        self.transmit()
        r = await asyncio.wait_for(waiter, 10)
        fields = {k.decode(): v.decode() for k, v in r["headers"]}
        return {
            "status": int(fields.pop(":status")),
            "headers": fields,
            "body": r["body"].decode(errors="replace"),
            "interim": r.get("interim", []),
        }


async def replay(flight, wait):
    """Sends recorded datagrams from a socket of its own, then ignores answers for `wait` s."""
    _, addr = flight[0]
    family = socket.AF_INET6 if len(addr) == 4 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        for data, to in flight:
            s.sendto(data, to)
        await asyncio.sleep(wait)


async def main(job):
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=job["sni"])
    config.load_verify_locations(job["ca"])
    early = job.get("zero_rtt", False)
    if early:
        # A first connection earns a session ticket; the second sends its requests as
        # 0-RTT early data, before the handshake completes.
        tickets = []
        async with connect(
            job["host"], job["port"], configuration=config, create_protocol=Client,
            session_ticket_handler=tickets.append,
        ) as client:
            await client.request({"method": "GET", "authority": job["requests"][0]["authority"], "path": "/"})
            await asyncio.sleep(0.2)
        if not tickets:
            raise SystemExit("no session ticket")
        config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=job["sni"])
        config.load_verify_locations(job["ca"])
        config.session_ticket = tickets[-1]
    out = []
    if job.get("intercept_first_flight"):
        # An on-path attacker holds back the first flight of a client resuming with
        # early data, then sends it as its own: the server may accept the early data,
        # but nobody can complete the handshake.
        Client.intercept_next = True
        async with connect(job["host"], job["port"], configuration=config, create_protocol=Client, wait_connected=False) as client:
            pending = [asyncio.ensure_future(client.request(r)) for r in job["requests"]]
            await asyncio.sleep(0.1)
            flight = list(client.first_flight)
            for p in pending:
                p.cancel()
        await replay(flight, job["intercept_first_flight"])
        out.append({"replayed_datagrams": len(flight)})
        print(json.dumps(out))
        return
    async with connect(job["host"], job["port"], configuration=config, create_protocol=Client, wait_connected=not early) as client:
        results = await asyncio.gather(*(client.request(r) for r in job["requests"]))
        out.extend(results)
        if early:
            out.append({"early_data_accepted": bool(client._quic.tls.early_data_accepted)})
        if job.get("report_retry"):
            # Whether the server made this client prove its address (a Retry) first.
            out.append({"retried": client._quic._retry_count > 0})
        flight = client.first_flight
    if job.get("replay_first_flight"):
        # Somebody who captured the flight sends it again from another address, once
        # the original connection has drained (so its connection ID is free).
        await asyncio.sleep(1)
        await replay(flight, job["replay_first_flight"])
        out.append({"replayed_datagrams": len(flight)})
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(json.loads(sys.argv[1])), 30))
