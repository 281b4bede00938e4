"""What Cloudflare R2's S3 API refuses, as a `refuse` rule for tests/s3_fault_proxy.py (a test tool: SeaweedFS
behind the proxy still stores and serves every byte; the proxy only answers, with R2's error, the requests R2 would
not take).

From R2's "S3 API compatibility" page (developers.cloudflare.com/r2/api/s3/api/): the region is `auto` (an empty
region and `us-east-1` alias to it); no ACLs (x-amz-acl, x-amz-grant-*), no object tagging, no object lock, no
x-amz-expected-bucket-owner, no bucket policy, versioning, website or replication sub-resources; of the flexible
checksums only CRC64NVME exists for a whole object (CRC32, CRC32C, SHA-1 and SHA-256 only per part, composite),
so a PutObject that carries one of those four, as a header or as an aws-chunked trailer, is refused. R2's
"Conditional operations" page (developers.cloudflare.com/r2/api/s3/conditional-operations/) takes If-None-Match on
PutObject and CompleteMultipartUpload, but a CopyObject's destination condition only as
cf-copy-destination-if-none-match: a CopyObject with If-None-Match is refused here (what R2 does with it is not
documented; it does not make the copy write-once). STORAGE.md lists what this cannot show without an R2 account.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

from tests.s3_fault_proxy import Request, S3Error

R2_REGIONS = frozenset({"auto", "us-east-1", ""})
REFUSED_HEADERS = ("x-amz-acl", "x-amz-grant-", "x-amz-tagging", "x-amz-object-lock-", "x-amz-bucket-object-lock",
                   "x-amz-expected-bucket-owner")
REFUSED_SUBRESOURCES = frozenset({"acl", "tagging", "policy", "versioning", "object-lock", "retention",
                                  "legal-hold", "website", "replication"})
COMPOSITE_ONLY_CHECKSUMS = ("crc32", "crc32c", "sha1", "sha256")  # R2: per part only, never for a whole object
CREDENTIAL = re.compile(r"Credential=([^,\s]+)")


def r2_refusal(request: Request) -> S3Error | None:
    """R2's answer to a request it does not take; None when R2 would take it."""
    region = _signed_region(request)
    if region is not None and region not in R2_REGIONS:
        return S3Error(400, "InvalidRegionName", f"The region name '{region}' is not valid. Must be 'auto'")
    for name in request.headers:
        if name.startswith(REFUSED_HEADERS):
            return S3Error(501, "NotImplemented", f"Header '{name}' not implemented")
    query = parse_qs(urlsplit(request.target).query, keep_blank_values=True)
    if refused := REFUSED_SUBRESOURCES & set(query):
        return S3Error(501, "NotImplemented", f"Sub-resource '{sorted(refused)[0]}' not implemented")
    if _is_copy_object(request, query) and "if-none-match" in request.headers:
        return S3Error(501, "NotImplemented", "If-None-Match on CopyObject: R2 takes a copy's destination condition "
                                              "as cf-copy-destination-if-none-match")
    if _is_put_object(request, query) and (algorithm := _whole_object_checksum(request)):
        return S3Error(501, "NotImplemented", f"Checksum algorithm '{algorithm}' is only implemented as a "
                                              "composite (per part) checksum, not for a whole object")
    return None


def _signed_region(request: Request) -> str | None:
    """The region of the SigV4 credential scope (Authorization header or a presigned URL's X-Amz-Credential)."""
    match = CREDENTIAL.search(request.headers.get("authorization", ""))
    credential = match.group(1) if match else None
    if credential is None:
        values = parse_qs(urlsplit(request.target).query).get("X-Amz-Credential")
        credential = unquote(values[0]) if values else None
    if credential is None:
        return None
    parts = credential.split("/")
    return parts[2] if len(parts) >= 4 else None


def _is_put_object(request: Request, query: dict[str, list[str]]) -> bool:
    return request.method == "PUT" and "partNumber" not in query and "x-amz-copy-source" not in request.headers


def _is_copy_object(request: Request, query: dict[str, list[str]]) -> bool:
    return request.method == "PUT" and "partNumber" not in query and "x-amz-copy-source" in request.headers


def _whole_object_checksum(request: Request) -> str | None:
    """A checksum R2 keeps only per part, sent for a whole object (as a header or named as a trailer)."""
    trailer = request.headers.get("x-amz-trailer", "").lower()
    for algorithm in COMPOSITE_ONLY_CHECKSUMS:
        name = f"x-amz-checksum-{algorithm}"
        if name in request.headers or name in trailer:
            return algorithm.upper()
    declared = request.headers.get("x-amz-sdk-checksum-algorithm", "").lower()
    return declared.upper() if declared in COMPOSITE_ONLY_CHECKSUMS else None
