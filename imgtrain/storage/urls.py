"""Bucket URLs: which schemes imgtrain reads and writes, the client for each, and what a failed
call means in one line.

``SCHEMES`` is the one table of them. A URL stays a string everywhere (``pathlib`` would turn
``gs://b/x`` into ``gs:/b/x``). Clients come from fsspec (``s3fs``, ``gcsfs``), configured as
each cloud's own tools are: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_PROFILE`` and
roles for S3; ``GOOGLE_APPLICATION_CREDENTIALS``, workload identity and
``STORAGE_EMULATOR_HOST`` for GCS.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional
from urllib.parse import quote

from imgtrain.errors import Unreachable, UserError


@dataclass(frozen=True)
class Scheme:
    module: str  # the fsspec implementation to import
    extra: str  # pip install 'imgtrain[<extra>]'
    credentials: str  # where its credentials come from, for the one line that says they are missing
    endpoint: str  # the variable naming a server other than the cloud's own
    endpoint_scheme: bool  # whether that variable must hold a scheme (gcsfs adds http:// itself)
    bucket_rule: str  # a bucket name as the service creates it today (a regular expression)
    bucket_words: str  # the same, in words
    bucket_legacy: bool  # whether older buckets may be named outside the rule (S3's us-east-1: yes)


SCHEMES = {
    "s3": Scheme(
        "s3fs",
        "s3",
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or give the machine a role "
        "(and AWS_ENDPOINT_URL for a store other than AWS)",
        "AWS_ENDPOINT_URL",
        True,
        r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
        "3 to 63 lowercase letters, digits, dots and hyphens, beginning and ending with a letter or digit",
        True,
    ),
    "gs": Scheme(
        "gcsfs",
        "gcs",
        "set GOOGLE_APPLICATION_CREDENTIALS to a service account key, run 'gcloud auth application-default "
        "login', or give the pod a workload identity",
        "STORAGE_EMULATOR_HOST",
        False,
        r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]|(?=.{3,222}$)[a-z0-9][a-z0-9_-]*(?:\.[a-z0-9][a-z0-9_-]{0,61})+",
        "3 to 63 lowercase letters, digits, hyphens, underscores and dots (222 with dots), beginning and "
        "ending with a letter or digit",
        False,
    ),
}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$")


def scheme_of(path: Any) -> Optional[str]:
    """The scheme of a URL (``s3``, ``gs``, or any other written ``name://``), None for a path."""
    match = _URL.match(str(path)) if isinstance(path, str) else None
    return match.group(1).lower() if match else None


def is_url(path: Any) -> bool:
    """True for ``s3://`` and ``gs://`` URLs (any other scheme is refused by ``check``)."""
    return scheme_of(path) in SCHEMES


def check(path: Any, where: str) -> None:
    """Refuse a URL whose scheme imgtrain does not read, and one without a bucket, in one line."""
    scheme = scheme_of(path)
    if scheme is None:
        return
    if scheme not in SCHEMES:
        raise UserError(
            f"{where} is {path}, a {scheme}:// URL; imgtrain reads and writes local paths, "
            + " and ".join(f"{s}://" for s in SCHEMES)
        )
    bucket, _ = split(path)
    if not bucket:
        raise UserError(f"{where} is {path}, which names no bucket; write {scheme}://BUCKET/PATH")
    spec = SCHEMES[scheme]
    # What no bucket was ever named (S3's older buckets: 3 to 255 letters, digits, '.', '-', '_').
    never = not re.fullmatch(r"[A-Za-z0-9._-]{3,255}", bucket)
    if never or (not spec.bucket_legacy and not valid_bucket(scheme, bucket)):
        raise UserError(f"{where} is {path}, and {bucket!r} cannot be a bucket's name: a name has {spec.bucket_words}")


def valid_bucket(scheme: str, bucket: str) -> bool:
    """Whether ``bucket`` follows the service's rule for a bucket created today."""
    return re.fullmatch(SCHEMES[scheme].bucket_rule, bucket) is not None


def split(url: str) -> tuple[str, str]:
    """(bucket, key) of a URL; the key has no leading or trailing slash."""
    rest = _URL.match(url).group(2)  # type: ignore[union-attr]
    bucket, _, key = rest.partition("/")
    return bucket, key.strip("/")


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts if p)])


