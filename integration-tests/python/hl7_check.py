"""Validates HL7 v2.5.1 messages with hl7apy at its STRICT level.

Usage: hl7_check.py FILE...  Each file holds one message, segments ended
by carriage returns. Prints "ok <type> <MSH-10> <OBR-25>" per valid ORU
("ok <type> <MSH-10> <MSA-1> [<ERR-2> <ERR-3.1>]" per ACK); exits 1
naming the first invalid one and why.
"""

import sys

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

for path in sys.argv[1:]:
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    try:
        message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        message.validate()
    except Exception as e:
        print(f"invalid {path}: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    if message.name == "ORU_R01":
        status = message.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION.OBR.OBR_25.to_er7()
    else:  # an ACK: its code, and where its ERR says the fault is
        status = message.MSA.MSA_1.to_er7()
        # Table values hl7apy does not check: MSA-1 (0008), ERR-4 (0516).
        if status not in {"AA", "AE", "AR", "CA", "CE", "CR"}:
            print(f"invalid {path}: MSA-1 {status!r} is not in table 0008", file=sys.stderr)
            sys.exit(1)
        if message.children.get("ERR") and message.ERR.ERR_4.to_er7() not in {"E", "W", "I", "F"}:
            print(f"invalid {path}: ERR-4 is not in table 0516", file=sys.stderr)
            sys.exit(1)
        if message.children.get("ERR"):
            status += " " + message.ERR.ERR_2.to_er7() + " " + message.ERR.ERR_3.ERR_3_1.to_er7()
    print(f"ok {message.MSH.MSH_9.to_er7()} {message.MSH.MSH_10.to_er7()} {status}")
