"""docs/security.md, executed: every ``sh`` and ``sql`` block, in order, on a throwaway TLS cluster.

The guide's conventions, which this test relies on and checks:

- one ``sh`` block, preceded by ``<!-- site settings: not run by the tests -->``,
  defines the site variables; it is skipped and the variables come from the
  test cluster instead;
- every other ``sh`` block runs with ``bash -e``, in order, in one shared shell
  environment (variables assigned in one block are visible in the next), with
  an empty HOME and no PG* / SITUATION_* variables from the real environment;
- every ``sql`` block starts with ``-- as a superuser, on database NAME`` and runs
  through psql as the superuser on NAME;
- the ``text`` block starting with ``# pg_hba.conf`` is the server's pg_hba.conf
  (its network lines are written verbatim into the test cluster's), and the
  ``ini`` block starting with ``# postgresql.conf`` must agree with the test
  cluster's settings.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.certs import make_certs
from support.cluster import Cluster, PsqlError, clean_environ
from support.netns import IsolatedHost, home_namespace, netns_available

DOC = Path(__file__).resolve().parent.parent / "docs" / "security.md"
SITE_MARKER = "<!-- site settings: not run by the tests -->"
SQL_MARKER = re.compile(r"--\s*as a superuser, on database (\w+)\s*$")
# A fence may be indented (a block inside a list item); its closing fence has the same indent.
FENCE = re.compile(r"^([ \t]*)```([\w-]*)[ \t]*\n(.*?)^\1```[ \t]*$", re.MULTILINE | re.DOTALL)
FENCE_LINE = re.compile(r"^[ \t]*```", re.MULTILINE)
HBA_TYPES = ("host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc")
KEY_PASSPHRASE = "change-me-key-passphrase"
CERT_AGENT = "agent2"
# Settings the doc shows but that depend on the site or the test harness.
SITE_SPECIFIC_SETTINGS = {"listen_addresses"}
BLOCK_TIMEOUT = 120


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int
    site_settings: bool

    def describe(self) -> str:
        return f"```{self.lang} block at docs/security.md:{self.line}"


def parse_blocks(markdown: str) -> list[Block]:
    """Every fenced block, with its line number and whether the site marker precedes it."""
    blocks = []
    for match in FENCE.finditer(markdown):
        indent, lang, body = match.groups()
        before = markdown[: match.start()].rstrip().splitlines()
        previous_line = before[-1].strip() if before else ""
        lines = body.splitlines(keepends=True)
        text = "".join(line[len(indent):] if line.startswith(indent) else line for line in lines)
        blocks.append(
            Block(
                lang=lang,
                text=text,
                line=markdown.count("\n", 0, match.start()) + 1,
                site_settings=previous_line == SITE_MARKER,
            )
        )
    # Every fence line must belong to a parsed block: nothing may hide from the run.
    fences = len(FENCE_LINE.findall(markdown))
    assert fences == 2 * len(blocks), f"docs/security.md has {fences} fence lines but {len(blocks)} parsed blocks"
    return blocks


def first_line(block: Block) -> str:
    return block.text.strip().splitlines()[0].strip() if block.text.strip() else ""


def config_block(blocks: list[Block], lang: str, title: str) -> Block:
    found = [b for b in blocks if b.lang == lang and first_line(b) == title]
    assert len(found) == 1, f"docs/security.md must show exactly one ```{lang} block starting with {title!r}"
    return found[0]


def hba_network_lines(block: Block) -> list[str]:
    lines = []
    for raw in block.text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and line.split()[0] in HBA_TYPES:
            lines.append(line)
    return lines


def conf_settings(block: Block) -> dict[str, str]:
    settings = {}
    for raw in block.text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip().strip("'")
    return settings


def site_variables(block: Block) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^\s*([A-Z_][A-Z0-9_]*)=", block.text, re.MULTILINE)}


@pytest.fixture(scope="module")
def blocks() -> list[Block]:
    return parse_blocks(DOC.read_text(encoding="utf-8"))


def test_doc_blocks_follow_the_conventions(blocks):
    site = [b for b in blocks if b.site_settings]
    assert len(site) == 1 and site[0].lang == "sh", "exactly one ```sh site-settings block is expected"
    for block in blocks:
        assert block.lang in ("sh", "sql", "ini", "text"), f"{block.describe()}: unknown language"
        if block.lang == "sql":
            assert SQL_MARKER.match(first_line(block)), (
                f"{block.describe()} must start with '-- as a superuser, on database NAME'"
            )
    hba = [line.split() for line in hba_network_lines(config_block(blocks, "text", "# pg_hba.conf"))]
    for fields in hba:
        assert fields[-1] in ("cert", "scram-sha-256", "reject"), f"pg_hba.conf line {' '.join(fields)}"
        assert fields[0] in ("hostssl", "hostnossl"), f"pg_hba.conf line {' '.join(fields)}"
    rejected = {fields[3] for fields in hba if fields[0] == "hostnossl" and fields[-1] == "reject"}
    assert {"0.0.0.0/0", "::/0"} <= rejected, "pg_hba.conf must reject plaintext from everywhere"
    config_block(blocks, "ini", "# postgresql.conf")
    if KEY_PASSPHRASE not in DOC.read_text(encoding="utf-8"):
        pytest.fail(f"the guide's client key passphrase must be {KEY_PASSPHRASE!r}, which the test uses")


# --------------------------------------------------------------------------- the run


class DocCluster(Cluster):
    """A TLS cluster whose pg_hba.conf holds the guide's network lines.

    The guide's ``local`` line (peer) is replaced by ``local all all trust``:
    the tests reach the superuser as root through the socket.
    """

    def __init__(self, *args, hba_lines: list[str], **kwargs):
        self.doc_hba_lines = hba_lines
        super().__init__(*args, **kwargs)

    def _hba(self) -> str:
        rows = ["local all all trust", *self.doc_hba_lines]
        return "# written by tests/test_security_doc.py from docs/security.md\n" + "\n".join(rows) + "\n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("security-doc")


@pytest.fixture(scope="module")
def doc_host():
    """The guide runs `situation run` (a whole cycle): it runs in an isolated host (rule 1)."""
    if not netns_available():
        pytest.skip("network namespaces need root and iproute2")
    host = IsolatedHost().create()
    yield host
    host.destroy()


@pytest.fixture(scope="module")
def doc_cluster(blocks, workspace, doc_host):
    certs = make_certs(workspace / "certs")
    hba = hba_network_lines(config_block(blocks, "text", "# pg_hba.conf"))
    assert hba, "the pg_hba.conf block shows no host lines"
    base_dir = Path(tempfile.mkdtemp(prefix="sit-pg-doc-", dir="/tmp"))
    # The server runs inside the same namespace, where the guide's commands reach it over TCP.
    cluster = DocCluster(base_dir, tls=True, certs=certs, name="doc", hba_lines=hba, namespace=doc_host.name)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


class Shell:
    """Runs sh blocks with ``bash -e``, carrying variables from one block to the next."""

    def __init__(self, directory: Path, env: dict[str, str], host: IsolatedHost):
        self.directory = directory
        self.env = {**env, "SITUATION_TEST_HOME_NETNS": str(home_namespace())}
        self.host = host
        self.cwd = directory / "cwd"
        self.cwd.mkdir()
        self.state = directory / "shell-state.sh"
        self.state.write_text("")
        self.baseline = directory / "shell-baseline"
        self.baseline.write_text("")
        # The variables a block sees without defining any: never carried over.
        names = self._run("compgen -v > " + _sh_quote(self.baseline))
        assert names.returncode == 0, names.stdout

    def _script(self, body: str) -> str:
        return "\n".join(
            [
                f"source {_sh_quote(self.state)}",
                body,
                # Only reached when every command succeeded (bash -e).
                "__situation_doc_dump() {",
                "  local name",
                "  for name in $(compgen -v); do",
                f"    grep -qxF \"$name\" {_sh_quote(self.baseline)} && continue",
                "    case $name in BASH*|FUNCNAME|PIPESTATUS|_|name) continue;; esac",
                "    declare -p \"$name\"",
                "  done",
                "}",
                f"__situation_doc_dump > {_sh_quote(self.state)}.new",
                f"mv {_sh_quote(self.state)}.new {_sh_quote(self.state)}",
                "",
            ]
        )

    def _run(self, body: str) -> subprocess.CompletedProcess:
        script = self.directory / "block.sh"
        script.write_text(self._script(body))
        # A session of its own, so that a block that hangs is killed with everything it started.
        process = subprocess.Popen(
            self.host.command("bash", "-e", str(script)),
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = process.communicate(timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            output += f"\n[killed after {BLOCK_TIMEOUT}s]"
        return subprocess.CompletedProcess(process.args, process.returncode, output)

    def run(self, block: Block) -> str:
        result = self._run(block.text)
        if result.returncode != 0:
            pytest.fail(
                f"{block.describe()} failed (exit {result.returncode}):\n{block.text}\n"
                f"--- output ---\n{result.stdout}",
                pytrace=False,
            )
        return result.stdout


def _sh_quote(value: object) -> str:
    return "'" + str(value).replace("'", "'\\''") + "'"


def shell_environment(cluster: Cluster, home: Path, state_dir: Path, site: dict[str, str]) -> dict[str, str]:
    path = os.pathsep.join(
        [str(Path(sys.executable).parent), str(cluster.psql_path.parent), os.environ.get("PATH", "/usr/bin:/bin")]
    )
    # The agent's state directory would be /var/lib/situation for root: keep the run in the sandbox.
    env = clean_environ(
        HOME=str(home), PATH=path, LC_ALL="C", LANG="C", SITUATION_STATE_DIR=str(state_dir), **site
    )
    # No pager, and no Python settings inherited from the test run.
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PAGER", "PSQL_PAGER"):
        env.pop(key, None)
    return env


def test_security_doc_runs(blocks, doc_cluster, workspace, doc_host):
    cluster = doc_cluster
    certs = cluster.certs
    assert certs is not None

    # postgresql.conf: what the guide shows is what this server runs with.
    shown = conf_settings(config_block(blocks, "ini", "# postgresql.conf"))
    for key, value in shown.items():
        if key in SITE_SPECIFIC_SETTINGS:
            continue
        assert cluster.psql(f"SHOW {key}") == value, f"postgresql.conf in the guide: {key} = {value}"

    home = workspace / "home"
    home.mkdir()
    secrets = workspace / "secrets"
    client_crt, client_key = certs.client_cert(CERT_AGENT, passphrase=KEY_PASSPHRASE)
    os.chmod(client_key, 0o644)  # the guide's chmod must fix this, or situation refuses the key
    site = {
        "DB_HOST": cluster.host,
        "DB_PORT": str(cluster.port),
        "DB_ADDRESS": "127.0.0.1",
        "CA_FILE": str(certs.ca_crt),
        "CLIENT_CERT": str(client_crt),
        "CLIENT_KEY": str(client_key),
        "SECRETS_DIR": str(secrets),
    }
    site_block = next(b for b in blocks if b.site_settings)
    assert site_variables(site_block) == set(site), (
        f"the site-settings block defines {sorted(site_variables(site_block))}; the test sets {sorted(site)}"
    )

    shell_dir = workspace / "shell"
    shell_dir.mkdir()
    shell = Shell(shell_dir, shell_environment(cluster, home, workspace / "state", site), doc_host)

    ran: list[Block] = []
    for block in blocks:
        if block.site_settings or block.lang not in ("sh", "sql"):
            continue
        if block.lang == "sh":
            print(f"--- {block.describe()}\n{shell.run(block)}")  # shown by pytest when a later block fails
        else:
            database = SQL_MARKER.match(first_line(block)).group(1)
            try:
                output = cluster.psql(block.text, dbname=database)
            except PsqlError as exc:
                pytest.fail(
                    f"{block.describe()} failed on database {database}:\n{block.text}\n"
                    f"--- psql ---\n{exc.stdout}{exc.stderr}",
                    pytrace=False,
                )
            print(f"--- {block.describe()} on database {database}\n{output}")
        ran.append(block)

    runnable = [b for b in blocks if b.lang in ("sh", "sql") and not b.site_settings]
    assert ran == runnable, "some sh/sql blocks of docs/security.md were not run"
    assert any(b.lang == "sql" for b in ran) and any(b.lang == "sh" for b in ran)

    # The outcome the guide promises, checked from outside the guide's own commands.
    assert cluster.psql("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "0"
    members = cluster.psql(
        "SELECT string_agg(r.rolname, ',' ORDER BY r.rolname) FROM pg_roles r "
        "WHERE pg_has_role(r.oid, 'situation_agent', 'MEMBER') AND r.rolcanlogin AND NOT r.rolsuper",
        dbname="situation",
    )
    assert members == "agent1,agent2"
    for agent in ("agent1", "agent2"):
        assert cluster.psql(
            f"SELECT has_schema_privilege('{agent}', 'situation', 'CREATE') "
            f"OR has_database_privilege('{agent}', 'situation', 'CREATE')",
            dbname="situation",
        ) == "f"
    assert cluster.psql(
        "SELECT has_database_privilege('public', 'situation', 'CONNECT')", dbname="situation"
    ) == "f"
    # `situation run --once` as an agent wrote its host into the inventory.
    assert int(cluster.psql("SELECT count(*) FROM situation.machines", dbname="situation")) >= 1
    assert (secrets / "agent2.dsn").stat().st_mode & 0o077 == 0
    assert (home / ".pgpass").stat().st_mode & 0o077 == 0
    assert os.stat(client_key).st_mode & 0o077 == 0
