"""Runs inside a guest (stdlib only): HTTP that says what it got, and a WebSocket echo, on port 8000."""

import asyncio
import base64
import hashlib
import struct

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def websocket(reader, writer, key):
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    writer.write(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
        ).encode()
    )
    while True:
        first, second = await reader.readexactly(2)
        opcode, size = first & 15, second & 127
        if size == 126:
            size = struct.unpack("!H", await reader.readexactly(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", await reader.readexactly(8))[0]
        mask = await reader.readexactly(4)
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(size)))
        if opcode == 8:
            writer.write(b"\x88\x00")
            await writer.drain()
            return
        if opcode in (1, 2):
            reply = b"echo:" + data
            length = bytes([len(reply)]) if len(reply) < 126 else bytes([126]) + struct.pack("!H", len(reply))
            writer.write(bytes([0x80 | opcode]) + length + reply)
            await writer.drain()


async def handle(reader, writer):
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    lines = head.split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    pairs = (line.partition(":") for line in lines[1:] if line)
    headers = {key.strip().lower(): value.strip() for key, _, value in pairs}
    if headers.get("upgrade", "").lower() == "websocket":
        await websocket(reader, writer, headers["sec-websocket-key"])
    else:
        size = int(headers.get("content-length", 0))
        body = await reader.readexactly(size) if size else b""
        auth = headers.get("authorization", "-")
        reply = f"guest {method} {path} got {len(body)} bytes auth={auth}".encode()
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(reply)
        writer.write(head + reply)
        await writer.drain()
    writer.close()


async def main():
    server = await asyncio.start_server(handle, "0.0.0.0", 8000)
    async with server:
        await server.serve_forever()


asyncio.run(main())