def bare(url: str) -> str:
    """The URL without its scheme: the path fsspec's filesystems take (``bucket/key``)."""
    bucket, key = split(url)
    return f"{bucket}/{key}" if key else bucket


_QUIET = logging.NullHandler()  # added once: a logger keeps one of each handler object

# Every request has its bounds in the client: a connection in CONNECT_SECONDS, no silence longer
# than READ_SECONDS while an answer is awaited or read, TRIES tries (botocore's; s3fs's retries
# of the same call too). Every call of imgtrain's has a deadline of its own besides (fsspec ends
# it and cancels its requests), so that a server that accepts connections and never answers (a
# hung gateway, a frozen process) ends a command in one line instead of the clients' retries
# multiplied: 60 s of read timeout x 3 attempts x 5 retries for s3fs, 6 retries for gcsfs.
CONNECT_SECONDS = 5.0
READ_SECONDS = 20.0
TRIES = 2
CALL_SECONDS = 30.0  # a call of one or a few requests: a marker, the lease, a record, one folder
LISTING_SECONDS = 900.0  # a whole listing or a removal by prefix (1.28 M keys are 1,300 pages)
# The calls imgtrain makes and their deadlines; transfers (get, get_file, put_file) have none of
# their own, as their length grows with their size: each of their requests is bounded.
DEADLINES = {
    **dict.fromkeys(
        ("info", "cat_file", "pipe_file", "rm_file", "exists", "isfile", "ls", "call", "call_s3"), CALL_SECONDS
    ),
    **dict.fromkeys(("find", "rm", "list_multipart_uploads"), LISTING_SECONDS),
}


def filesystem(url: str):
    """The fsspec filesystem for ``url``'s scheme, its calls bounded (``DEADLINES``), or one
    line naming the extra to install."""
    scheme = scheme_of(url)
    spec = SCHEMES[scheme]  # type: ignore[index]
    try:
        importlib.import_module(spec.module)
        import fsspec
    except ImportError:
        raise UserError(
            f"{url} needs {spec.module}, which is not installed; pip install 'imgtrain[{spec.extra}]'"
        ) from None
    _check_endpoint(spec)
    # The clients log their retries and fallbacks (with tracebacks) to Python's last-resort
    # handler, which prints them; what a failure means is said once, by explain().
    logging.getLogger(spec.module).addHandler(_QUIET)
    # A new client each time: one cached by fsspec would keep the credentials and endpoint of the
    # environment it was made in.
    if scheme == "gs":
        import aiohttp

        timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_SECONDS, sock_read=READ_SECONDS)
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            # gcsfs's default class asks the bucket's layout over gRPC, which an emulator does not
            # answer (every call hangs); the plain JSON-API class is what an emulator serves.
            from gcsfs.core import GCSFileSystem

            return _bounded(GCSFileSystem(skip_instance_cache=True, requests_timeout=timeout))
        return _bounded(fsspec.filesystem(scheme, skip_instance_cache=True, requests_timeout=timeout))
    fs = fsspec.filesystem(
        scheme,
        skip_instance_cache=True,
        config_kwargs={
            "connect_timeout": CONNECT_SECONDS,
            "read_timeout": READ_SECONDS,
            "retries": {"max_attempts": TRIES, "mode": "standard"},
        },
    )
    fs.retries = TRIES  # s3fs's own tries of a call (5 unless set), each with botocore's
    return _bounded(fs)


