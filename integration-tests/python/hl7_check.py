"""Validates HL7 v2.5.1 messages with hl7apy at its STRICT level.

Usage: hl7_check.py FILE...  Each file holds one message, segments ended
by carriage returns. Prints "ok <type> <MSH-10> <OBR-25>" per valid
message; exits 1 naming the first invalid one and why.
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
    obr = message.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION.OBR
    print(f"ok {message.MSH.MSH_9.to_er7()} {message.MSH.MSH_10.to_er7()} {obr.OBR_25.to_er7()}")
