"""Compressed request bodies (``Content-Encoding``) through a running gateway, and the
decoder on its own."""

from __future__ import annotations

import gzip
import itertools
import json
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice import codings
from sluice.errors import BodyTooLarge, RequestError, SluiceError, UnsupportedMediaType
from tests.conftest import StartGateway
from tests.gateway import RunningGateway

LIMIT = 65_536
BODY = json.dumps({"model": "normal", "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture
def gateway(start_gateway: StartGateway, upstream: Any) -> RunningGateway:
    config = {
        "default_model": "normal",
        "max_body_bytes": LIMIT,
        "models": {
            "normal": {
                "provider": "openai",
                "base_url": upstream.url,
                "api_key_env": "TEST_UPSTREAM_KEY",
            }
        },
    }
    return start_gateway(config, env={"TEST_UPSTREAM_KEY": "sk-test"})


def post(gateway: RunningGateway, content: Any, encoding: str | None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if encoding is not None:
        headers["content-encoding"] = encoding
    with httpx.Client(timeout=10) as client:
        return client.post(f"{gateway.api}/chat/completions", content=content, headers=headers)


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    """A body sent chunked, in pieces that cut the compressed stream anywhere."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def assert_error(response: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    return error


def test_gzip_body_is_accepted(gateway: RunningGateway) -> None:
    response = post(gateway, gzip.compress(BODY), "gzip")
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    # Sent chunked in 7-byte pieces, across the gzip header and trailer.
    response = post(gateway, pieces(gzip.compress(BODY), 7), "gzip")
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "body",
    [zlib.compress(BODY), zlib.compress(BODY)[2:-4]],
    ids=["zlib", "raw-deflate"],
)
def test_deflate_body_is_accepted(gateway: RunningGateway, body: bytes) -> None:
    assert post(gateway, body, "deflate").status_code == 200


def test_fake_gzip_is_a_400_naming_content_encoding(gateway: RunningGateway) -> None:
    error = assert_error(post(gateway, BODY, "gzip"), 400, "Content-Encoding")
    assert "Content-Encoding: gzip" in error["message"]
    truncated = gzip.compress(BODY)[:-12]
    error = assert_error(post(gateway, truncated, "gzip"), 400, "Content-Encoding")
    assert "ends early" in error["message"]
    # The gateway keeps serving.
    assert post(gateway, BODY, None).status_code == 200


def test_a_zip_bomb_is_a_413(gateway: RunningGateway) -> None:
    huge = BODY.replace(b'"hi"', b'"' + b"a" * 50_000_000 + b'"')
    bomb = gzip.compress(huge, compresslevel=9)
    assert len(bomb) < LIMIT  # small on the wire: only decoding shows its size
    error = assert_error(post(gateway, pieces(bomb, 4096), "gzip"), 413, None)
    assert error["code"] == "request_too_large"
    assert str(LIMIT) in error["message"]
    assert post(gateway, gzip.compress(BODY), "gzip").status_code == 200


def test_an_unknown_encoding_is_a_415(gateway: RunningGateway) -> None:
    response = post(gateway, BODY, "br")
    error = assert_error(response, 415, "Content-Encoding")
    assert "'br'" in error["message"]
    assert response.headers["accept-encoding"] == codings.SUPPORTED


def test_identity_is_no_encoding(gateway: RunningGateway) -> None:
    assert post(gateway, BODY, "identity").status_code == 200


# -- the decoder alone ----------------------------------------------------------------


def decode(header: str, data: bytes, limit: int = LIMIT, size: int = 3) -> bytes:
    decoder = codings.decoder(header, limit)
    return b"".join(decoder.feed(piece) for piece in pieces(data, size)) + decoder.flush()


def test_decoder_layers_and_members() -> None:
    assert decode("gzip", gzip.compress(BODY)) == BODY
    assert decode("x-gzip", gzip.compress(BODY)) == BODY
    # Several gzip members, one after the other, are one body (RFC 1952).
    assert decode("gzip", gzip.compress(BODY[:20]) + gzip.compress(BODY[20:])) == BODY
    # Codings are listed in the order they were applied.
    assert decode("deflate, gzip", gzip.compress(zlib.compress(BODY))) == BODY
    assert decode("", BODY) == BODY


def test_decoder_limits() -> None:
    assert decode("gzip", gzip.compress(b"a" * 100), limit=100) == b"a" * 100
    with pytest.raises(BodyTooLarge):
        decode("gzip", gzip.compress(b"a" * 101), limit=100)
    with pytest.raises(BodyTooLarge):
        decode("gzip", gzip.compress(b"a" * 10_000_000), size=1 << 16)
    with pytest.raises(UnsupportedMediaType):
        codings.decoder("gzip, zstd", LIMIT)
    with pytest.raises(RequestError, match="bytes after its end"):
        decode("deflate", zlib.compress(BODY) + b"junk")


CODINGS = ["gzip", "deflate", "deflate, gzip", "identity", "gzip, gzip"]


def _encode(header: str, data: bytes, raw_deflate: bool) -> bytes:
    for coding in [c.strip() for c in header.split(",")]:
        if coding == "gzip":
            data = gzip.compress(data)
        elif coding == "deflate":
            packer = zlib.compressobj(wbits=-15 if raw_deflate else 15)
            data = packer.compress(data) + packer.flush()
    return data


def _reads(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data)} | {c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(CODINGS),
    st.binary(max_size=2000),
    st.booleans(),
    st.lists(st.integers(0, 5000), max_size=8),
    st.sampled_from([0, 1, 3, 8, 1 << 20]),
)
def test_any_body_in_any_reads_decodes_or_is_a_typed_error(
    header: str, body: bytes, raw_deflate: bool, cuts: list[int], damage: int
) -> None:
    """Encoded bodies, whole or with a byte damaged or cut short, in random reads: the
    body back, or a typed error; never another exception."""
    data = _encode(header, body, raw_deflate)
    if damage and data and damage < len(data):
        data = data[:damage] + bytes([data[damage] ^ 0x55]) + data[damage + 1 :]
    elif damage == 1 << 20:
        data = data[: len(data) // 2]
    decoder = codings.decoder(header, LIMIT)
    try:
        out = b"".join(decoder.feed(read) for read in _reads(data, cuts)) + decoder.flush()
    except SluiceError as exc:
        assert 400 <= exc.status < 500
        return
    if not damage:
        assert out == body


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(CODINGS), st.binary(max_size=300), st.lists(st.integers(0, 400)))
def test_random_bytes_under_any_coding_are_a_typed_error(
    header: str, data: bytes, cuts: list[int]
) -> None:
    decoder = codings.decoder(header, LIMIT)
    try:
        b"".join(decoder.feed(read) for read in _reads(data, cuts)) + decoder.flush()
    except SluiceError as exc:
        assert 400 <= exc.status < 500
