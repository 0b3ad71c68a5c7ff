"""Gzip as sources store it: one member or several (the S3 loader), padded or damaged."""

import gzip

import pytest

from insights.storage import decompress

TEXT = b"".join(b"line %d\tof a file\n" % i for i in range(5000))


@pytest.mark.parametrize(
    "data",
    [
        gzip.compress(TEXT),
        gzip.compress(TEXT[:7]) + gzip.compress(TEXT[7:50_000]) + gzip.compress(b"") + gzip.compress(TEXT[50_000:]),
        gzip.compress(TEXT) + b"\0" * 16,
        TEXT,
    ],
    ids=["one member", "four members", "zero padding", "not gzipped"],
)
def test_every_member_is_inflated(data: bytes) -> None:
    assert decompress(data, "f.tsv.gz") == TEXT


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (gzip.compress(TEXT)[:-9], "end-of-stream marker"),
        (gzip.compress(TEXT) + gzip.compress(TEXT)[:30], "end-of-stream marker"),
        (gzip.compress(TEXT) + b"junk", "4 bytes after the end of the gzip stream"),
        (gzip.compress(TEXT)[:20] + b"\xff" * 64 + gzip.compress(TEXT)[84:], "Error"),
    ],
    ids=["cut short", "second member cut short", "trailing junk", "damaged"],
)
def test_damaged_gzip_names_the_file(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=rf"f\.tsv\.gz: corrupt gzip data \(.*{reason}"):
        decompress(data, "f.tsv.gz")
