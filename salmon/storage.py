"""Reading inputs from local paths or S3 (``s3://bucket/key``).

S3 access uses boto3 (imported only when an ``s3://`` URI is read). The endpoint comes from
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` when set (MinIO, moto, Ceph), credentials from
the usual AWS environment variables or files.
"""

from __future__ import annotations

import os
from pathlib import Path

from salmon.core.errors import SalmonInputError


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b.jsonl`` -> ``("bucket", "a/b.jsonl")``."""
    rest = uri.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise SalmonInputError(uri, "not an s3://bucket/key URI", "write it as s3://BUCKET/PATH/FILE")
    return bucket, key


def read_text(uri: str) -> str:
    """The text of a local file or an S3 object."""
    if not uri.startswith("s3://"):
        p = Path(uri)
        if not p.is_file():
            raise SalmonInputError(uri, "file not found", "check the path")
        return p.read_text(encoding="utf-8")
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise SalmonInputError(uri, "reading s3:// needs boto3", "install salmon with the 's3' extra") from None
    bucket, key = split_s3_uri(uri)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client = boto3.client("s3", endpoint_url=endpoint)
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except (ClientError, BotoCoreError) as e:
        raise SalmonInputError(uri, f"cannot read the object ({e})",
                               "check the bucket, key, endpoint and credentials") from None
    return bytes(body).decode("utf-8")