def _bounded(fs):
    """``fs`` with a deadline on each call of ``DEADLINES`` (fsspec's ``timeout``; a caller's own wins)."""
    for name, seconds in DEADLINES.items():
        method = getattr(fs, name, None)
        if method is not None:
            setattr(fs, name, functools.partial(method, timeout=seconds))
    return fs


def _check_endpoint(spec: Scheme) -> None:
    """An endpoint variable that must name its scheme does (botocore refuses ``127.0.0.1:9000``
    with a traceback)."""
    value = os.environ.get(spec.endpoint, "").strip()
    if spec.endpoint_scheme and value and not re.match(r"^https?://[^/\s]+", value):
        raise UserError(
            f"{spec.endpoint}={value!r} is not an endpoint URL; write it with its scheme, e.g. "
            f"{spec.endpoint}=http://{value.split('://')[-1]}"
        )


class Conflict(Exception):
    """A conditional write found the object not as expected (there already, or changed since)."""


def write_if(fs, path: str, data: bytes, version: Optional[str]) -> str:
    """Write ``data`` at ``path`` only if it is absent (``version`` None) or still at ``version``
    (its S3 ETag, its GCS generation), by the service's own precondition (S3 ``If-None-Match``
    and ``If-Match``, GCS ``ifGenerationMatch``); ``Conflict`` otherwise. Returns the version
    written."""
    try:
        if version is None:
            fs.pipe_file(path, data, mode="create")
        elif "s3" in fs.protocol:
            fs.pipe_file(path, data, IfMatch=version)
        else:
            _gcs_write_if(fs, path, data, version)
    except FileExistsError:
        raise Conflict(path) from None
    except OSError as exc:
        if _PRECONDITION.search(f"{exc} {exc.__cause__ or ''}"):
            raise Conflict(path) from None
        raise
    return version_of(fs, path)


def files_under(fs, root: str) -> dict[str, dict[str, Any]]:
    """Every file below ``root`` (a URL without its scheme), by path relative to it, with its
    listing entry; listed afresh (another machine may have written since this client listed).
    One short call comes first: a service that does not answer is known in ``CALL_SECONDS``,
    not after a listing's deadline."""
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    with contextlib.suppress(FileNotFoundError):
        fs.info(root)
    with_prefix = root + "/"
    return {
        name[len(with_prefix) :]: info
        for name, info in fs.find(root, detail=True).items()
        if name.startswith(with_prefix) and info.get("type") != "directory" and not name.endswith("/")
    }


