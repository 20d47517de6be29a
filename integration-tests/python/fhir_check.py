"""Validates FHIR R4 resources with fhir.resources 6.4.0 (FHIR 4.0.1).

Usage: fhir_check.py FILE...  Each file holds one resource as JSON. Prints
"ok <resourceType> <status>" per valid file; exits 1 naming the first
invalid one and why.
"""

import json
import sys

import fhir.resources
from fhir.resources import construct_fhir_element

assert fhir.resources.__fhir_version__ == "4.0.1", fhir.resources.__fhir_version__

for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    try:
        resource = construct_fhir_element(data["resourceType"], data)
    except Exception as e:  # the validator's own error names the element
        print(f"invalid {path}: {e}", file=sys.stderr)
        sys.exit(1)
    # DiagnosticReport.status has a required binding fhir.resources does
    # not check: check it here.
    statuses = {"registered", "partial", "preliminary", "final", "amended", "corrected",
                "appended", "cancelled", "entered-in-error", "unknown"}
    if data["resourceType"] == "DiagnosticReport" and data.get("status") not in statuses:
        print(f"invalid {path}: status {data.get('status')!r} is not in its required value set", file=sys.stderr)
        sys.exit(1)
    # The required bindings of the other resources Meridian sends or takes.
    issue_types = {"invalid", "structure", "required", "value", "invariant", "security", "login", "unknown",
                   "expired", "forbidden", "suppressed", "processing", "not-supported", "duplicate",
                   "multiple-matches", "not-found", "deleted", "too-long", "code-invalid", "extension",
                   "too-costly", "business-rule", "conflict", "transient", "lock-error", "no-store",
                   "exception", "timeout", "incomplete", "throttled", "informational"}
    if data["resourceType"] == "OperationOutcome":
        for issue in data["issue"]:
            if issue["severity"] not in {"fatal", "error", "warning", "information"} or issue["code"] not in issue_types:
                print(f"invalid {path}: issue {issue!r} has a severity or code outside its value set", file=sys.stderr)
                sys.exit(1)
    if data["resourceType"] == "ServiceRequest":
        bound = {"status": {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"},
                 "intent": {"proposal", "plan", "directive", "order", "original-order", "reflex-order",
                            "filler-order", "instance-order", "option"},
                 "priority": {"routine", "urgent", "asap", "stat"}}
        for key, allowed in bound.items():
            if key in data and data[key] not in allowed:
                print(f"invalid {path}: {key} {data[key]!r} is not in its required value set", file=sys.stderr)
                sys.exit(1)
    # Round trip: what the model keeps is what was sent.
    again = json.loads(resource.json())
    for key in ("identifier", "status", "subject", "conclusion", "presentedForm"):
        if again.get(key) != data.get(key):
            print(f"invalid {path}: {key} changed in the round trip", file=sys.stderr)
            sys.exit(1)
    print(f"ok {resource.resource_type} {getattr(resource, 'status', None) or '-'}")
