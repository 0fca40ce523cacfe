"""docker (agent-behaviour.md §4.10, with §10.2's fixes).

- Pure pieces: image references, the engine address from DOCKER_* and
  --docker-host, which host addresses a binding covers.
- A fake engine (an aiohttp web server on a Unix socket, answering in the
  Engine API's wire format) stands in for an engine **only for hostile
  answers** no real engine gives on request: huge strings, malformed ids,
  addresses and ports, odd images, duplicate bindings, oversized bodies.
- A real engine: podman's Docker-compatible service in a test-made network
  namespace (tests/support/podman.py), with a container publishing ports, one
  on a user-defined network and a stopped one, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os

import pytest
import structlog
from support.cluster import clean_environ
from support.neighbour_table import database  # noqa: F401 (fixture)
from support.podman import IMAGE, PodmanEngine, podman_missing
from support.stores import backend_store, raw_rows  # noqa: F401 (fixture)

from situation.errors import ConfigError
from situation.hostroot import HostRoot
from situation.module import REGISTRY, Context, HostMachine, Skip, load_builtin_modules
from situation.modules.docker import HostNic, binding_addresses
from situation.net.docker_api import DEFAULT_HOST, MAX_NAME, EngineError, PortBinding, engine_address, split_image

AGENT_ID = "dc" * 16
HOST_MODULES = ("fingerprint", "host-basic", "host-network")


# -- pure pieces ---------------------------------------------------------------------------


@pytest.mark.parametrize("reference, expected", [
    ("nginx", ("nginx", "latest")),
    ("nginx:1.27", ("nginx", "1.27")),
    ("registry.local:5000/team/app", ("registry.local:5000/team/app", "latest")),
    ("registry.local:5000/team/app:2.1", ("registry.local:5000/team/app", "2.1")),
    ("app:3@sha256:" + "a" * 64, ("app", "3")),
    ("registry.local:5000/app@sha256:" + "b" * 64, ("registry.local:5000/app", "latest")),
    ("sha256:" + "c" * 64, ("sha256:" + "c" * 64, "")),
    ("", ("", "")),
])
def test_image_tag_follows_the_last_colon_after_the_last_slash(reference, expected):
    assert split_image(reference) == expected


def test_engine_address_from_the_environment_and_the_option(tmp_path):
    assert engine_address(DEFAULT_HOST, {}).unix_path == "/var/run/docker.sock"
    from_env = engine_address(DEFAULT_HOST, {"DOCKER_HOST": "unix:///run/podman/podman.sock",
                                             "DOCKER_API_VERSION": "1.40"})
    assert (from_env.unix_path, from_env.source, from_env.api_version) == ("/run/podman/podman.sock", "DOCKER_HOST",
                                                                           "1.40")
    chosen = engine_address("unix:///srv/engine.sock", {"DOCKER_HOST": "unix:///run/other.sock"})
    assert (chosen.unix_path, chosen.source) == ("/srv/engine.sock", "--docker-host")
    tls = engine_address(DEFAULT_HOST, {"DOCKER_HOST": "tcp://engine.example:2376", "DOCKER_TLS_VERIFY": "1",
                                        "DOCKER_CERT_PATH": str(tmp_path)})
    assert (tls.host, tls.port, tls.tls, tls.verify, tls.cert_dir) == ("engine.example", 2376, True, True, str(tmp_path))
    plain = engine_address("tcp://10.0.0.5:2375", {})
    assert (plain.tls, plain.verify) == (False, False)
    for bad, env in (("ssh://me@engine", {}), ("tcp://engine", {}), ("unix://", {}),
                     (DEFAULT_HOST, {"DOCKER_API_VERSION": "latest"})):
        with pytest.raises(ConfigError):
            engine_address(bad, env)


def test_bindings_cover_the_first_address_of_their_family_on_each_nic():
    nics = [HostNic(1, "lo", None, ("127.0.0.1", "::1")), HostNic(2, "eth0", "02:00:00:00:00:01",
                                                                  ("10.0.0.2", "10.0.0.3", "2001:db8::2"))]
    def covered(ip):
        return binding_addresses(PortBinding(ip, 80, 8080, "tcp"), nics)

    assert covered("0.0.0.0") == [("127.0.0.1", 1), ("10.0.0.2", 2)]
    assert covered("::") == [("::1", 1), ("2001:db8::2", 2)]
    assert covered("") == [("127.0.0.1", 1), ("::1", 1), ("10.0.0.2", 2), ("2001:db8::2", 2)]
    assert covered("10.0.0.3") == [("10.0.0.3", 2)]
    assert covered("192.0.2.1") == []


# -- a fake engine, for hostile answers only -------------------------------------------------

HUGE = "x" * 100_000
WEB_ID, ODD_ID = "a" * 64, "b" * 64
NET_ID = "c" * 64


def hostile_state() -> tuple[list, list]:
    containers = [
        {"Id": WEB_ID, "Names": ["/" + HUGE], "Image": "registry.local:5000/team/web:2.1@sha256:" + "d" * 64,
         "Created": 1_700_000_000, "State": "running", "Labels": {"note": HUGE},
         "Ports": [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
                   {"IP": "::", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},  # the same container port
                   {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},  # twice, verbatim
                   {"IP": "not-an-ip", "PrivatePort": 81, "PublicPort": 8081, "Type": "tcp"},
                   {"PrivatePort": 70000, "PublicPort": 8082, "Type": "tcp"},
                   {"PrivatePort": True, "Type": "tcp"},
                   {"PrivatePort": 82, "Type": "quic" * 1000},
                   {"PrivatePort": 9000, "Type": "udp"},  # exposed, not published
                   "garbage"]},
        {"Id": ODD_ID, "Names": "not a list", "Image": 42, "Created": -5, "State": "running", "Ports": None},
        {"Id": "../../etc/passwd", "Names": ["/evil"], "State": "running"},
        {"Id": "e" * 64, "Names": ["/task"], "State": "running", "Labels": {"com.docker.swarm.service.id": "x"}},
        "garbage",
    ]
    network = {
        "Id": NET_ID, "Name": HUGE, "Driver": "bridge", "Options": {"com.docker.network.bridge.name": "br-test"},
        "IPAM": {"Config": [{"Subnet": "172.30.0.0/16", "Gateway": "172.30.0.1"}, {"Subnet": "bogus"},
                            {"Subnet": "172.30.0.0/16", "Gateway": "172.30.0.1"}]},
        "Containers": {
            WEB_ID: {"MacAddress": "02:42:AC:1E:00:02", "IPv4Address": "172.30.0.2/16", "IPv6Address": "fe80::2/64"},
            ODD_ID: {"MacAddress": "zz:zz", "IPv4Address": "172.30.0.3/16"},  # no usable MAC: no NIC
            "e" * 64: {"MacAddress": "02:42:ac:1e:00:09", "IPv4Address": "172.30.0.9/16"},
        },
    }
    return containers, [network, {"Id": "bad id!", "Name": "x"}]


@pytest.fixture
async def fake_engine(tmp_path):
    """An aiohttp server on a Unix socket that answers like an engine (it stands in for one)."""
    from aiohttp import web

    containers, networks = hostile_state()
    state = {"containers": containers, "body": None}

    async def ping(request):
        return web.Response(text="OK", headers={"Api-Version": "1.99"})

    async def list_containers(request):
        assert request.match_info["version"] == "1.44"  # negotiated down to ours
        if state["body"] is not None:
            return web.Response(body=state["body"], content_type="application/json")
        return web.json_response(state["containers"])

    async def list_networks(request):
        return web.json_response([{"Id": n["Id"]} for n in networks])

    async def inspect_network(request):
        found = [n for n in networks if n["Id"] == request.match_info["id"]]
        return web.json_response(found[0]) if found else web.json_response({"message": "no such network"},
                                                                             status=404)

    app = web.Application()
    app.router.add_get("/_ping", ping)
    app.router.add_get("/v{version}/containers/json", list_containers)
    app.router.add_get("/v{version}/networks", list_networks)
    app.router.add_get("/v{version}/networks/{id}", inspect_network)
    runner = web.AppRunner(app)
    await runner.setup()
    path = tmp_path / "fake-engine.sock"
    site = web.UnixSite(runner, str(path))
    await site.start()
    yield path, state
    await runner.cleanup()


async def _host_rows(store) -> int:
    host = await store.upsert("machines", [{"agent": store.agent_id, "hostname": "host", "platform": "linux"}],
                              key="agent")
    [host_id] = host.ids
    await store.upsert("network_interfaces", [
        {"name": "eth0", "mac": "02:00:00:00:00:01", "ip": ["10.0.0.2", "2001:db8::2"], "gateway": None,
         "flags": {"up": True}, "tag": "", "machine_id": host_id},
        {"name": "br-test", "mac": "02:00:00:00:00:02", "ip": ["172.30.0.1"], "gateway": None,
         "flags": {"up": True}, "tag": "", "machine_id": host_id},
    ], key="machine_mac_tag")
    return host_id


async def _run_docker(store, host_id, socket_path) -> Context:
    load_builtin_modules()
    ctx = Context(store=store, log=structlog.get_logger(), agent_id=store.agent_id,
                  options={"host": f"unix://{socket_path}"}, root=HostRoot.under("/"), host=HostMachine(host_id))
    await REGISTRY["docker"].run(ctx)
    return ctx


async def test_hostile_engine_answers_are_bounded_validated_and_deduplicated(backend_store, fake_engine):
    path, _ = fake_engine
    host_id = await _host_rows(backend_store)
    await _run_docker(backend_store, host_id, path)
    machines = await raw_rows(backend_store, "SELECT hostname, host_id, distribution, distribution_version, uptime, "
                                             "parent_machine_id, chassis FROM machines WHERE platform = 'docker' "
                                             "ORDER BY host_id")
    assert [m["host_id"] for m in machines] == [WEB_ID]  # no MAC, bad id, swarm task: not recorded
    [web] = machines
    assert web["hostname"] == "x" * MAX_NAME  # the leading "/" cut, then bounded where it is built
    assert (web["distribution"], web["distribution_version"]) == ("registry.local:5000/team/web", "2.1")
    assert (web["parent_machine_id"], web["chassis"]) == (host_id, "container") and web["uptime"] > 0
    endpoints = await raw_rows(backend_store, "SELECT port, protocol, addr FROM application_endpoints")
    assert sorted((e["port"], e["protocol"], e["addr"]) for e in endpoints) == [
        (80, "tcp", "172.30.0.2"),  # 0.0.0.0 and :: and a repeat: one container endpoint, at its address
        (8080, "tcp", "10.0.0.2"), (8080, "tcp", "172.30.0.1"), (8080, "tcp", "2001:db8::2"),
        (9000, "udp", "172.30.0.2"),
    ]
    policies = await raw_rows(backend_store, "SELECT action, source, src_addr FROM endpoint_policies")
    assert len(policies) == 3 and {(p["action"], p["source"], p["src_addr"]) for p in policies} == {
        ("forward", "docker", None)}
    subnets = await raw_rows(backend_store, "SELECT network_cidr, tag, gateway FROM subnetworks")
    assert [(s["network_cidr"], s["tag"], s["gateway"]) for s in subnets] == [("172.30.0.0/16", NET_ID, "172.30.0.1")]
    nics = await raw_rows(backend_store, "SELECT mac, tag FROM network_interfaces WHERE name IS NULL")
    assert [(n["mac"], n["tag"]) for n in nics] == [("02:42:ac:1e:00:02", NET_ID)]  # fe80:: is no global IPv6
    links = await raw_rows(backend_store, "SELECT mac_subnet FROM network_interface_subnets")
    assert len(links) == 2  # the container NIC and the host bridge br-test

    counts = await backend_store.counts()
    await _run_docker(backend_store, host_id, path)
    assert await backend_store.counts() == counts


async def test_a_container_gone_from_the_engine_is_deleted_with_its_rows(backend_store, fake_engine):
    path, state = fake_engine
    host_id = await _host_rows(backend_store)
    await _run_docker(backend_store, host_id, path)
    before = await backend_store.counts()
    state["containers"] = []
    ctx = await _run_docker(backend_store, host_id, path)
    after = await backend_store.counts()
    assert ctx.rows_written > 0
    assert after["machines"] == before["machines"] - 1
    assert after["endpoint_policies"] == before["endpoint_policies"] - 3
    assert after["network_interfaces"] == before["network_interfaces"] - 1
    links = await raw_rows(backend_store, "SELECT mac_subnet FROM network_interface_subnets")
    assert [link["mac_subnet"] for link in links] == [f"02:00:00:00:00:02/{after['subnetworks']}"]  # the bridge's
    assert not await raw_rows(backend_store, "SELECT id FROM machines WHERE platform = 'docker'")
    assert not await raw_rows(backend_store, "SELECT id FROM application_endpoints WHERE addr = '172.30.0.2'")


async def test_a_neighbour_nic_recorded_first_becomes_the_containers(backend_store, fake_engine):
    path, _ = fake_engine
    host_id = await _host_rows(backend_store)
    # What host-network and then arp leave before docker runs: the bridge on its untagged subnetwork,
    # and a NIC without a machine for the container's MAC, linked to it.
    [subnet] = (await backend_store.upsert("subnetworks", [
        {"network_cidr": "172.30.0.0/16", "network_addr": "172.30.0.0", "mask_size": 16, "ip_version": 4,
         "gateway": "", "vlan_id": 0, "tag": ""}], key="cidr_tag")).ids
    [neighbour] = (await backend_store.upsert("network_interfaces", [
        {"name": None, "mac": "02:42:ac:1e:00:02", "ip": ["172.30.0.2"], "gateway": None, "flags": {"up": True},
         "tag": "", "machine_id": None}], key="machine_mac_tag")).ids
    [bridge] = [r["id"] for r in await raw_rows(backend_store, "SELECT id FROM network_interfaces "
                                                               "WHERE name = 'br-test'")]
    for nic_id, ip, mac in ((bridge, "172.30.0.1", "02:00:00:00:00:02"), (neighbour, "", "02:42:ac:1e:00:02")):
        await backend_store.execute("link_interface_subnet", nic_id, subnet, ip, f"{mac}/{subnet}")
    await _run_docker(backend_store, host_id, path)
    nics = await raw_rows(backend_store, "SELECT n.id, n.tag, m.host_id FROM network_interfaces n "
                                         "JOIN machines m ON m.id = n.machine_id WHERE n.mac = '02:42:ac:1e:00:02'")
    assert [(n["id"], n["tag"], n["host_id"]) for n in nics] == [(neighbour, NET_ID, WEB_ID)]
    assert len(await raw_rows(backend_store, "SELECT id FROM network_interfaces WHERE mac = '02:42:ac:1e:00:02'")) == 1
    counts = await backend_store.counts()
    await _run_docker(backend_store, host_id, path)
    assert await backend_store.counts() == counts


async def test_an_oversized_or_broken_answer_is_an_error_not_a_crash(backend_store, fake_engine):
    path, state = fake_engine
    host_id = await _host_rows(backend_store)
    state["body"] = b"[" + b'"x",' * (9 * 1024 * 1024) + b'"x"]'
    with pytest.raises(EngineError, match="exceeds"):
        await _run_docker(backend_store, host_id, path)
    state["body"] = b"{not json"
    with pytest.raises(EngineError, match="not JSON"):
        await _run_docker(backend_store, host_id, path)


async def test_no_engine_skips(backend_store, tmp_path):
    with pytest.raises(Skip, match="no Docker engine"):
        await _run_docker(backend_store, 1, tmp_path / "absent.sock")


# -- a real engine: podman in a test-made namespace --------------------------------------------


@pytest.fixture(scope="module")
def podman_engine(tmp_path_factory):
    reason = podman_missing()
    if reason:
        pytest.skip(reason)
    engine = PodmanEngine(tmp_path_factory.mktemp("podman"))
    try:
        engine.start()
        engine.podman("network", "create", "--subnet", "10.89.31.0/24", engine.network)
        engine.podman("run", "-d", "--name", "web", "-p", "8080:80", "-p", "8053:53/udp", IMAGE,
                      "httpd", "-f", "-p", "80", "-h", "/www")
        engine.podman("run", "-d", "--name", "app", "--network", engine.network, IMAGE, "sleep", "3600")
        engine.podman("create", "--name", "stopped", IMAGE, "sleep", "1")
        yield engine
    finally:
        engine.stop()


def run_modules(engine, db, tmp_path, *modules) -> dict:
    from support.netns import RUN_MODULE

    result = engine.run(os.sys.executable, str(RUN_MODULE), "--db", db.dsn, "--agent", AGENT_ID, "--host-lookup",
                        "--option", f"docker.host={engine.host_url}", *modules,
                        env=clean_environ(HOME=str(tmp_path)))
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout.strip().splitlines()[-1])


def containers(db) -> dict[str, tuple]:
    p = db.table_prefix
    rows = db.query(f"SELECT c.hostname, c.host_id, c.distribution, c.distribution_version, c.chassis, h.agent "
                    f"FROM {p}machines c JOIN {p}machines h ON h.id = c.parent_machine_id WHERE c.platform = 'docker'")
    found = {}
    for name, host_id, distribution, version, chassis, agent in rows:
        assert name not in found, f"two rows for container {name}"
        found[name] = (host_id, distribution, version, chassis, agent)
    return found


def counts(db) -> dict[str, int]:
    tables = ("machines", "network_interfaces", "subnetworks", "network_interface_subnets",
              "application_endpoints", "endpoint_policies")
    return {t: int(db.query(f"SELECT count(*) FROM {db.table_prefix}{t}")[0][0]) for t in tables}


def test_containers_of_a_podman_engine(podman_engine, database, tmp_path):
    engine = podman_engine
    report = run_modules(engine, database, tmp_path, *HOST_MODULES, "docker")
    assert report["skipped"] == {} and report["rows"]["docker"] > 0
    ids = {name: engine.podman("inspect", "--format", "{{.Id}}", name) for name in ("web", "app")}
    found = containers(database)
    assert found == {name: (ids[name], "localhost:5000/tools/busybox", "1.36", "container", AGENT_ID)
                     for name in ("web", "app")}  # the stopped container is not recorded

    p = database.table_prefix
    nics = database.query(f"SELECT m.hostname, n.mac, n.ips, n.tag, s.network_cidr, s.tag "
                          f"FROM (SELECT id, mac, tag, machine_id, {database.ip_json} AS ips "
                          f"FROM {p}network_interfaces) n JOIN {p}machines m ON m.id = n.machine_id "
                          f"JOIN {p}network_interface_subnets l ON l.network_interface_id = n.id "
                          f"JOIN {p}subnetworks s ON s.id = l.subnetwork_id WHERE m.platform = 'docker'")
    by_name = {name: (mac, json.loads(ips), nic_tag, cidr, subnet_tag) for name, mac, ips, nic_tag, cidr, subnet_tag
               in nics}
    app_mac, app_ips, app_tag, app_cidr, app_subnet_tag = by_name["app"]
    assert app_cidr == "10.89.31.0/24" and app_ips[0].startswith("10.89.31.")
    assert app_tag == app_subnet_tag == engine.podman("network", "inspect", "--format", "{{.ID}}", engine.network)
    assert app_mac == engine.podman("inspect", "--format",
                                    f"{{{{(index .NetworkSettings.Networks \"{engine.network}\").MacAddress}}}}", "app")
    assert by_name["web"][3] == "10.88.0.0/16"

    # web's published ports: container side (addr '') and host side (loopback and the bridges), forwarded.
    policies = database.query(
        f"SELECT i.port, i.protocol, i.addr, o.port, o.protocol, o.addr FROM {p}endpoint_policies f "
        f"JOIN {p}application_endpoints i ON i.id = f.endpoint_id "
        f"JOIN {p}application_endpoints o ON o.id = f.src_endpoint_id WHERE f.action = 'forward'")
    forwards = {(int(a), b, c, int(d), e, f) for a, b, c, d, e, f in policies}
    web = engine.podman("inspect", "--format", "{{.NetworkSettings.IPAddress}}", "web")  # the container's side
    assert (80, "tcp", web, 8080, "tcp", "127.0.0.1") in forwards
    assert (53, "udp", web, 8053, "udp", "127.0.0.1") in forwards
    assert {(inner, outer_port) for inner, _, _, outer_port, _, _ in forwards} == {(80, 8080), (53, 8053)}

    # A second cycle changes no row count.
    before = counts(database)
    run_modules(engine, database, tmp_path, *HOST_MODULES, "docker")
    assert counts(database) == before

    # app recreated under the same name: one row for it, the new container's.
    engine.podman("rm", "--force", "--time", "0", "app")
    engine.podman("run", "-d", "--name", "app", "--network", engine.network, IMAGE, "sleep", "3600")
    run_modules(engine, database, tmp_path, "docker")
    assert containers(database)["app"][0] == engine.podman("inspect", "--format", "{{.Id}}", "app")
    assert counts(database) == before
