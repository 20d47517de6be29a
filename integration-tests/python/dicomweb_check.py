"""DICOMweb as a real client sees it: dicomweb-client (QIDO-RS, WADO-RS)
and plain requests against a running `meridian dev`.

    dicomweb_check.py files DIR              # copies the files into DIR, prints "transfer-syntax path" each
    dicomweb_check.py check URL TOKENS DIR   # after they were sent: checks, exit 1 on failure
    dicomweb_check.py stow URL TOKENS DIR    # STOW-RS: sends DIR's files itself, then checks

pydicom's MR_small variants share their UIDs, so each copy gets its own
Study, Series and SOP Instance UIDs from dcmtk's dcmodify, which keeps the
file's transfer syntax. TOKENS is the path of tokens.json. Every check prints one line; the first
failure stops with the reason.
"""

import io
import json
import os
import shutil
import subprocess
import sys

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file

# One file per transfer syntax Meridian stores (pydicom's own test files;
# its JPEG-LS near-lossless files have no Study Instance UID, so they are
# refused with 0xA900 and not listed here).
FILES = {
    "MR_small_implicit.dcm": "1.2.840.10008.1.2",
    "MR_small.dcm": "1.2.840.10008.1.2.1",
    "image_dfl.dcm": "1.2.840.10008.1.2.1.99",
    "MR_small_bigendian.dcm": "1.2.840.10008.1.2.2",
    "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50",
    "JPGExtended.dcm": "1.2.840.10008.1.2.4.51",
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",
    "MR_small_jp2klossless.dcm": "1.2.840.10008.1.2.4.90",
    "JPEG2000.dcm": "1.2.840.10008.1.2.4.91",
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",
    "SC_rgb_rle_2frame.dcm": "1.2.840.10008.1.2.5",
    "CT_small.dcm": "1.2.840.10008.1.2.1",
}
EXPLICIT_LE = "1.2.840.10008.1.2.1"
# The JPEG decoder reads 8-bit samples only (JPGExtended.dcm is 12-bit):
# it cannot be transcoded (406). JPEG-LS is, through CharLS.
NOT_TRANSCODABLE = {"1.2.840.10008.1.2.4.51"}


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)
    print(f"ok: {message}")


def files(out):
    for n, name in enumerate(FILES, start=1):
        path = os.path.join(out, name)
        shutil.copyfile(get_testdata_file(name), path)
        study = f"1.2.826.0.1.3680043.10.543.77.{n}"
        subprocess.run(
            ["dcmodify", "-nb", "-imt",
             "-m", f"(0020,000d)={study}",
             "-m", f"(0020,000e)={study}.1",
             "-m", f"(0008,0018)={study}.1.1",
             "-m", f"(0002,0003)={study}.1.1",
             path],
            check=True, capture_output=True,
        )
        print(FILES[name], path)


def client(url, token):
    return DICOMwebClient(url=url, headers={"Authorization": f"Bearer {token}"})


def frame_bytes(ds):
    bits = ds.BitsAllocated
    return ds.Rows * ds.Columns * ds.get("SamplesPerPixel", 1) * bits // 8


