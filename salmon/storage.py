"""Reading inputs from local paths or S3 (``s3://bucket/key``).

S3 access uses boto3 (imported only when an ``s3://`` URI is read). The endpoint comes from
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` when set (MinIO, moto, Ceph), credentials from
the usual AWS environment variables or files. A refused request (no such bucket, access denied)
is bad input (``SalmonInputError``, exit 2); an endpoint that cannot be reached is
``ServiceUnavailable`` (exit 3). Both happen while reading inputs, before any model work.
"""

from __future__ import annotations

import os
from pathlib import Path

from salmon.core.errors import SalmonInputError, ServiceUnavailable


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b.jsonl`` -> ``("bucket", "a/b.jsonl")``."""
    rest = uri.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise SalmonInputError(uri, "not an s3://bucket/key URI", "write it as s3://BUCKET/PATH/FILE")
    return bucket, key


def _s3_client():  # type: ignore[no-untyped-def]
    try:
        import boto3
    except ImportError:
        raise SalmonInputError("s3://", "reading s3:// needs boto3", "install salmon with the 's3' extra") from None
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return boto3.client("s3", endpoint_url=endpoint)


def _unreachable(uri: str, error: Exception) -> ServiceUnavailable | None:
    """A connection failure (as opposed to a refused request) as ``ServiceUnavailable``."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

    if isinstance(error, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError | BotoConnectionError):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
        return ServiceUnavailable(f"S3 endpoint {endpoint}", f"unreachable while reading {uri} ({error})",
                                  "check the endpoint (AWS_ENDPOINT_URL_S3) and the network, then retry")
    return None


def download_prefix(uri: str, dest: str | Path) -> int:
    """Copy every object under ``s3://bucket/prefix/`` into ``dest`` (keys relative to the
    prefix); returns the number of files. An empty prefix is an error."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3_uri(uri.rstrip("/") + "/")
    client = _s3_client()
    n = 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):]
                if not rel or rel.endswith("/") or ".." in Path(rel).parts:
                    continue
                target = Path(dest) / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, obj["Key"], str(target))
                n += 1
    except (ClientError, BotoCoreError) as e:
        if (down := _unreachable(uri, e)) is not None:
            raise down from None
        raise SalmonInputError(uri, f"cannot list or read the objects ({e})",
                               "check the bucket, prefix, endpoint and credentials") from None
    if not n:
        raise SalmonInputError(uri, "no objects under this prefix", "check the bucket and prefix")
    return n


def _decode(uri: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SalmonInputError(f"{uri}:{line}", f"not UTF-8 ({e.reason} at byte {e.start})",
                               "re-encode the file as UTF-8") from None


def read_text(uri: str) -> str:
    """The text of a local file or an S3 object (UTF-8)."""
    if not uri.startswith("s3://"):
        p = Path(uri)
        if not p.is_file():
            raise SalmonInputError(uri, "file not found", "check the path")
        return _decode(uri, p.read_bytes())
    client = _s3_client()
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(uri)
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except (ClientError, BotoCoreError) as e:
        if (down := _unreachable(uri, e)) is not None:
            raise down from None
        raise SalmonInputError(uri, f"cannot read the object ({e})",
                               "check the bucket, key, endpoint and credentials") from None
    return _decode(uri, bytes(body))
