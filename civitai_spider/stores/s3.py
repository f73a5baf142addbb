"""The file store in an S3-compatible bucket: ``IMAGES_STORE=s3://bucket/prefix``.

The objects are named and filled as the local files would be (``prefix/<id>.jpg``,
``prefix/<id>_meta.json``...), each with its ``Content-Type``. A PUT is atomic (a reader
sees the whole object or none) and stored once it returned, so there is no temporary name
and :meth:`S3Store.commit` has nothing to do.

Credentials and endpoint come from Scrapy's settings, as for Scrapy's own S3 store
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_ENDPOINT_URL``, ``AWS_REGION_NAME``, ``AWS_USE_SSL``, ``AWS_VERIFY``,
``IMAGES_STORE_S3_ACL``), else from botocore's usual places (environment, ``~/.aws``).
Uploads run in a pool of ``AWS_MAX_POOL_CONNECTIONS`` threads, never in the reactor
thread; botocore retries each (``AWS_MAX_ATTEMPTS``, ``AWS_RETRY_MODE``), and an upload
that still fails is a :class:`~civitai_spider.stores.base.StoreError` that fails its item.
Uploads go without ``Expect: 100-continue`` (see :func:`_client`), their bodies unhashed for the
signature and checked by the server against their CRC32 instead. An upload of bytes that goes
well is sent by :mod:`~civitai_spider.stores.s3_put`, signed by botocore's signer over
``http.client`` (botocore's client costs four times its CPU);
any other answer and any error hand it to botocore's ``put_object``, as every other request.

Read back (the dataset commands), an object is one GET, or ranged GETs through
:meth:`S3Store.reader`, and a dataset file is written to a local temporary file first, then
uploaded with one PUT: it appears whole or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

from civitai_spider.errors import describe
from civitai_spider.local_files import remove_temporary_files
from civitai_spider.stores import check_writable
from civitai_spider.stores.base import ReadableFileStore, StoreError
from civitai_spider.stores.id_file import check_id_file_folder
from civitai_spider.stores.s3_put import LeanPut, lean_put

if TYPE_CHECKING:
    from typing import Self

    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)
# At DEBUG, botocore logs every request with its signed headers and a traceback per retry:
# noise in a crawl's log, and credentials have no place in a log.
for _chatty in ("botocore", "urllib3"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)

#: Extension -> Content-Type of the files this project stores.
CONTENT_TYPES = {
    "jpg": "image/jpeg",
    "png": "image/png",
    # What a resizing CDN may send (CIVITAI_IMAGE_WIDTH), stored as it came.
    "webp": "image/webp",
    "avif": "image/avif",
    "gif": "image/gif",
    "mp4": "video/mp4",
    "webm": "video/webm",
    "mkv": "video/x-matroska",
    "json": "application/json",
    "txt": "text/plain; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
    "tar": "application/x-tar",
}
_DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: A file larger than this (a video) is uploaded in parts of this size by a multipart upload, one
#: part in memory at a time (botocore reads a part whole to sign and checksum it). S3 takes parts
#: of 5 MiB and more, and at most 10,000 of them: 80 GB of file at this size.
PART_BYTES = 8 * 2**20
#: The checksums an answer to upload_part may carry, to repeat in complete_multipart_upload.
_PART_CHECKSUMS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256")
#: What a user should check, by the error code the server gave at the start.
_START_ERRORS = {
    "NoSuchBucket": "bucket {bucket!r} does not exist at {endpoint}",
    "InvalidAccessKeyId": "{endpoint} does not know the access key (AWS_ACCESS_KEY_ID)",
    "SignatureDoesNotMatch": "{endpoint} refused the secret key (AWS_SECRET_ACCESS_KEY) of this access key",
    "AccessDenied": "{endpoint} refused access to bucket {bucket!r} (AccessDenied): check the credentials",
    "InvalidBucketName": "{bucket!r} is not a valid bucket name",
}


class S3Store(ReadableFileStore):
    def __init__(self, uri: str, client: Any, *, acl: str, uploads: int, lean: LeanPut | None = None) -> None:
        parts = urlsplit(uri)
        self.uri, self.bucket = uri, parts.netloc
        prefix = parts.path.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self.client, self.acl = client, acl
        self.endpoint = client.meta.endpoint_url
        self._uploads = ThreadPoolExecutor(uploads, thread_name_prefix="s3-upload")
        self.read_threads = uploads  # as many GETs at once as the client has connections
        #: Where a video waits for its upload (spool_directory): the log folder, set by build().
        self._spool = Path("civitai-logs")
        self._lean = lean
        self._lean_given_up: LeanPut | None = None  # its connections are closed with the store

    @classmethod
    def build(cls, settings: BaseSettings) -> Self:
        uri = str(settings.get("IMAGES_STORE"))
        if not urlsplit(uri).netloc:
            raise ValueError(f"IMAGES_STORE={uri!r} names no bucket: use s3://bucket/prefix")
        uploads = settings.getint("AWS_MAX_POOL_CONNECTIONS") or 10
        client, credentials, verify = _client(settings, uploads)
        lean = lean_put(client, urlsplit(uri).netloc, credentials, verify)
        acl = settings.get("IMAGES_STORE_S3_ACL") or ""
        store = cls(uri, client, acl=acl, uploads=uploads, lean=lean)
        store._spool = cls.log_directory_for(settings)
        return store

    @classmethod
    def check(cls, settings: BaseSettings, *, read_only: bool = False) -> None:
        store = cls.build(settings)
        try:
            store._check_bucket()
        finally:
            store.close()
        if not read_only:
            # The ID file and the logs stay local: their folder must take files too.
            log_folder = cls.log_directory_for(settings)
            check_writable("CIVITAI_LOG_DIR", log_folder, log_folder)
            check_id_file_folder(settings)

    def _check_bucket(self) -> None:
        import botocore.exceptions  # noqa: PLC0415 - only a bucket needs botocore

        try:
            # Listing (not HEAD) answers with an error code that tells which part is wrong.
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except botocore.exceptions.ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            problem = _START_ERRORS.get(code, "{endpoint} answered {code}: {message}").format(
                bucket=self.bucket, endpoint=self.endpoint, code=code, message=error
            )
            raise ValueError(f"IMAGES_STORE={self.uri!r}: {problem}") from None
        except botocore.exceptions.NoCredentialsError:
            raise ValueError(
                f"IMAGES_STORE={self.uri!r}: no credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ) from None
        except botocore.exceptions.BotoCoreError as error:
            raise ValueError(f"IMAGES_STORE={self.uri!r}: cannot reach {self.endpoint}: {error}") from None

    def open(self) -> None:
        # Videos of a killed run, half downloaded or not uploaded yet: never stored, so gone.
        if self._spool.is_dir():
            remove_temporary_files(self._spool)

    def spool_directory(self) -> Path:
        return self._spool

    def put_file(self, name: str, path: str) -> None:
        try:
            if os.path.getsize(path) <= PART_BYTES:
                with open(path, "rb") as file:
                    self.put(name, file.read())
            else:
                self._put_in_parts(name, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def save_file(self, name: str, path: str) -> None:
        # In the uploads' own pool, bounded as every upload is.
        await asyncio.get_running_loop().run_in_executor(self._uploads, self.put_file, name, path)

    def _put_in_parts(self, name: str, path: str) -> None:
        """A multipart upload of ``path``, one part in memory at a time; aborted on failure, so
        that the bucket keeps no parts (nobody sees the object before it is complete)."""
        key, extra = self.prefix + name, {"ACL": self.acl} if self.acl else {}
        upload = None
        try:
            upload = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ContentType=content_type(name), **extra
            )["UploadId"]
            parts = []
            with open(path, "rb") as file:
                for number in itertools.count(1):
                    data = file.read(PART_BYTES)
                    if not data:
                        break
                    answer = self.client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=number, Body=data
                    )
                    # The part's checksum (botocore adds one by default) must be repeated at the end.
                    part = {"PartNumber": number, "ETag": answer["ETag"]}
                    part.update((field, answer[field]) for field in _PART_CHECKSUMS if field in answer)
                    parts.append(part)
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
            )
        except Exception as error:
            if upload is not None:
                with contextlib.suppress(Exception):
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
            raise StoreError(f"upload of {self.describe(name)} failed: {describe(error)}") from None

    def close(self) -> None:
        self._uploads.shutdown(wait=False)
        for lean in (self._lean, self._lean_given_up):
            if lean is not None:
                lean.close()
        self.client.close()

    def put(self, name: str, data: bytes | BinaryIO) -> None:
        lean = self._lean
        refused = None
        if lean is not None and isinstance(data, bytes):
            status = self._put_lean(lean, name, data)
            if status == 200:
                return
            refused = status
        extra = {"ACL": self.acl} if self.acl else {}
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.prefix + name, Body=data, ContentType=content_type(name), **extra
            )
        except Exception as error:
            raise StoreError(f"upload of {self.describe(name)} failed: {describe(error)}") from None
        if refused is not None and 300 <= refused < 500 and self._lean is not None:
            # The server refused the lean request and took botocore's: they differ in something
            # this server needs (a region redirect, an addressing style...). Every upload would
            # be sent twice; botocore's alone it is.
            self._lean, self._lean_given_up = None, self._lean
            logger.warning(
                "%s answered %s to an upload that botocore's client then stored: every upload goes "
                "through botocore from now on (more CPU per file)",
                self.endpoint,
                refused,
            )

    def _put_lean(self, lean: LeanPut, name: str, data: bytes) -> int | None:
        """The status of the lean PUT of ``name``; None if it failed on the way (a dropped connection...)."""
        headers = {"content-type": content_type(name)}
        if self.acl:
            headers["x-amz-acl"] = self.acl
        try:
            return lean.put(self.prefix + name, data, headers)
        except Exception as error:  # a kept-alive connection the server closed, mostly: botocore's turn
            logger.debug(
                "lean upload of %s failed, botocore's client retries it: %s", self.describe(name), error
            )
            return None

    async def save(self, files: Mapping[str, bytes]) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self._uploads, self.put, *file) for file in files.items())
        )

    async def copy(self, source: str, target: str) -> None:
        await asyncio.get_running_loop().run_in_executor(self._uploads, self._copy, source, target)

    def _copy(self, source: str, target: str) -> None:
        extra = {"ACL": self.acl} if self.acl else {}
        try:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=self.prefix + target,
                CopySource={"Bucket": self.bucket, "Key": self.prefix + source},
                **extra,
            )
        except Exception as error:
            raise StoreError(f"copy to {self.describe(target)} failed: {describe(error)}") from None

    async def commit(self) -> None:
        # Every PUT that returned is stored: nothing waits for a flush.
        return None

    def describe(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}"

    def listing(self) -> Iterator[tuple[str, int | None]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"
        )
        try:
            for page in pages:
                for entry in page.get("Contents", ()):
                    yield entry["Key"][len(self.prefix) :], entry["Size"]
        except Exception as error:
            raise StoreError(f"listing of {self.describe('')} failed: {describe(error)}") from None

    def size(self, name: str) -> int:
        return self._call("head_object", name)["ContentLength"]

    def read(self, name: str) -> bytes:
        return self._call("get_object", name)["Body"].read()

    def reader(self, name: str) -> BinaryIO:
        return io.BufferedReader(_ObjectReader(self, name, self.size(name)), buffer_size=1 << 20)

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (inclusive) of the stored file ``name``."""
        return self._call("get_object", name, Range=f"bytes={start}-{end}")["Body"].read()

    @contextmanager
    def writing(self, name: str) -> Iterator[BinaryIO]:
        # A local file rather than memory: a shard may be gigabytes. The PUT streams it.
        with tempfile.TemporaryFile(prefix="civitai-upload-") as file:
            yield file
            file.seek(0)
            self.put(name, file)

    def remove(self, name: str) -> None:
        self._call("delete_object", name)  # no error for a key that is not there

    def _call(self, operation: str, name: str, **arguments: Any) -> dict[str, Any]:
        import botocore.exceptions  # noqa: PLC0415 - only a bucket needs botocore

        try:
            return getattr(self.client, operation)(Bucket=self.bucket, Key=self.prefix + name, **arguments)
        except botocore.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}:
                raise FileNotFoundError(f"{self.describe(name)} does not exist") from None
            raise StoreError(f"{self.describe(name)}: {describe(error)}") from None
        except Exception as error:
            raise StoreError(f"{self.describe(name)}: {describe(error)}") from None


