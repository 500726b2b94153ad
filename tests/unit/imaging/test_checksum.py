"""Checksum resolution (reference §5.3) and image_info validation (§5.2)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from agent.errors import ImageChecksumError, ImageDownloadError, InvalidCommandParamsError
from agent.imaging import checksum, image_info

H64 = hashlib.sha256(b"x").hexdigest()
H128 = hashlib.sha512(b"x").hexdigest()
H32 = hashlib.md5(b"x").hexdigest()  # noqa: S324 - the legacy format under test


def spec(**kw):
    base = {"id": "img", "urls": ["http://127.0.0.1/dir/disk.img"]}
    base.update(kw)
    return image_info.validate(base, md5_allowed=kw.pop("_md5", False))


@pytest.mark.parametrize("text", [
    f"{H64}  disk.img\n",
    f"{H64} *disk.img\n",
    f"# comment\n{'0' * 64}  other.img\n{H64}  disk.img\n",
    f"SHA256 (disk.img) = {H64}\n",
    f"{H64}\n",
])
def test_checksum_file_forms(text):
    assert checksum.parse_checksum_file(text, "disk.img") == H64


def test_checksum_file_without_the_name():
    with pytest.raises(ImageDownloadError, match="does not contain name disk.img"):
        checksum.parse_checksum_file(f"{H64}  other.img\n{H64}  third\n", "disk.img")


def test_empty_checksum_file():
    with pytest.raises(ImageDownloadError, match="empty"):
        checksum.parse_checksum_file("# nothing\n\n", "disk.img")


def test_os_hash_wins_over_legacy_checksum():
    s = spec(os_hash_algo="sha512", os_hash_value=H128.upper(), checksum=H64)
    exp = checksum.resolve(s, False, lambda url: pytest.fail("no fetch expected"))
    assert (exp.algo, exp.value) == ("sha512", H128)


@pytest.mark.parametrize("value,algo", [(H64, "sha256"), (H128, "sha512")])
def test_legacy_checksum_by_length(value, algo):
    exp = checksum.resolve(spec(checksum=value), False, lambda url: "")
    assert exp.algo == algo


def test_checksum_url_is_fetched_and_matched_by_file_name():
    fetched = []

    def fetch(url):
        fetched.append(url)
        return f"{H128}  disk.img\n"
    exp = checksum.resolve(spec(checksum="http://127.0.0.1/SHA512SUMS"), False, fetch)
    assert fetched == ["http://127.0.0.1/SHA512SUMS"]
    assert (exp.algo, exp.value) == ("sha512", H128)


def test_md5_only_when_enabled():
    with pytest.raises(InvalidCommandParamsError, match="MD5"):
        spec(checksum=H32)
    s = image_info.validate({"id": "i", "urls": ["http://127.0.0.1/x"], "checksum": H32},
                            md5_allowed=True)
    assert checksum.resolve(s, True, lambda u: "").algo == "md5"


def test_md5_in_checksum_file_refused_when_disabled():
    s = spec(checksum="http://127.0.0.1/MD5SUMS")
    with pytest.raises(ImageDownloadError, match="MD5"):
        checksum.resolve(s, False, lambda url: f"{H32}  disk.img")


def test_compare_is_case_insensitive_and_mismatch_names_both():
    exp = checksum.Expected("sha256", H64.upper(), "os_hash_value")
    exp.check(H64)
    with pytest.raises(ImageChecksumError) as err:
        exp.check("0" * 64)
    assert H64.upper() in err.value.details and "0" * 64 in err.value.details


@pytest.mark.parametrize("info,message", [
    ({"urls": ["http://127.0.0.1/x"], "checksum": H64}, "missing 'id'"),
    ({"id": "x", "checksum": H64}, "missing 'urls'"),
    ({"id": "x", "urls": [], "checksum": H64}, "at least one element"),
    ({"id": "x", "urls": "http://127.0.0.1/x", "checksum": H64}, "must be a list"),
    ({"id": "x", "urls": ["ftp://127.0.0.1/x"], "checksum": H64}, "not an http"),
    ({"id": "x", "urls": ["http://127.0.0.1/x"]}, "checksum is not available"),
    ({"id": "x", "urls": ["http://127.0.0.1/x"], "checksum": "a" * 40}, "hexadecimal"),
    ({"id": "x", "urls": ["http://127.0.0.1/x"], "checksum": ""}, "non-empty string"),
    ({"id": "x", "urls": ["http://127.0.0.1/x"], "os_hash_algo": "sha256"}, "together"),
    ({"id": "x", "urls": ["http://127.0.0.1/x"], "os_hash_algo": "crc99",
      "os_hash_value": "ab"}, "not supported"),
    ({"id": "x", "urls": ["http://127.0.0.1/x"], "checksum": H64,
      "image_request_authorization": "***"}, "not valid base64"),
    ({"id": "x", "urls": ["http://127.0.0.1/x"], "checksum": H64,
      "image_server_auth_strategy": "http_basic"}, "image_server_user"),
    ({"id": "x", "urls": ["http://127.0.0.1/x"], "checksum": H64, "proxies": "p"},
     "'proxies' must be an object"),
])
def test_invalid_image_info(info, message):
    with pytest.raises(InvalidCommandParamsError) as err:
        image_info.validate(info, md5_allowed=False)
    assert message in err.value.details


def test_image_info_not_an_object():
    with pytest.raises(InvalidCommandParamsError, match="must be an object"):
        image_info.validate(["x"], md5_allowed=False)


def test_authorization_header_is_decoded_verbatim():
    header = "Bearer abc.def"
    s = image_info.validate({"id": "x", "urls": ["http://127.0.0.1/x"], "checksum": H64,
                             "image_request_authorization":
                                 base64.b64encode(header.encode()).decode(),
                             "image_server_auth_strategy": "http_basic"}, md5_allowed=False)
    assert s.headers == {"Authorization": header} and s.auth is None


def test_basic_auth():
    s = image_info.validate({"id": "x", "urls": ["http://127.0.0.1/x"], "checksum": H64,
                             "image_server_auth_strategy": "http_basic",
                             "image_server_user": "u", "image_server_password": "p"},
                            md5_allowed=False)
    assert s.auth == ("u", "p")
