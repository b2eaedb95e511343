"""An HTTP/3 client for the tests, built on aioquic (an implementation independent of
the node's quinn + h3). Reads a JSON job from argv[1]:
  {"host": "127.0.0.1", "port": 4433, "sni": "app.test", "ca": "/path/ca.crt",
   "requests": [{"method": "GET", "authority": "app.test", "path": "/",
                 "headers": [["name", "value"]], "body": "..."}]}
and prints a JSON list of {"status": int, "headers": {name: value}, "body": str}.
"""

import asyncio
import json
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._http = H3Connection(self._quic)
        self._waiters = {}
        self._responses = {}

    def quic_event_received(self, event):
        for ev in self._http.handle_event(event):
            if isinstance(ev, (HeadersReceived, DataReceived)):
                r = self._responses.setdefault(ev.stream_id, {"headers": [], "body": b""})
                if isinstance(ev, HeadersReceived):
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
        }


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
    async with connect(job["host"], job["port"], configuration=config, create_protocol=Client, wait_connected=not early) as client:
        results = await asyncio.gather(*(client.request(r) for r in job["requests"]))
        out.extend(results)
        if early:
            out.append({"early_data_accepted": bool(client._quic.tls.early_data_accepted)})
        if job.get("report_retry"):
            # Whether the server made this client prove its address (a Retry) first.
            out.append({"retried": client._quic._retry_count > 0})
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(json.loads(sys.argv[1])), 30))
