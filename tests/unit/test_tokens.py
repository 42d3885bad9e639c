"""Bearer tokens: hashes only on disk, bulk issue, and a registry that follows its file."""
import os
import threading

from tenacity import Retrying, stop_after_delay, wait_fixed

from standby.api.auth import ReloadingTokenRegistry, TokenRegistry, issue_token, issue_tokens, revoke_tokens
from standby.clearance.commands import Principal, Role


def at_once(load):
    """Run the registry's reload on the caller's thread, so a test sees its effect right away."""
    load()


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
    registry = ReloadingTokenRegistry(path, interval_s=1.0, clock=clock, spawn=at_once)
    assert registry.principal(first) is not None
    second = issue_token(path, Role.OPERATOR, "bob")
    os.utime(path, ns=(1, path.stat().st_mtime_ns + 1_000_000))  # a coarse file clock must still see a change
    assert registry.principal(second) is None  # not checked again within the interval
    clock.now = 1.5
    assert registry.principal(second) == Principal(Role.OPERATOR, "bob")


def test_a_broken_file_keeps_the_previous_tokens(tmp_path):
    path, clock = tmp_path / "tokens.yaml", Clock()
    token = issue_token(path, Role.OPERATOR, "alice")
    registry = ReloadingTokenRegistry(path, interval_s=1.0, clock=clock, spawn=at_once)
    path.write_text("tokens: [{role: nobody}]")
    clock.now = 2.0
    assert registry.principal(token) == Principal(Role.OPERATOR, "alice")


def test_a_changed_file_is_parsed_off_the_callers_thread_and_old_tokens_answer_meanwhile(tmp_path):
    path, clock = tmp_path / "tokens.yaml", Clock()
    first = issue_token(path, Role.OPERATOR, "alice")
    pending = []
    registry = ReloadingTokenRegistry(path, interval_s=1.0, clock=clock, spawn=pending.append)
    second = issue_token(path, Role.OPERATOR, "bob")
    os.utime(path, ns=(1, path.stat().st_mtime_ns + 1_000_000))
    clock.now = 1.5
    assert registry.principal(first) == Principal(Role.OPERATOR, "alice")
    assert registry.principal(second) is None and len(pending) == 1  # handed off, not parsed here
    clock.now = 3.0
    registry.principal(first)
    assert len(pending) == 1  # one parse in flight at a time
    pending[0]()
    assert registry.principal(second) == Principal(Role.OPERATOR, "bob")


def test_the_default_reload_runs_in_a_background_thread(tmp_path):
    class Recording(ReloadingTokenRegistry):
        def _load(self, mtime):
            loaded_on.append(threading.get_ident())
            super()._load(mtime)

    path, clock, loaded_on = tmp_path / "tokens.yaml", Clock(), []
    issue_token(path, Role.OPERATOR, "alice")
    registry = Recording(path, interval_s=1.0, clock=clock)
    second = issue_token(path, Role.OPERATOR, "bob")
    os.utime(path, ns=(1, path.stat().st_mtime_ns + 1_000_000))
    clock.now = 1.5
    registry.principal(second)
    for reloader in [t for t in threading.enumerate() if t.name == "tokens-reload"]:
        reloader.join(timeout=10)
    assert len(loaded_on) == 2 and loaded_on[0] == threading.get_ident() != loaded_on[1]
    assert registry.principal(second) == Principal(Role.OPERATOR, "bob")


def test_revoking_a_label_removes_that_batch_only(tmp_path):
    path = tmp_path / "tokens.yaml"
    keep = issue_token(path, Role.OPERATOR, "alice")
    run = issue_tokens(path, [(Role.DECLARANT, "0100000001"), (Role.OFFICER, "01CA-01-01")], label="loadtest-1")
    other = issue_tokens(path, [(Role.DECLARANT, "0100000002")], label="loadtest-2")
    assert revoke_tokens(path, "loadtest-1") == 2
    registry = TokenRegistry.load(path)
    assert [registry.principal(t) for t in run] == [None, None]
    assert registry.principal(keep) == Principal(Role.OPERATOR, "alice")
    assert registry.principal(other[0]) == Principal(Role.DECLARANT, "0100000002")
    assert revoke_tokens(path, "loadtest-1") == 0 and oct(path.stat().st_mode)[-3:] == "600"


def test_a_watched_registry_picks_up_a_new_token_without_being_asked(tmp_path):
    # One of several HTTP processes may get no request for a while; it must still know a token written meanwhile.
    path = tmp_path / "tokens.yaml"
    issue_token(path, Role.OPERATOR, "alice")
    registry = ReloadingTokenRegistry(path, interval_s=0.05)
    registry.watch()
    registry.watch()  # a second call starts no second thread
    try:
        issue_token(path, Role.OPERATOR, "bob")
        os.utime(path, ns=(1, path.stat().st_mtime_ns + 1_000_000))
        for attempt in Retrying(stop=stop_after_delay(10), wait=wait_fixed(0.02), reraise=True):
            with attempt:
                assert len(registry) == 2  # len() never checks the file itself: the watcher did
        assert sum(t.name == f"tokens-watch-{id(registry):x}" for t in threading.enumerate()) == 1
    finally:
        registry.stop_watching()
