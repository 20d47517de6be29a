#!/usr/bin/env python3
"""The independent side of Meridian's de-identification test.

  deid_oracle.py make DIR   writes DIR/full.dcm: one instance holding every
                            attribute of PS3.15 Table E.1-1 that pydicom's
                            dictionary knows (each with a value of its VR),
                            examples of the 50xx/60xx repeating groups and a
                            private block; DIR/oracle.dcm: the same
                            de-identified by the `dicom-anonymizer` package
                            (2026c edition rules); DIR/table.json: the Basic
                            Profile column of Table E.1-1 as Innolitics'
                            `dicom-standard` package parses it.
  deid_oracle.py read FILE  reads FILE with pydicom down to every element and
                            prints its attributes as JSON (tag -> VR, value).
"""
import json
import os
import sys

import pydicom
import pydicom.datadict as dd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

VALUES = {
    "AE": "SOMEAE", "AS": "042Y", "CS": "SOMECODE", "DA": "20240301", "DT": "20240301101512",
    "DS": "12.5", "IS": "42", "LO": "Some Long String", "LT": "Some long text", "PN": "Murphy^Aoife",
    "SH": "ShortStr", "ST": "Some short text", "TM": "101512", "UC": "Unlimited chars", "UR": "http://x.example/a",
    "UT": "Unlimited text", "UI": "1.2.826.0.1.3680043.8.498.{n}", "US": 7, "SS": -7, "UL": 70000, "SL": -70000,
    "FL": 1.5, "FD": 2.5, "UV": 7, "SV": -7, "AT": 0x00100010, "OB": b"\x01\x02", "OW": b"\x01\x02\x03\x04",
    "OF": b"\x00\x00\x80\x3f", "OD": b"\x00" * 8, "OL": b"\x01\x00\x00\x00", "OV": b"\x01" + b"\x00" * 7,
    "UN": b"\x01\x02",
}


def value(vr, n):
    v = VALUES[vr]
    return v.format(n=n) if vr == "UI" else v


def table_tags():
    from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as ed
    tags = set()
    for name in dir(ed):
        if name.endswith("_TAGS"):
            tags |= {t for t in getattr(ed, name) if len(t) == 2}
    path = os.path.join(sys.prefix, "standard", "confidentiality_profile_attributes.json")
    table = {}
    for row in json.load(open(path)):
        tag = row["tag"].strip("()").upper()
        if "X" in tag.replace("0X", "") or "GGGG" in tag:
            continue
        g, e = (int(x, 16) for x in tag.split(","))
        tags.add((g, e))
        table["%04X%04X" % (g, e)] = row["basicProfile"]
    return sorted(tags), table


def make(out):
    tags, table = table_tags()
    ds = Dataset()
    n = 0
    for g, e in tags:
        tag = (g << 16) | e
        if g in (0x0000, 0x0002) or g == 0xFFFA or g == 0xFFFC:
            continue  # command and meta groups; signatures and padding are not data set attributes here
        try:
            vr = dd.dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            continue
        n += 1
        if vr == "SQ":
            item = Dataset()
            item.CodeValue = "X%d" % n
            item.CodingSchemeDesignator = "99TEST"
            item.CodeMeaning = "Murphy item %d" % n
            item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.%d.1" % n
            ds.add_new(tag, "SQ", Sequence([item]))
        else:
            ds.add_new(tag, vr, value(vr, n))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.BurnedInAnnotation = "NO"
    ds.Modality = "CT"
    ds.Rows = 2
    ds.Columns = 2
    ds.add_new(0x60003000, "OW", b"\x00" * 8)    # Overlay Data
    ds.add_new(0x60024000, "LT", "Murphy overlay")  # Overlay Comments, second overlay group
    ds.add_new(0x50000005, "US", 2)              # Curve Dimensions
    block = ds.private_block(0x0029, "ACME PRIVATE", create=True)
    block.add_new(0x01, "LO", "Murphy^Aoife")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    os.makedirs(out, exist_ok=True)
    ds.save_as(os.path.join(out, "full.dcm"), enforce_file_format=True)

    from dicomanonymizer.simpledicomanonymizer import anonymize_dataset, initialize_actions
    oracle = pydicom.dcmread(os.path.join(out, "full.dcm"))
    anonymize_dataset(oracle, base_rules_gen=lambda: initialize_actions("dicomfields_2026c"))
    oracle.save_as(os.path.join(out, "oracle.dcm"))
    json.dump(table, open(os.path.join(out, "table.json"), "w"))
    print("%d attributes" % n)


def read(path):
    ds = pydicom.dcmread(path)
    out = {}

    def visit(dataset, elem):
        if dataset is ds:
            v = elem.value
            if elem.VR == "SQ":
                v = len(v)
            elif isinstance(v, bytes):
                v = v.hex()
            else:
                v = str(v)
            out["%08X" % int(elem.tag)] = [elem.VR, v]

    ds.walk(visit)
    ds.file_meta.walk(lambda d, e: out.setdefault("%08X" % int(e.tag), [e.VR, str(e.value)]))
    print(json.dumps(out))


if __name__ == "__main__":
    {"make": make, "read": read}[sys.argv[1]](sys.argv[2])
