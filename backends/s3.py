"""The s3 backend: blobs are objects of an S3 bucket (compact.md §5.2 "s3").

A blob id lives at ``{object_prefix}{id}`` in ``bucket_name``, addressed path-style as nydus
does (``{scheme}://{endpoint}/{bucket}/{key}``). Sizes are ``HEAD``, reads exact ``Range`` GETs;
apply uploads the new blobs it staged in its blobs dir (``upload_blob``).

The client is botocore, imported only when an s3 config is used (this module is loaded lazily
by ``config.open_backend``). The README explains the choice over obstore with a measurement.

Credentials, first found wins, as nydus: the config's ``access_key_id``/``access_key_secret``;
the AWS environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``);
the profile named by ``AWS_PROFILE`` (or ``default``) in the shared AWS files; else anonymous,
unsigned requests. The cloud instance-metadata address is never asked: the providers that would
ask it are removed and ``AWS_EC2_METADATA_DISABLED`` is set for any that botocore adds later.

Uploads (never a delete, never an overwrite of a different object):
* an object with the blob's key and size already there is kept (a rerun after a kill does not
  upload finished blobs again); one of another size is an error;
* blobs up to ``multipart_threshold`` go in one ``PUT``, larger ones as a multipart upload of
  ``part_size`` parts (S3's minimum is 5 MiB). The upload id is recorded in a marker file beside
  the staged blob before the first part, so a run killed mid-upload is followed by one that
  aborts exactly that upload (and no one else's) and uploads the blob again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import botocore.session
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from nydus_compact.safeio.faults import fault_point

from .base import BlobBackend, check_http_limits, read_full, short_read_error
from .errors import BackendError, BlobNotFoundError
from .localfs import check_blob_id

T = TypeVar("T")

MiB = 1 << 20
MIN_PART_SIZE = 5 * MiB  # S3 rejects smaller parts (except the last)
MULTIPART_THRESHOLD = 8 * MiB
PART_SIZE = 8 * MiB
# Credential providers that would ask a metadata endpoint (EC2 IMDS, the ECS container endpoint).
METADATA_PROVIDERS = ("iam-role", "container-role")
UPLOAD_MARKER = ".compact-s3-upload."


class S3Backend(BlobBackend):
    # As the registry: a round trip costs more than reading 64 KiB we do not need.
    max_gap = 64 << 10
    read_concurrency = 4
    accepts_uploads = True

    def __init__(
        self,
        bucket_name: str,
        region: str,
        *,
        endpoint: str = "",
        scheme: str = "https",
        object_prefix: str = "",
        access_key_id: str = "",
        access_key_secret: str = "",
        skip_verify: bool = False,
        timeout: float = 5,
        connect_timeout: float = 5,
        retry_limit: int = 0,
        proxy: str = "",
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
    ):
        if not bucket_name or not region:
            raise BackendError("s3 backend needs `bucket_name` and `region`")
        if bool(access_key_id) != bool(access_key_secret):
            raise BackendError("s3 backend: give both `access_key_id` and `access_key_secret`, or neither")
        check_http_limits("s3", timeout, connect_timeout, retry_limit)
        if part_size < MIN_PART_SIZE or multipart_threshold < 0:
            raise BackendError(f"s3 backend: parts must be at least {MIN_PART_SIZE} bytes")
        self.bucket = bucket_name
        self.region = region
        self.prefix = object_prefix
        self.scheme = "http" if scheme == "http" else "https"
        self.endpoint = endpoint
        # An empty endpoint is AWS: botocore picks the region's endpoint.
        if endpoint:
            self.endpoint_url: str | None = endpoint if "://" in endpoint else f"{self.scheme}://{endpoint}"
        else:
            self.endpoint_url = None
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self._sizes: dict[str, int] = {}
        self._bucket_checked = False
        # botocore reads it whenever it builds a metadata fetcher: none may ever probe that address.
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        session = botocore.session.Session()
        config = Config(
            region_name=region,
            connect_timeout=connect_timeout,
            read_timeout=timeout,
            # botocore's max_attempts counts retries after the first attempt, as retry_limit does.
            retries={"max_attempts": retry_limit, "mode": "standard"},
            s3={"addressing_style": "path"},
            # apply --jobs N copies N blobs at once, each with read_concurrency reads in flight: a pool
            # too small would make urllib3 warn on stderr and reconnect.
            max_pool_connections=64,
            # Only the config decides where requests go, not AWS_ENDPOINT_URL* or ~/.aws/config.
            ignore_configured_endpoint_urls=True,
            # Trailing checksums (aws-chunked bodies) are refused by many S3-compatible servers;
            # uploads carry Content-MD5 instead.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            proxies={"http": proxy, "https": proxy} if proxy else None,
            user_agent_extra="nydus-compact",
        )
        keys: dict[str, str] = {}
        if access_key_id:
            keys = {"aws_access_key_id": access_key_id, "aws_secret_access_key": access_key_secret}
        else:
            try:
                resolver = session.get_component("credential_provider")
                for method in METADATA_PROVIDERS:
                    resolver.remove(method)
                found = session.get_credentials()
            except BotoCoreError as exc:
                raise BackendError(f"s3 backend: cannot load AWS credentials: {exc}") from None
            if found is None:
                config = config.merge(Config(signature_version=UNSIGNED))
        try:
            self._client = session.create_client(
                "s3",
                endpoint_url=self.endpoint_url,
                use_ssl=self.scheme == "https",
                verify=not skip_verify,
                config=config,
                **keys,
            )
        except (BotoCoreError, ValueError) as exc:
            raise BackendError(f"s3 backend: cannot set up a client for {self._where()}: {exc}") from None

    # ---- public interface -------------------------------------------------------------------

    def key(self, blob_id: str) -> str:
        check_blob_id(blob_id)
        return f"{self.prefix}{blob_id}"

    def blob_size(self, blob_id: str) -> int:
        size = self._sizes.get(blob_id)
        if size is None:
            size = self._head(self.key(blob_id))
            if size is None:
                raise BlobNotFoundError(f"blob {blob_id} not found in {self._where()} (no object {self.key(blob_id)})")
            self._sizes[blob_id] = size
        return size

    def read_exact(self, blob_id: str, offset: int, size: int) -> bytes:
        key = self.key(blob_id)
        if offset < 0 or size < 0:
            raise BackendError(f"blob {blob_id}: invalid range offset {offset} size {size}")
        if size == 0:
            return b""
        what = f"GET {key} range {offset}+{size}"

        def once() -> bytes:
            resp = self._client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{offset + size - 1}")
            body = resp["Body"]
            try:
                data = body.read()
            finally:
                body.close()
            # A server that ignores Range answers 200 with the whole object.
            if resp["ResponseMetadata"]["HTTPStatusCode"] == 200 and len(data) > size:
                data = data[offset : offset + size]
            return data

        data = self._call(what, once, not_found=blob_id)
        if len(data) != size:
            raise short_read_error(blob_id, offset, size, len(data))
        return data

    def upload_blob(self, blob_id: str, path: Path) -> bool:
        key = self.key(blob_id)
        path = Path(path)
        marker = path.with_name(f"{UPLOAD_MARKER}{blob_id}")
        self._abort_recorded(marker)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise BackendError(f"blob {blob_id}: cannot read {path}: {exc.strerror or exc}") from None
        stored = self._head(key)
        if stored == size:
            self._sizes[blob_id] = size
            return False
        if stored is not None:
            raise BackendError(
                f"{self._where()}: object {key} exists with {stored} bytes, the new blob has {size}; "
                "refusing to overwrite it"
            )
        try:
            with path.open("rb") as f:
                if size <= self.multipart_threshold:
                    data = read_full(f, size, path, blob_id)
                    self._call(f"PUT {key}", lambda: self._client.put_object(
                        Bucket=self.bucket, Key=key, Body=data, ContentLength=size, ContentMD5=_md5(data)))
                else:
                    self._multipart(key, f, size, path, blob_id, marker)
        except OSError as exc:
            raise BackendError(f"blob {blob_id}: cannot read {path}: {exc.strerror or exc}") from None
        stored = self._head(key)
        if stored != size:
            raise BackendError(f"{self._where()}: after upload object {key} has size {stored}, expected {size}")
        self._sizes[blob_id] = size
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "type": "s3", "endpoint": self.endpoint, "scheme": self.scheme, "region": self.region,
            "bucket_name": self.bucket, "object_prefix": self.prefix,
        }

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"S3Backend({self._where()})"

    # ---- uploads ----------------------------------------------------------------------------

    def _multipart(self, key: str, f, size: int, path: Path, blob_id: str, marker: Path) -> None:  # type: ignore[no-untyped-def]
        from nydus_compact.safeio import atomic_write_text

        started = self._call(f"start multipart upload of {key}", lambda: self._client.create_multipart_upload(
            Bucket=self.bucket, Key=key))
        upload_id = started["UploadId"]
        atomic_write_text(marker, json.dumps({"bucket": self.bucket, "key": key, "upload_id": upload_id}))
        try:
            parts = []
            for number, offset in enumerate(range(0, size, self.part_size), start=1):
                data = read_full(f, min(self.part_size, size - offset), path, blob_id)
                done = self._call(f"upload part {number} of {key}", lambda: self._client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data,
                    ContentLength=len(data), ContentMD5=_md5(data)))
                parts.append({"PartNumber": number, "ETag": done["ETag"]})
                fault_point(f"s3-part-done:{number}")
            self._call(f"complete multipart upload of {key}", lambda: self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}))
        except BaseException:
            self._abort(key, upload_id, quiet=True)
            marker.unlink(missing_ok=True)
            raise
        marker.unlink(missing_ok=True)

    def _abort_recorded(self, marker: Path) -> None:
        """Abort the multipart upload a killed run recorded beside the blob, then forget it."""
        try:
            doc = json.loads(marker.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            raise BackendError(f"{marker}: unreadable record of an unfinished s3 upload; remove it and rerun") from None
        if doc.get("bucket") == self.bucket and isinstance(doc.get("key"), str) and isinstance(doc.get("upload_id"), str):
            self._abort(doc["key"], doc["upload_id"], quiet=False)
        marker.unlink()

    def _abort(self, key: str, upload_id: str, *, quiet: bool) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if _code(exc) in ("NoSuchUpload", "404") or quiet:
                return
            raise self._error(f"abort multipart upload of {key}", exc) from None
        except BotoCoreError as exc:
            if not quiet:
                raise self._error(f"abort multipart upload of {key}", exc) from None

    # ---- requests and errors ----------------------------------------------------------------

    def _head(self, key: str) -> int | None:
        """Size of the object, None if the bucket has no such object."""
        try:
            resp = self._call(f"HEAD {key}", lambda: self._client.head_object(Bucket=self.bucket, Key=key), not_found="")
        except BlobNotFoundError:
            return None
        return int(resp["ContentLength"])

    def _call(self, what: str, request: Callable[[], T], not_found: str | None = None) -> T:
        """``request()`` with botocore's errors turned into one line; a 404 of an object becomes
        BlobNotFoundError when ``not_found`` is given (a 404 of the bucket never does)."""
        try:
            return request()
        except ClientError as exc:
            if not_found is not None and _status(exc) == 404 and _code(exc) in ("404", "NoSuchKey"):
                self._check_bucket()
                raise BlobNotFoundError(f"blob {not_found} not found in {self._where()}") from None
            raise self._error(what, exc) from None
        except BotoCoreError as exc:
            raise self._error(what, exc) from None

    def _check_bucket(self) -> None:
        """A HEAD of an object in a missing bucket is a bare 404 too: ask the bucket once."""
        if self._bucket_checked:
            return
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            # 403: we may read objects without the right to list the bucket; the 404 was the object's.
            if _status(exc) != 403:
                raise self._error("HEAD bucket", exc) from None
        except BotoCoreError as exc:
            raise self._error("HEAD bucket", exc) from None
        self._bucket_checked = True

    def _error(self, what: str, exc: Exception) -> BackendError:
        if isinstance(exc, ClientError):
            status, code = _status(exc), _code(exc)
            reason = f"HTTP {status}" + (f" {code}" if code and code != str(status) else "")
            if status == 404 and what == "HEAD bucket":
                reason += " (no such bucket)"
            elif status in (401, 403):
                reason += " (access denied: check the credentials)"
        else:
            reason = " ".join(str(exc).split()) or type(exc).__name__
        return BackendError(f"{self._where()}: {what}: {reason}")

    def _where(self) -> str:
        endpoint = self.endpoint_url or f"AWS s3 ({self.region})"
        return f"s3 {endpoint} bucket {self.bucket}"


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()
