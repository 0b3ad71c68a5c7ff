"""Listing and reading input files from a local folder or an ``s3://bucket/prefix``."""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from isal import igzip_lib, isal_zlib

from insights.config import Config


@dataclass(frozen=True)
class FileRef:
    """One input file: where it is and what identifies its content cheaply."""

    path: str
    size: int
    mtime: float
    etag: str | None = None


def s3_client(config: Config):  # noqa: ANN201 - boto3 clients have no static type
    """A boto3 S3 client; credentials come from the environment, never from the config."""
    import boto3

    return boto3.client("s3", endpoint_url=config.s3.endpoint_url, region_name=config.s3.region)


def split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"not an s3 URI with a bucket: {uri}")
    return bucket, prefix


@contextmanager
def s3_errors(uri: str, config: Config) -> Iterator[None]:
    """S3 failures as the errors a local path gives, each naming the URI and the likely cause:
    a missing bucket or key is FileNotFoundError, refused credentials PermissionError, an
    unreachable endpoint ConnectionError."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            raise FileNotFoundError(
                f"input path not found: bucket '{split_s3(uri)[0]}' does not exist ({uri})"
            ) from None
        if code in ("NoSuchKey", "404", "NotFound"):
            raise FileNotFoundError(f"input path not found: {uri} (gone since it was listed?)") from None
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
            raise PermissionError(
                f"{uri}: access refused ({code}): check the AWS credentials (the AWS_* environment variables, "
                "or the connection named by airflow.aws_conn_id) and the bucket policy"
            ) from None
        raise
    except NoCredentialsError:
        raise PermissionError(
            f"{uri}: no AWS credentials found (set the AWS_* environment variables, or airflow.aws_conn_id)"
        ) from None
    except EndpointConnectionError:
        raise ConnectionError(
            f"{uri}: cannot reach the S3 endpoint {config.s3.endpoint_url or 'of AWS'} (s3.endpoint_url)"
        ) from None


def _matches(relative: str, pattern: str) -> bool:
    name = relative.rsplit("/", 1)[-1]
    if pattern.startswith("**/"):
        return fnmatch.fnmatch(name, pattern[3:]) or fnmatch.fnmatch(relative, pattern[3:])
    return fnmatch.fnmatch(relative, pattern)


def list_files(uri: str, pattern: str, config: Config) -> list[FileRef]:
    """Every file below ``uri`` matching ``pattern``, sorted by path (hidden files skipped)."""
    if uri.startswith("s3://"):
        bucket, prefix = split_s3(uri)
        client = s3_client(config)
        found = []
        stored = 0
        with s3_errors(uri, config):
            pages = list(client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix))
        for page in pages:
            stored += len(page.get("Contents", []))
            for obj in page.get("Contents", []):
                key = obj["Key"]
                relative = key[len(prefix) :].lstrip("/")
                if not relative or relative.rsplit("/", 1)[-1].startswith((".", "_")):
                    continue
                if _matches(relative, pattern):
                    found.append(
                        FileRef(
                            f"s3://{bucket}/{key}",
                            obj["Size"],
                            obj["LastModified"].timestamp(),
                            obj.get("ETag", "").strip('"'),
                        )
                    )
        if not stored:
            # S3 has no folders: a prefix with nothing under it is what a missing local path is.
            raise FileNotFoundError(f"input path not found: nothing is stored under {uri}")
        return sorted(found, key=lambda f: f.path)
    root = Path(config.resolve(uri))
    if not root.exists():
        raise FileNotFoundError(f"input path not found: {root}")
    if root.is_file():
        stat = root.stat()
        return [FileRef(str(root), stat.st_size, stat.st_mtime)]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
        for filename in filenames:
            if filename.startswith((".", "_")):
                continue
            full = Path(dirpath) / filename
            relative = full.relative_to(root).as_posix()
            if _matches(relative, pattern):
                stat = full.stat()
                found.append(FileRef(str(full), stat.st_size, stat.st_mtime))
    return sorted(found, key=lambda f: f.path)


def read_bytes(ref: FileRef, config: Config) -> bytes:
    """The file's stored bytes (still compressed if it is)."""
    if ref.path.startswith("s3://"):
        bucket, key = split_s3(ref.path)
        with s3_errors(ref.path, config):
            return s3_client(config).get_object(Bucket=bucket, Key=key)["Body"].read()
    return Path(ref.path).read_bytes()


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decompress(data: bytes, path: str) -> bytes:
    """Undo gzip when the file is gzipped (by magic number, whatever its name says)."""
    if data[:2] == b"\x1f\x8b":
        try:
            return _gunzip(data)
        except (OSError, EOFError, isal_zlib.error) as exc:
            raise ValueError(f"{path}: corrupt gzip data ({exc})") from None
    return data


def _gunzip(data: bytes) -> bytes:
    """Every member of a gzip stream (the S3 loader concatenates them), inflated by ISA-L
    (about 2.5x zlib). A decompressor per member writes its output once; ``igzip.decompress``
    grew its buffer as it went, copying it and faulting in half as many pages again (0.61 ->
    0.43 CPU-s for 552 MB). Like gzip's own, zero padding after the last member is allowed,
    other trailing bytes are not."""
    members = []
    while True:
        inflater = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)
        members.append(inflater.decompress(data))
        if not inflater.eof:
            raise EOFError("compressed file ended before the end-of-stream marker was reached")
        data = inflater.unused_data
        if data[:2] == b"\x1f\x8b":
            continue
        if data.strip(b"\0"):
            raise OSError(f"{len(data)} bytes after the end of the gzip stream are not gzip data")
        return members[0] if len(members) == 1 else b"".join(members)


def replace_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` all at once: a reader sees the old file or the new."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:  # line ends as given
        fh.write(text)
    os.replace(tmp, path)


def swap_in(built: Path, target: Path) -> None:
    """Put a finished file in place of ``target`` in one rename, durably: the file's data and
    then the rename are on disk when this returns. A reader sees the old file or the new."""
    with open(built, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(built, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