class _ObjectReader(io.RawIOBase):
    """A seekable reader of one object in which each read is a ranged GET."""

    def __init__(self, store: S3Store, name: str, size: int) -> None:
        self._store, self._name, self._size = store, name, size
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        start = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, start + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        end = min(self._position + len(buffer), self._size)
        if end <= self._position:
            return 0
        data = self._store.read_range(self._name, self._position, end - 1)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(name.rsplit(".", 1)[-1].lower(), _DEFAULT_CONTENT_TYPE)


def _client(settings: BaseSettings, connections: int) -> tuple[Any, Any, bool | str]:
    """botocore's S3 client, with the credentials and the ``verify`` it resolved (for the lean PUT)."""
    try:
        import botocore.credentials  # noqa: PLC0415 - only a bucket needs botocore
        import botocore.handlers  # noqa: PLC0415
        import botocore.session  # noqa: PLC0415
        from botocore.config import Config  # noqa: PLC0415
    except ImportError:
        raise ValueError("IMAGES_STORE=s3://... needs botocore: pip install -r requirements.txt") from None
    use_ssl = settings.get("AWS_USE_SSL")
    session = botocore.session.get_session()
    access_key, secret_key = (
        settings.get("AWS_ACCESS_KEY_ID") or None,
        settings.get("AWS_SECRET_ACCESS_KEY") or None,
    )
    verify = _verify(settings.get("AWS_VERIFY"))
    try:
        client = session.create_client(
            "s3",
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            aws_session_token=settings.get("AWS_SESSION_TOKEN") or None,
            endpoint_url=settings.get("AWS_ENDPOINT_URL") or None,
            region_name=settings.get("AWS_REGION_NAME") or None,
            use_ssl=True if use_ssl is None else settings.getbool("AWS_USE_SSL"),
            verify=verify,
            config=Config(
                max_pool_connections=connections,
                # Over plain http botocore would hash each body (SHA-256) into the signature, which
                # SeaweedFS does not even check (measured: a body changed on the way was stored).
                # The body's CRC32 (x-amz-checksum-crc32) is what the server checks: a third of the
                # CPU, and required here whatever AWS_REQUEST_CHECKSUM_CALCULATION says, for an
                # unsigned body must still be checked.
                s3={"payload_signing_enabled": False},
                request_checksum_calculation="when_supported",
            ),
        )
    except Exception as error:  # botocore's ValueError for a bad endpoint, a bad region...
        raise ValueError(f"IMAGES_STORE={settings.get('IMAGES_STORE')!r}: {describe(error)}") from None
    # botocore sends every PUT with "Expect: 100-continue": headers first, the body only after the
    # server's interim answer, a round trip more per upload (four per image). It spares sending a
    # body the server would refuse, which for files of a few MB costs less than that round trip on
    # every upload that succeeds. Without it the benchmark's S3 runs made 1.13x-1.36x the images/s
    # (JPEG and PNG, SeaweedFS on loopback), with less CPU per image in the crawl and the server.
    client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
    credentials: Any
    if access_key and secret_key:
        credentials = botocore.credentials.Credentials(
            access_key, secret_key, settings.get("AWS_SESSION_TOKEN") or None
        )
    else:
        credentials = session.get_credentials()  # what the client took: the session keeps them
    if verify is None:  # as botocore resolves it
        verify = session.get_config_variable("ca_bundle") or os.environ.get("REQUESTS_CA_BUNDLE") or True
    return client, credentials, verify


def _verify(value: Any) -> bool | str | None:
    """``AWS_VERIFY``: unset, a boolean (as ``-s`` gives it, a string) or a CA bundle's path."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip()
    if not text:
        return None  # -s AWS_VERIFY= : as if unset
    if text.lower() in {"1", "true", "yes", "on"}:
        return True
    if text.lower() in {"0", "false", "no", "off"}:
        return False
    return text
