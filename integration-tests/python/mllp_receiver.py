"""An HL7 v2 receiver over MLLP (python-hl7), as a RIS would run one: each
message is validated with hl7apy at its STRICT level and answered with an
ACK echoing its MSH-10 in MSA-2 — AA when valid, AR when not; the first
`--busy N` messages get AE (try again) instead.

Usage: mllp_receiver.py PORT_FILE RECORD_FILE [--busy N] [--refuse-first STATUS]
With --refuse-first, the first message whose OBR-25 is STATUS gets AR
(refused for good), as a RIS refuses a correction it cannot match.
Writes the port it listens on to PORT_FILE, and one JSON line per message
received to RECORD_FILE: {"control_id", "ack", "obr25", "error"}.
"""

import asyncio
import json
import sys

import hl7
from hl7.mllp import start_hl7_server
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

port_file, record_file = sys.argv[1], sys.argv[2]
busy = int(sys.argv[sys.argv.index("--busy") + 1]) if "--busy" in sys.argv else 0
refuse = sys.argv[sys.argv.index("--refuse-first") + 1] if "--refuse-first" in sys.argv else None
seen = 0


def answer(message, code, text=""):
    control_id = str(message.segment("MSH")[10])
    return hl7.parse(
        "MSH|^~\\&|RIS|ACME|MERIDIAN|us-east|20261104000000||ACK^R01^ACK|A" + control_id[:19] + "|P|2.5.1\r"
        + f"MSA|{code}|{control_id}|{text}\r"
    )


async def received(reader, writer):
    global seen, refuse
    try:
        while not writer.is_closing():
            message = await reader.readmessage()
            seen += 1
            text = str(message)
            record = {"control_id": str(message.segment("MSH")[10]), "error": ""}
            try:
                parsed = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
                parsed.validate()
                obr = parsed.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION.OBR
                record["obr25"] = obr.OBR_25.to_er7()
                code = "AE" if seen <= busy else "AA"
                if refuse is not None and record["obr25"] == refuse:
                    code, refuse = "AR", None
            except Exception as e:  # what the validator said, for the test
                record["error"] = f"{type(e).__name__}: {e}"
                code = "AR"
            record["ack"] = code
            with open(record_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            said = {"AE": "busy", "AR": record["error"][:80] or "no such order"}.get(code, "")
            writer.writemessage(answer(message, code, said))
            await writer.drain()
    except asyncio.IncompleteReadError:
        pass
    finally:
        writer.close()


async def main():
    server = await start_hl7_server(received, host="127.0.0.1", port=0)
    port = server.sockets[0].getsockname()[1]
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    import os
    os.replace(port_file + ".tmp", port_file)
    async with server:
        await server.serve_forever()


asyncio.run(main())
