"""The agent id: where it lives, how it is created, validated and overridden."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from situation import identity
from situation.errors import ConfigError
from situation.identity import (
    default_state_dir,
    load_or_create_agent_id,
    parse_agent_id,
    resolve_agent_id,
    write_agent_id,
)

REPO = Path(__file__).resolve().parent.parent
HEX32 = "0123456789abcdef0123456789abcdef"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the state directory ------------------------------------------------------------


def test_state_dir_override_wins(tmp_path):
    assert default_state_dir({"SITUATION_STATE_DIR": str(tmp_path / "s"), "XDG_STATE_HOME": "/x"}) == tmp_path / "s"


def test_state_dir_for_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_state_dir({"XDG_STATE_HOME": "/x", "HOME": "/root"}) == Path("/var/lib/situation")


def test_state_dir_for_a_user(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_state_dir({"XDG_STATE_HOME": "/x/state", "HOME": "/home/u"}) == Path("/x/state/situation")
    assert default_state_dir({"HOME": "/home/u"}) == Path("/home/u/.local/state/situation")
    # A relative XDG_STATE_HOME is invalid per the XDG spec and ignored.
    assert default_state_dir({"XDG_STATE_HOME": "rel", "HOME": "/home/u"}) == Path("/home/u/.local/state/situation")


def test_state_dir_reads_os_environ_by_default(monkeypatch, tmp_path):
    monkeypatch.setenv("SITUATION_STATE_DIR", str(tmp_path))
    assert default_state_dir() == tmp_path


# -- parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        HEX32,
        HEX32.upper(),
        f"  {HEX32}\n",
        "01234567 89abcdef\t01234567 89ABCDEF",
        HEX32 + "ffff",  # extra bytes are ignored, as in the original
    ],
)
def test_parse_accepts(text):
    assert parse_agent_id(text) == HEX32


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "is empty"),
        ("   \n", "is empty"),
        ("xyz" + HEX32, "not hexadecimal"),
        ("0x" + HEX32, "not hexadecimal"),
        (HEX32 + "f", "odd number of hex digits"),
        ("abcd", "2 bytes long, fewer than 16"),
        (HEX32[:30], "15 bytes long"),
    ],
)
def test_parse_refuses(text, problem):
    with pytest.raises(ConfigError) as caught:
        parse_agent_id(text)
    message = str(caught.value)
    assert problem in message
    assert "\n" not in message


def test_parse_cuts_long_garbage_short():
    with pytest.raises(ConfigError) as caught:
        parse_agent_id("z" * 10_000)
    assert len(str(caught.value)) < 200


# -- creation and persistence -------------------------------------------------------


def test_creates_a_random_id_with_private_permissions(tmp_path):
    state = tmp_path / "state" / "situation"
    agent_id = load_or_create_agent_id(state)
    assert len(agent_id) == 32 and agent_id == agent_id.lower()
    bytes.fromhex(agent_id)
    path = state / "agent-id"
    assert path.read_text() == agent_id + "\n"
    assert mode(path) == 0o600
    assert mode(state) == 0o700
    assert agent_id != identity.ORIGINAL_DEFAULT_AGENT_ID
    assert [p.name for p in state.iterdir()] == ["agent-id"]  # no temporary file left


def test_permissions_ignore_the_umask(tmp_path):
    old = os.umask(0)
    try:
        load_or_create_agent_id(tmp_path / "s")
    finally:
        os.umask(old)
    assert mode(tmp_path / "s") == 0o700
    assert mode(tmp_path / "s" / "agent-id") == 0o600


def test_existing_directory_is_left_alone(tmp_path):
    state = tmp_path / "s"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    load_or_create_agent_id(state)
    assert mode(state) == 0o755


def test_id_persists(tmp_path):
    first = load_or_create_agent_id(tmp_path)
    assert load_or_create_agent_id(tmp_path) == first
    assert resolve_agent_id(None, tmp_path) == first


def test_two_installs_get_different_ids(tmp_path):
    assert load_or_create_agent_id(tmp_path / "a") != load_or_create_agent_id(tmp_path / "b")


def test_existing_file_is_normalised_on_read(tmp_path):
    (tmp_path / "agent-id").write_text(HEX32.upper() + "  \n")
    assert load_or_create_agent_id(tmp_path) == HEX32


@pytest.mark.parametrize("content", [b"", b"not an id\n", b"abcd\n", b"\xff\xfe" * 20])
def test_corrupt_file_says_how_to_fix(tmp_path, content):
    (tmp_path / "agent-id").write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_or_create_agent_id(tmp_path)
    message = str(caught.value)
    assert "corrupt" in message and "situation refresh-id" in message
    assert str(tmp_path / "agent-id") in message
    assert "\n" not in message
    assert (tmp_path / "agent-id").read_bytes() == content  # never overwritten behind the user's back


def test_unwritable_state_dir_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as caught:
        load_or_create_agent_id(blocker / "state")
    assert "SITUATION_STATE_DIR" in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_read_only_state_dir_is_a_config_error(tmp_path):
    state = tmp_path / "ro"
    state.mkdir()
    os.chmod(state, 0o500)
    try:
        with pytest.raises(ConfigError) as caught:
            load_or_create_agent_id(state)
    finally:
        os.chmod(state, 0o700)
    assert "cannot write" in str(caught.value)


def test_file_systems_without_hard_links_still_work(tmp_path, monkeypatch):
    def no_link(*_args, **_kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    agent_id = load_or_create_agent_id(tmp_path)
    assert (tmp_path / "agent-id").read_text() == agent_id + "\n"
    assert mode(tmp_path / "agent-id") == 0o600
    assert load_or_create_agent_id(tmp_path) == agent_id
    assert [p.name for p in tmp_path.iterdir()] == ["agent-id"]


def test_losing_the_race_returns_the_winners_id(tmp_path, monkeypatch):
    """Another process links its file between our read and our link: we use its id."""
    real_link = os.link

    def link_after_someone_else(source, target, *args, **kwargs):
        Path(target).write_text(HEX32 + "\n")
        return real_link(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "link", link_after_someone_else)
    assert load_or_create_agent_id(tmp_path) == HEX32
    assert [p.name for p in tmp_path.iterdir()] == ["agent-id"]


_RACER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from situation.identity import load_or_create_agent_id
    state, go, ready = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    ready.touch()
    while not go.exists():
        time.sleep(0.001)
    print(load_or_create_agent_id(state))
    """
)