def modified(info: dict[str, Any]) -> Optional[datetime]:
    """When an object was last written, from its listing's or ``info``'s entry (the service's clock)."""
    for key in ("LastModified", "updated", "mtime"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
    return None


def version_of(fs, path: str) -> str:
    """The version a conditional write names (S3 ETag, GCS generation), read afresh."""
    fs.invalidate_cache(path)
    return version_in(fs.info(path))


def version_in(info: dict[str, Any]) -> str:
    """An object's version in a listing's or ``info``'s entry: its GCS generation, its S3 ETag."""
    return str(info.get("generation") or info.get("ETag") or info.get("etag") or "")


def _gcs_write_if(fs, path: str, data: bytes, generation: str) -> None:
    # gcsfs sends ifGenerationMatch only for "create" (0); an upload conditional on another
    # generation is the JSON API's multipart upload with that parameter.
    bucket, _, key = path.partition("/")
    meta = json.dumps({"name": key})
    body = (
        (
            f"--==0==\nContent-Type: application/json; charset=UTF-8\n\n{meta}\n--==0==\n"
            "Content-Type: application/octet-stream\n\n"
        ).encode()
        + data
        + b"\n--==0==--"
    )
    fs.call(
        "POST",
        f"{fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
        uploadType="multipart",
        ifGenerationMatch=generation,
        data=body,
        headers={"Content-Type": 'multipart/related; boundary="==0=="'},
        json_out=True,
    )


# What the clients' failures say, by meaning (botocore, aiohttp, google-auth and gcsfs words).
_NO_CREDENTIALS = re.compile(
    r"NoCredentials|Unable to locate credentials|DefaultCredentialsError|credentials were not found"
)
_DENIED = re.compile(r"AccessDenied|Access Denied|Forbidden|InvalidAccessKeyId|SignatureDoesNotMatch|\b403\b")
_NO_BUCKET = re.compile(r"NoSuchBucket|bucket does not exist|specified bucket is not valid")
_PRECONDITION = re.compile(r"PreconditionFailed|pre-conditions? you specified|\b412\b")
_UNREACHABLE = re.compile(
    r"EndpointConnectionError|ClientConnectorError|Cannot connect|Connection refused|ConnectTimeout|"
    r"Name or service not known|ServerDisconnected"
)
_HTTP_STATUS = re.compile(
    r"An error occurred \((\d{3}|[A-Za-z]+)\)|\b(Not Implemented|Method Not Allowed|Bad Request)\b"
)
_SILENT = re.compile(r"FSTimeoutError|ReadTimeout|Read timeout|ServerTimeoutError|TimeoutError|timed out")


def explain(exc: BaseException, url: str, doing: str) -> Optional[Exception]:
    """What a failed call on ``url`` means, as the one line a user needs: a ``UserError`` (exit
    2: the input must change) or ``Unreachable`` (exit 75: the same command, once the service
    answers); None for anything else (a bug, or a fault worth its traceback)."""
    spec = SCHEMES.get(scheme_of(url) or "")
    if spec is None:
        return None
    text = f"{type(exc).__name__}: {exc} {exc.__cause__ or ''}"
    if _NO_CREDENTIALS.search(text):
        return UserError(f"no credentials to {doing} {url}: {spec.credentials}")
    if isinstance(exc, PermissionError) or _DENIED.search(text):
        return UserError(
            f"access denied to {doing} {url} ({_first_line(exc)}): check the credentials and the bucket's "
            "permissions (reading needs list and get; a run's output needs put and delete too)"
        )
    service = (
        f"the storage service ({spec.endpoint}={os.environ[spec.endpoint]})"
        if os.environ.get(spec.endpoint)
        else "the storage service"
    )
    if isinstance(exc, FileNotFoundError) or _NO_BUCKET.search(text):
        return _not_found(exc, url, doing, spec, service)
    if _UNREACHABLE.search(text):
        return Unreachable(
            f"cannot reach {service} to {doing} {url} ({_first_line(exc)}); nothing was lost: check the network "
            f"and {spec.endpoint}, then run the same command again"
        )
    if isinstance(exc, TimeoutError) or _SILENT.search(text):
        return Unreachable(
            f"{service} did not answer in time to {doing} {url}; nothing was lost: run the same command again "
            "when it answers"
        )
    status = _HTTP_STATUS.search(text)
    if status:  # an HTTP answer no storage service gives to these calls
        return UserError(
            f"{service} answered {(status.group(1) or status.group(2))!r} to {doing} {url}: check that "
            f"{spec.endpoint} names a storage service that serves the {scheme_of(url)}:// API"
        )
    return None


def _not_found(exc: BaseException, url: str, doing: str, spec: Scheme, service: str) -> UserError:
    """Listing or writing under a bucket finds nothing missing but the bucket, which a storage
    service names (NoSuchBucket); a bare Not Found is some other server's."""
    bucket = split(url)[0]
    if _NO_BUCKET.search(f"{exc} {exc.__cause__ or ''}"):
        if not valid_bucket(scheme_of(url) or "", bucket):
            return UserError(
                f"the bucket {bucket} of {url} does not exist, and a bucket's name has {spec.bucket_words}"
            )
        return UserError(f"the bucket {bucket} of {url} does not exist: create it, or fix the URL")
    return UserError(
        f"{service} answered Not Found to {doing} {url} without naming a missing bucket: check that "
        f"{spec.endpoint} names a storage service, and that the bucket {bucket} exists"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]