def main_check(url, tokens_path, folder):
    with open(tokens_path) as f:
        tokens = {name: p["token"] for name, p in json.load(f)["principals"].items()}
    acme = client(url, tokens["acme-pacs"])
    sent = {}
    for name, ts in FILES.items():
        ds = pydicom.dcmread(os.path.join(folder, name))
        check(ds.file_meta.TransferSyntaxUID == ts, f"{name} is in {ts}")
        sent[name] = ds

    # QIDO-RS: every study, by UID; instances with their attributes.
    studies = acme.search_for_studies()
    found = {s["0020000D"]["Value"][0] for s in studies}
    for name, ds in sent.items():
        check(ds.StudyInstanceUID in found, f"QIDO finds the study of {name}")
    one = sent["MR_small.dcm"]
    by_patient = acme.search_for_studies(search_filters={"PatientID": one.PatientID})
    check(
        one.StudyInstanceUID in {s["0020000D"]["Value"][0] for s in by_patient},
        "QIDO matches on PatientID",
    )
    none = acme.search_for_studies(search_filters={"PatientID": "no-such-patient"})
    check(none == [], "QIDO with no match returns an empty list")
    instances = acme.search_for_instances(
        study_instance_uid=one.StudyInstanceUID, fields=["all"]
    )
    check(
        any(i["00080018"]["Value"][0] == one.SOPInstanceUID for i in instances),
        "QIDO instance search names the sent instance",
    )
    check(all("00280010" in i for i in instances), "instance results carry Rows")

    for name, ds in sent.items():
        ts = FILES[name]
        study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        # As stored: the same pixel bytes and transfer syntax that were sent.
        got = acme.retrieve_instance(
            study, series, sop, media_types=(("application/dicom", "*"),)
        )
        check(got.SOPInstanceUID == sop, f"WADO returns {name}")
        check(
            got.file_meta.TransferSyntaxUID == ts,
            f"{name} comes back as stored ({got.file_meta.TransferSyntaxUID})",
        )
        check(got.PixelData == ds.PixelData, f"{name}: the same pixel data bytes")
        # Explicit VR little endian, transcoded where a codec exists.
        if ts in NOT_TRANSCODABLE:
            r = requests.get(
                f"{url}/studies/{study}/series/{series}/instances/{sop}",
                headers={
                    "Authorization": f"Bearer {tokens['acme-pacs']}",
                    "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}',
                },
            )
            check(r.status_code == 406, f"{name} as explicit VR LE: 406 ({r.status_code}) {r.text[:120]}")
        else:
            got = acme.retrieve_instance(
                study, series, sop, media_types=(("application/dicom", EXPLICIT_LE),)
            )
            frames = int(ds.get("NumberOfFrames", 1))
            check(
                got.file_meta.TransferSyntaxUID == EXPLICIT_LE
                and len(got.PixelData) >= frame_bytes(ds) * frames,
                f"{name} transcoded to explicit VR LE ({len(got.PixelData)} bytes of pixels)",
            )
        # Metadata: DICOM JSON, no pixel data.
        meta = acme.retrieve_series_metadata(study, series)
        check(
            any(m["00080018"]["Value"][0] == sop for m in meta)
            and all("7FE00010" not in m for m in meta),
            f"{name}: series metadata names the instance, without pixel data",
        )
        # Frames as stored: for native data the first frame's bytes.
        frame = acme.retrieve_instance_frames(
            study, series, sop, frame_numbers=[1],
            media_types=(("application/octet-stream", "*"),),
        )[0]
        if ts in (EXPLICIT_LE, "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"):
            check(frame == ds.PixelData[: frame_bytes(ds)], f"{name}: frame 1 is the first frame's bytes")
        else:
            check(len(frame) > 0, f"{name}: frame 1 ({len(frame)} bytes)")
    # The whole study in one multipart response, as stored.
    whole = acme.retrieve_study(one.StudyInstanceUID, media_types=(("application/dicom", "*"),))
    check(
        one.SOPInstanceUID in {d.SOPInstanceUID for d in whole},
        f"WADO study retrieval ({len(whole)} instances)",
    )

    # Who may not see it.
    study, series, sop = one.StudyInstanceUID, one.SeriesInstanceUID, one.SOPInstanceUID
    path = f"{url}/studies/{study}/series/{series}/instances/{sop}"
    r = requests.get(path)
    check(r.status_code == 401 and "Bearer" in r.headers.get("WWW-Authenticate", ""), f"no token: 401 ({r.status_code})")
    r = requests.get(path, headers={"Authorization": f"Bearer {tokens['northwind-pacs']}"})
    check(r.status_code == 404, f"another tenant's principal: 404, nothing leaks ({r.status_code})")
    other = client(url, tokens["northwind-pacs"]).search_for_studies()
    check(all(s["0020000D"]["Value"][0] not in found for s in other), "another tenant's QIDO sees none of acme's studies")
    r = requests.get(f"{url}/studies", headers={"Authorization": f"Bearer {tokens['sre']}"})
    check(r.status_code == 403 and "never" in r.json()["error"]["message"], f"platform principal: 403 ({r.status_code})")
    r = requests.get(f"{url}/studies", headers={"Authorization": f"Bearer {tokens['dr-ortiz']}"})
    check(r.status_code == 200 and r.json() == [], f"a reader with no assignment sees no study ({r.status_code})")
    r = requests.get(path, headers={"Authorization": f"Bearer {tokens['dr-ortiz']}"})
    check(r.status_code == 403 and "assigned" in r.text, f"a reader may not retrieve an unassigned study ({r.status_code})")

    # Bad requests say what was wrong.
    auth = {"Authorization": f"Bearer {tokens['acme-pacs']}"}
    # PS3.18 8.3.4: an unsupported parameter is ignored and named in a Warning.
    r = requests.get(f"{url}/studies?PatientNmae=x&Modality=CT&limit=2", headers=auth)
    warning = r.headers.get("Warning", "")
    check(r.status_code == 200 and len(r.json()) == 2 and warning.startswith("299 ")
          and "PatientNmae" in warning and "Modality" in warning,
          f"unsupported query keys: 200 as if absent, named in a Warning ({r.status_code}, {warning!r})")
    r = requests.get(f"{url}/studies?PatientName=doe&fuzzymatching=true", headers=auth)
    check(r.status_code == 200 and "Only literal matching has been performed" in r.headers.get("Warning", ""),
          f"fuzzymatching: literal matching, said in a Warning ({r.status_code})")
    r = requests.get(f"{url}/studies?limit=many", headers=auth)
    check(r.status_code == 400 and "limit" in r.text, f"an invalid limit: 400 naming it ({r.status_code})")
    r = requests.get(f"{url}/studies?includefield=NoSuchThing", headers=auth)
    check(r.status_code == 400 and "NoSuchThing" in r.text, f"an unknown includefield: 400 ({r.status_code})")
    # Accept is honoured for JSON answers.
    r = requests.get(f"{url}/studies?limit=1", headers={**auth, "Accept": "application/json"})
    check(r.status_code == 200 and r.headers["Content-Type"] == "application/json", f"QIDO as application/json ({r.status_code})")
    r = requests.get(f"{url}/studies?limit=1", headers={**auth, "Accept": "application/*"})
    check(r.headers.get("Content-Type") == "application/dicom+json", f"a wildcard gets DICOM JSON ({r.status_code})")
    r = requests.get(f"{url}/studies", headers={**auth, "Accept": "text/html"})
    check(r.status_code == 406 and "application/dicom+json" in r.text, f"QIDO as text/html: 406 ({r.status_code})")
    r = requests.get(f"{url}/studies/{study}/metadata", headers={**auth, "Accept": "image/png"})
    check(r.status_code == 406, f"metadata as image/png: 406 ({r.status_code})")
    r = requests.get(f"{url}/studies/{study}/metadata", headers={**auth, "Accept": "application/dicom+json"})
    check(r.status_code == 200 and r.json()[0]["0020000D"]["Value"][0] == study, f"metadata as DICOM JSON ({r.status_code})")
    # One instance as a bare Part-10 file (PS3.18 table 10.4.4-1).
    r = requests.get(path, headers={**auth, "Accept": "application/dicom; transfer-syntax=*"})
    bare = pydicom.dcmread(io.BytesIO(r.content)) if r.status_code == 200 else None
    check(bare is not None and r.headers["Content-Type"].startswith("application/dicom;")
          and bare.SOPInstanceUID == sop and bare.PixelData == one.PixelData,
          f"one instance as a bare application/dicom ({r.status_code}, {r.headers.get('Content-Type')})")
    r = requests.get(f"{url}/studies/{study}", headers={**auth, "Accept": "application/dicom"})
    check(r.status_code == 406 and "one instance" in r.text, f"a whole study as one bare part: 406 ({r.status_code})")
    # An unknown path: the usual JSON 404, with CORS headers for browsers;
    # without a token, 401 first.
    origin = {"Origin": "https://viewer.example"}
    r = requests.get(f"{url}/no/such/thing", headers={**auth, **origin})
    check(r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
          and r.headers.get("Access-Control-Allow-Origin") == "*",
          f"an unknown path: JSON 404 with CORS ({r.status_code}, {r.headers.get('Access-Control-Allow-Origin')})")
    r = requests.get(f"{url}/no/such/thing", headers=origin)
    check(r.status_code == 401 and r.headers.get("Access-Control-Allow-Origin") == "*",
          f"an unknown path without a token: 401 with CORS ({r.status_code})")
    r = requests.get(path, headers={**auth, "Accept": "application/json"})
    check(r.status_code == 406 and "multipart/related" in r.text, f"an Accept it cannot serve: 406 ({r.status_code})")
    r = requests.get(f"{path}/frames/0", headers=auth)
    check(r.status_code == 400, f"frame 0: 400 ({r.status_code})")
    r = requests.get(f"{url}/studies/1.2.3.4.5.6.7", headers=auth)
    check(r.status_code == 404, f"an unknown study: 404 ({r.status_code})")

    # Browsers: the CORS preflight is answered without a token.
    r = requests.options(
        f"{url}/studies",
        headers={
            "Origin": "https://viewer.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    check(
        r.status_code == 200 and r.headers.get("Access-Control-Allow-Origin") == "*",
        f"CORS preflight ({r.status_code}, {r.headers.get('Access-Control-Allow-Origin')})",
    )
    print("all DICOMweb checks passed")


def multipart(parts, boundary="meridian-test-boundary"):
    body = b""
    for content_type, payload in parts:
        body += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + payload + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def main_stow(url, tokens_path, folder):
    with open(tokens_path) as f:
        tokens = {name: p["token"] for name, p in json.load(f)["principals"].items()}
    auth = {"Authorization": f"Bearer {tokens['acme-pacs']}"}
    acme = client(url, tokens["acme-pacs"])
    sent = {name: pydicom.dcmread(os.path.join(folder, name)) for name in FILES}

    # dicomweb-client's STOW-RS, every transfer syntax in one request.
    result = acme.store_instances(list(sent.values()))
    stored = result.get("ReferencedSOPSequence", [])
    check(
        len(stored) == len(sent) and "FailedSOPSequence" not in result,
        f"store_instances: {len(stored)} stored, none failed",
    )
    check(
        {i.ReferencedSOPInstanceUID for i in stored} == {ds.SOPInstanceUID for ds in sent.values()},
        "the response names every instance sent",
    )
    for name, ds in sent.items():
        got = acme.retrieve_instance(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
            media_types=(("application/dicom", "*"),),
        )
        check(
            got.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID and got.PixelData == ds.PixelData,
            f"{name}: stored by STOW-RS, retrieved as sent",
        )

    # Raw requests: good and bad parts in one request.
    def raw(name):
        with open(os.path.join(folder, name), "rb") as f:
            return f.read()

    good = raw("CT_small.dcm")
    body, content_type = multipart([
        ("application/dicom", good),
        ("application/dicom", b"not a dicom file at all"),
        ("application/dicom", good[:400]),
    ])
    r = requests.post(f"{url}/studies", data=body, headers={**auth, "Content-Type": content_type})
    doc = r.json()
    failed = doc.get("00081198", {}).get("Value", [])
    check(r.status_code == 202 and len(failed) == 2 and len(doc["00081199"]["Value"]) == 1,
          f"mixed good and bad parts: 202, one stored, two failed ({r.status_code})")
    check(all(f["00081197"]["Value"][0] == 0xC000 for f in failed), "the failures say 0xC000 (cannot understand)")

    # Only bad parts: 409.
    body, content_type = multipart([("application/dicom", b"junk")])
    r = requests.post(f"{url}/studies", data=body, headers={**auth, "Content-Type": content_type})
    check(r.status_code == 409, f"nothing stored: 409 ({r.status_code})")

    # A study in the path that the instance is not in.
    body, content_type = multipart([("application/dicom", good)])
    r = requests.post(f"{url}/studies/1.2.3.4.5", data=body, headers={**auth, "Content-Type": content_type})
    failed = r.json().get("00081198", {}).get("Value", [])
    check(r.status_code == 409 and failed and failed[0]["00081197"]["Value"][0] == 0xA900,
          f"an instance of another study than the path's: 409 with 0xA900 ({r.status_code})")

    # One Part-10 body as application/dicom (not multipart), as Google's and
    # Azure's servers take it: one instance, answered as one part would be.
    single = {**auth, "Content-Type": "application/dicom"}
    ds = sent["CT_small.dcm"]
    r = requests.post(f"{url}/studies", data=good, headers=single)
    stored = r.json().get("00081199", {}).get("Value", []) if r.status_code == 200 else []
    check(r.status_code == 200 and len(stored) == 1 and stored[0]["00081155"]["Value"][0] == ds.SOPInstanceUID,
          f"a bare application/dicom body: 200, stored ({r.status_code}) {r.text[:200]}")
    r = requests.post(f"{url}/studies/{ds.StudyInstanceUID}", data=good, headers=single)
    check(r.status_code == 200, f"a bare body to its own study: 200 ({r.status_code})")
    r = requests.post(f"{url}/studies/1.2.3.4.5", data=good, headers=single)
    failed = r.json().get("00081198", {}).get("Value", []) if r.status_code == 409 else []
    check(failed and failed[0]["00081197"]["Value"][0] == 0xA900,
          f"a bare body of another study than the path's: 409 with 0xA900 ({r.status_code})")
    r = requests.post(f"{url}/studies", data=b"not a dicom file", headers=single)
    failed = r.json().get("00081198", {}).get("Value", []) if r.status_code == 409 else []
    check(failed and failed[0]["00081197"]["Value"][0] == 0xC000, f"an unreadable bare body: 409 with 0xC000 ({r.status_code})")
    r = requests.post(f"{url}/studies", data=b"", headers=single)
    check(r.status_code == 400 and "empty" in r.text, f"an empty bare body: 400 ({r.status_code}) {r.text[:100]}")

    # Malformed requests get a 4xx that names the problem.
    r = requests.post(f"{url}/studies", data=good, headers={**auth, "Content-Type": "application/dicom+json"})
    check(r.status_code == 415 and "multipart/related" in r.text, f"a JSON body: 415 ({r.status_code})")
    r = requests.post(f"{url}/studies", data=b"", headers={**auth, "Content-Type": content_type})
    check(r.status_code == 400, f"an empty payload: 400 ({r.status_code}) {r.text[:100]}")
    r = requests.post(f"{url}/studies", data=b"--nope\r\nContent-Type: application/dicom\r\n\r\nabc",
                      headers={**auth, "Content-Type": content_type})
    check(r.status_code == 400, f"a multipart body without its boundary: 400 ({r.status_code}) {r.text[:100]}")
    r = requests.post(f"{url}/studies", data=body,
                      headers={**auth, "Content-Type": 'multipart/related; type="application/dicom"'})
    check(r.status_code == 400 and "boundary" in r.text, f"no boundary: 400 ({r.status_code})")

    # Who may not store: another tenant's PHI may not live here (residency),
    # an admin is not a sending facility, and no token is no entry.
    r = requests.post(f"{url}/studies", data=body, headers={
        "Authorization": f"Bearer {tokens['northwind-pacs']}", "Content-Type": content_type})
    failed = r.json().get("00081198", {}).get("Value", []) if r.status_code == 409 else []
    check(r.status_code == 409 and failed and failed[0]["00081197"]["Value"][0] == 0x0124,
          f"northwind's PHI in us-east: refused for residency, 0x0124 ({r.status_code})")
    r = requests.post(f"{url}/studies", data=body, headers={
        "Authorization": f"Bearer {tokens['acme-admin']}", "Content-Type": content_type})
    check(r.status_code == 403, f"a tenant admin does not send studies: 403 ({r.status_code})")
    r = requests.post(f"{url}/studies", data=body, headers={"Content-Type": content_type})
    check(r.status_code == 401, f"no token: 401 ({r.status_code})")
    print("all STOW-RS checks passed")


if __name__ == "__main__":
    if sys.argv[1:2] == ["files"] and len(sys.argv) == 3:
        files(sys.argv[2])
    elif sys.argv[1:2] == ["check"] and len(sys.argv) == 5:
        main_check(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1:2] == ["stow"] and len(sys.argv) == 5:
        main_stow(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        fail(__doc__)
