"""The pool's TLS context follows its files: rebuilt when they change, kept while they disagree.

The daemon-level rotation (a running agent, a server re-keyed under it) is in
test_faults_postgres.py; these are the decisions, without a server.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from structlog.testing import capture_logs

from situation.connection.dsn import parse_dsn
from situation.connection.tls import ReloadingContext


def install(source: Path, target: Path, mode: int) -> None:
    staged = target.with_name(target.name + ".new")
    shutil.copyfile(source, staged)
    os.chmod(staged, mode)
    os.replace(staged, target)


def test_a_context_is_rebuilt_only_when_its_files_change_and_only_when_they_agree(certs, home):
    files = home / "tls"
    files.mkdir()
    first_cert, first_key = certs.client_cert("reload")
    second_cert, second_key = certs.client_cert("reload", signer="other")
    install(certs.ca_crt, files / "root.crt", 0o644)
    install(first_cert, files / "agent.crt", 0o644)
    install(first_key, files / "agent.key", 0o600)
    params = parse_dsn(f"host=db.example.net sslmode=verify-full sslrootcert={files / 'root.crt'} "
                       f"sslcert={files / 'agent.crt'} sslkey={files / 'agent.key'}", environ={"HOME": str(home)})
    source = ReloadingContext(params)
    first = source.current()
    assert source.current() is first  # nothing changed: no rebuild

    with capture_logs() as logs:
        install(second_cert, files / "agent.crt", 0o644)  # caught half-way: the new certificate, the old key
        assert source.current() is first
        assert source.current() is first
        install(second_key, files / "agent.key", 0o600)
        second = source.current()
    assert second is not first and second.policy.client.cert == files / "agent.crt"
    assert [entry["log_level"] for entry in logs] == ["warning", "info"]  # one warning, however many connections
    assert "do not belong together" in logs[0]["error"]

    install(certs.other_ca_crt, files / "root.crt", 0o644)
    assert source.current() is not second


def test_no_tls_means_no_files_to_watch(home):
    source = ReloadingContext(parse_dsn("host=/run/postgresql sslmode=verify-full", environ={"HOME": str(home)}))
    assert source.current() is None
