"""Load targets: loopback only unless the caller explicitly allows another host."""

from __future__ import annotations

import pytest

from loadtest.servers import TargetRefused, check_target, is_loopback


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://localhost:1", "http://127.3.2.1", "http://[::1]:80"]
)
def test_loopback_targets_are_accepted(url: str) -> None:
    assert is_loopback(url)
    assert check_target(url + "/", allow_remote=False) == url


@pytest.mark.parametrize("url", ["http://10.0.0.5:8000", "http://example.com", "http://0.0.0.0"])
def test_other_targets_need_the_flag(url: str) -> None:
    with pytest.raises(TargetRefused):
        check_target(url, allow_remote=False)
    assert check_target(url, allow_remote=True) == url


def test_not_http_is_refused() -> None:
    with pytest.raises(TargetRefused):
        check_target("ftp://127.0.0.1/x", allow_remote=True)