@pytest.mark.parametrize("round_", range(5))
def test_concurrent_creation_by_two_processes_ends_with_one_id(tmp_path, round_):
    state = tmp_path / "state"
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{n}" for n in range(2)]
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(state), str(go), str(flag)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for flag in ready
    ]
    deadline = time.monotonic() + 60
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        time.sleep(0.005)
    go.touch()  # both are imported and spinning: they create the id at the same moment
    results = [racer.communicate(timeout=60) for racer in racers]
    for racer, (_out, err) in zip(racers, results):
        assert racer.returncode == 0, err
    ids = {out.strip() for out, _err in results}
    assert len(ids) == 1, ids
    assert (state / "agent-id").read_text().strip() == ids.pop()
    assert [p.name for p in state.iterdir()] == ["agent-id"]


# -- refresh and override -----------------------------------------------------------


def test_write_replaces_the_id(tmp_path):
    load_or_create_agent_id(tmp_path)
    assert write_agent_id(tmp_path, HEX32.upper() + "00") == HEX32
    assert load_or_create_agent_id(tmp_path) == HEX32
    assert mode(tmp_path / "agent-id") == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["agent-id"]


def test_write_repairs_a_corrupt_file(tmp_path):
    (tmp_path / "agent-id").write_text("garbage")
    write_agent_id(tmp_path, HEX32)
    assert load_or_create_agent_id(tmp_path) == HEX32


def test_write_creates_the_directory(tmp_path):
    write_agent_id(tmp_path / "new", HEX32)
    assert mode(tmp_path / "new") == 0o700
    assert (tmp_path / "new" / "agent-id").read_text() == HEX32 + "\n"


def test_write_refuses_bad_hex_and_keeps_the_old_id(tmp_path):
    old = load_or_create_agent_id(tmp_path)
    with pytest.raises(ConfigError):
        write_agent_id(tmp_path, "nope")
    assert load_or_create_agent_id(tmp_path) == old


def test_override_wins_and_touches_nothing(tmp_path):
    state = tmp_path / "state"
    assert resolve_agent_id(HEX32.upper(), state) == HEX32
    assert not state.exists()


def test_override_is_validated(tmp_path):
    with pytest.raises(ConfigError) as caught:
        resolve_agent_id("abcd", tmp_path)
    assert "--agent-id" in str(caught.value) and "SITUATION_AGENT_ID" in str(caught.value)
    with pytest.raises(ConfigError):
        resolve_agent_id("", tmp_path)
    assert not (tmp_path / "agent-id").exists()


def test_resolve_uses_the_default_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SITUATION_STATE_DIR", str(tmp_path / "env"))
    agent_id = resolve_agent_id(None)
    assert (tmp_path / "env" / "agent-id").read_text() == agent_id + "\n"
