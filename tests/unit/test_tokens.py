"""Bearer tokens: hashes only on disk, bulk issue, and a registry that follows its file."""
import os

from standby.api.auth import ReloadingTokenRegistry, TokenRegistry, issue_token, issue_tokens
from standby.clearance.commands import Principal, Role


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_tokens_are_stored_as_hashes_only(tmp_path):
    path = tmp_path / "tokens.yaml"
    token = issue_token(path, Role.OPERATOR, "alice")
    assert token not in path.read_text() and oct(path.stat().st_mode)[-3:] == "600"
    assert TokenRegistry.load(path).principal(token) == Principal(Role.OPERATOR, "alice")
    assert TokenRegistry.load(path).principal(token + "x") is None


def test_bulk_issue_returns_tokens_in_order_in_one_write(tmp_path):
    path = tmp_path / "tokens.yaml"
    wanted = [(Role.DECLARANT, f"01000000{i:02d}") for i in range(20)] + [(Role.OFFICER, "01CA-01-01")]
    texts = issue_tokens(path, wanted)
    registry = TokenRegistry.load(path)
    assert len(registry) == 21 and len(set(texts)) == 21
    assert [registry.principal(t) for t in texts] == [Principal(r, s) for r, s in wanted]


def test_a_running_site_accepts_a_new_token_within_the_interval(tmp_path):
    path, clock = tmp_path / "tokens.yaml", Clock()
    first = issue_token(path, Role.OPERATOR, "alice")
    registry = ReloadingTokenRegistry(path, interval_s=1.0, clock=clock)
    assert registry.principal(first) is not None
    second = issue_token(path, Role.OPERATOR, "bob")
    os.utime(path, ns=(1, path.stat().st_mtime_ns + 1_000_000))  # a coarse file clock must still see a change
    assert registry.principal(second) is None  # not checked again within the interval
    clock.now = 1.5
    assert registry.principal(second) == Principal(Role.OPERATOR, "bob")


def test_a_broken_file_keeps_the_previous_tokens(tmp_path):
    path, clock = tmp_path / "tokens.yaml", Clock()
    token = issue_token(path, Role.OPERATOR, "alice")
    registry = ReloadingTokenRegistry(path, interval_s=1.0, clock=clock)
    path.write_text("tokens: [{role: nobody}]")
    clock.now = 2.0
    assert registry.principal(token) == Principal(Role.OPERATOR, "alice")
