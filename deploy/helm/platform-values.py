"""Writes deploy/helm/meridian/values-platform.yaml: the example platform's
configuration (deploy/examples/dev, every region's, as `meridian config
check` reads it) shaped for production — each region's log on Kafka (MSK,
TLS, IAM), its objects in its S3 bucket, the demonstration model served by
a model server over the Open Inference Protocol instead of from a file.

Usage: python deploy/helm/platform-values.py [OUT]  (the committed file is
its output; a test checks it and that `meridian config check` passes it)
"""

import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy/examples/dev"
OUT = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "deploy/helm/meridian/values-platform.yaml"

# Per region: its AWS region (the MSK brokers' and the bucket's).
AWS = {"us-east": "us-east-1", "eu-west": "eu-west-1", "in-south": "ap-south-1"}

PRODUCTION = """
# Production: the region's log on its MSK cluster (TLS, SASL/SCRAM; the
# password from the environment, set from a Secret), its objects in its own
# bucket (credentials from the pod's role, never from here).
[log]
kind = "kafka"
bootstrap_servers = "b-1.meridian-{region}.kafka.{aws}.amazonaws.com:9096,b-2.meridian-{region}.kafka.{aws}.amazonaws.com:9096,b-3.meridian-{region}.kafka.{aws}.amazonaws.com:9096"
partitions = 12
replication_factor = 3
client = {{ "security.protocol" = "SASL_SSL", "sasl.mechanism" = "SCRAM-SHA-512", "sasl.username" = "meridian-{region}" }}
client_secrets_env = {{ "sasl.password" = "MERIDIAN_KAFKA_PASSWORD" }}

[objects]
kind = "s3"
bucket = "meridian-{region}-phi"
region = "{aws}"

# The key-encryption key wrapping the region's data keys (kept in its
# bucket): a file of the secrets directory, mounted from a Secret.
[keys]
key_encryption_key = {{ file = "key-encryption-key" }}
"""

MODEL_RUNTIME = """[runtime]
kind = "remote"
# A model server (MLServer, Triton, KServe) in the region, over OIP v2.
endpoint = "http://ich-demo.meridian-models:8081"
model = "ich-demo"
timeout_ms = 5000
retries = 3
"""


def text(path: pathlib.Path) -> str:
    return path.read_text(encoding="utf-8")


def region_file(path: pathlib.Path) -> str:
    body = text(path)
    name = path.stem
    # The example's local objects give way to the bucket.
    kept = []
    skip = False
    for line in body.splitlines():
        if line.startswith("[objects]"):
            skip = True
            continue
        if skip and line.startswith("["):
            skip = False
        if skip:
            continue
        kept.append(line)
    return "\n".join(kept).rstrip() + "\n" + PRODUCTION.format(region=name, aws=AWS[name])


def model_file(path: pathlib.Path) -> str:
    body = text(path)
    embedded = '[runtime]\nkind = "embedded"\npath = "models/ich-demo.onnx"\n'
    assert embedded in body, "the example model's runtime changed"
    return body.replace(embedded, MODEL_RUNTIME)


configuration = {}
for path in sorted(EXAMPLE.rglob("*")):
    relative = path.relative_to(EXAMPLE).as_posix()
    if path.is_dir() or relative == "README.md" or path.suffix == ".onnx":
        continue
    if relative.startswith("regions/"):
        configuration[relative] = region_file(path)
    elif relative.startswith("models/"):
        configuration[relative] = model_file(path)
    else:
        configuration[relative] = text(path)


class Literal(str):
    pass


yaml.add_representer(Literal, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|"))
header = (
    "# The example platform's configuration, shaped for production: written by\n"
    "# deploy/helm/platform-values.py from deploy/examples/dev (do not edit by\n"
    "# hand). Every region's release uses it with its values-<region>.yaml.\n"
)
document = {"configuration": {k: Literal(v) for k, v in configuration.items()}}
OUT.write_text(header + yaml.dump(document, sort_keys=True, width=1000, allow_unicode=True), encoding="utf-8")
