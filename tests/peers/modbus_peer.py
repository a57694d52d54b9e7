"""An independent Modbus server (pymodbus) holding the register vectors of
tests/vectors/modbus-words.json, for the agent's interoperability tests.

    python modbus_peer.py VECTORS.json tcp PORT
    python modbus_peer.py VECTORS.json rtu /dev/pts/N

Holding registers from address 0, in this order: float32 cases, float32_extra
(from their wire bytes), uint32 cases, int16_scaled registers, string registers.
Prints READY once the server is set up; exits when stdin closes.
"""

import asyncio
import json
import sys

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import ModbusSerialServer, ModbusTcpServer


def registers(v):
    regs = []
    for c in v["float32"]:
        regs += c["registers"]
    for c in v["float32_extra"]:
        b = bytes.fromhex(c["wire_hex"].replace(" ", ""))
        regs += [int.from_bytes(b[i : i + 2], "big") for i in range(0, len(b), 2)]
    for c in v["uint32"]:
        regs += c["registers"]
    for c in v["int16_scaled"]:
        regs.append(c["register"])
    for c in v["string"]:
        regs += c["registers"]
    return regs


async def main():
    vectors, mode, where = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(vectors) as f:
        regs = registers(json.load(f))
    # pymodbus maps request address 0 to block address 1.
    block = ModbusSequentialDataBlock(1, regs + [0] * 16)
    context = ModbusServerContext(devices=ModbusDeviceContext(hr=block), single=True)
    if mode == "tcp":
        server = ModbusTcpServer(context, address=("127.0.0.1", int(where)))
    else:
        server = ModbusSerialServer(context, port=where, baudrate=19200)
    task = asyncio.create_task(server.serve_forever())
    await asyncio.sleep(0.3)
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await server.shutdown()
    task.cancel()


asyncio.run(main())
