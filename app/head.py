"""HEAD answered as GET is, without the body.

FastAPI routes answer the methods they declare, GET here, so a HEAD would be a 405:
this middleware runs the GET and sends its status and headers only. After them the
app is told the client left, which stops a streamed export under uvicorn (ASGI 2.3).
"""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        done = anyio.Event()
        read = False

        async def head_receive() -> Message:
            nonlocal read
            if not read:  # the request's (empty) body, then a disconnect once the headers are out
                read = True
                return await receive()
            await done.wait()
            return {"type": "http.disconnect"}

        async def head_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                await send(message)
            elif message["type"] == "http.response.body" and not done.is_set():
                done.set()
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app({**scope, "method": "GET"}, head_receive, head_send)
