import os

import pytest

from lab import config
from lab.config import ConfigError, global_id

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GOOD = """
[cluster]
name = "lab"
transport = "tcp"
port = 21064

[[node]]
id = 1
addresses = ["10.77.0.1"]
kind = "kernel"
kernel = "6.1"

[[node]]
id = 2
addresses = ["10.77.0.2"]
kernel = "5.10"
weight = 2

[[node]]
id = 7
addresses = ["10.77.0.100"]
kind = "peer"
protocol = "3.1"

[[lockspace]]
name = "alpha"
members = [1, 2, 7]
lvb_length = 32
"""


def test_global_id_vectors():
    assert global_id("test") == 0x77222027
    assert global_id("alpha") == 0x521B2683


def test_parse_good():
    c = config.parse(GOOD, "good.toml")
    assert c.name == "lab" and c.transport == "tcp" and c.port == 21064
    assert [n.id for n in c.nodes] == [1, 2, 7]
    n2 = c.node(2)
    assert n2.kind == "kernel" and n2.kernel == "5.10" and n2.weight == 2 and n2.address == "10.77.0.2"
    assert c.node(1).weight == 1
    p = c.node(7)
    assert p.kind == "peer" and p.protocol == "3.1"
    assert [n.id for n in c.kernel_nodes] == [1, 2] and [n.id for n in c.peer_nodes] == [7]
    ls = c.lockspace("alpha")
    assert ls.members == [1, 2, 7] and ls.lvb_length == 32 and ls.global_id == 0x521B2683
    assert c.warnings == []
    assert config.lab_problems(c) == []


def test_defaults():
    c = config.parse('[cluster]\nname="x"\n[[node]]\nid=1\naddresses=["10.77.0.1"]\n', "d.toml")
    assert c.transport == "tcp" and c.port == 21064
    n = c.node(1)
    assert n.kind == "kernel" and n.kernel == "6.1" and n.weight == 1 and n.protocol is None


def errors_of(text):
    with pytest.raises(ConfigError) as ei:
        config.parse(text, "bad.toml")
    assert "bad.toml" in str(ei.value)
    return ei.value.problems


@pytest.mark.parametrize("mutate, needle", [
    (lambda t: t.replace('transport = "tcp"', 'transport = "udp"'), "transport"),
    (lambda t: t.replace("port = 21064", "port = 70000"), "port"),
    (lambda t: t.replace('kernel = "5.10"', 'kernel = "4.19"'), "kernel '4.19'"),
    (lambda t: t.replace('"10.77.0.2"', '"10.77.0.999"'), "not an IP address"),
    (lambda t: t.replace('"10.77.0.2"', '"10.77.0.1"'), "also used by node 1"),
    (lambda t: t.replace("id = 7", "id = 2"), "duplicate node id"),
    (lambda t: t.replace("members = [1, 2, 7]", "members = [1, 2, 9]"), "member 9 is not a [[node]] id"),
    (lambda t: t.replace("members = [1, 2, 7]", "members = [1, 1]"), "duplicates"),
    (lambda t: t.replace("lvb_length = 32", "lvb_length = 64"), "always has lvb_length 32"),
    (lambda t: t.replace("lvb_length = 32", "lvb_length = 12"), "multiple of 8"),
    (lambda t: t.replace('protocol = "3.1"', 'protocol = "3.3"'), "protocol"),
    (lambda t: t.replace('kind = "peer"', 'kind = "vm"'), "kind 'vm'"),
    (lambda t: t.replace("weight = 2", "weight = -1"), "weight"),
    (lambda t: t.replace('name = "alpha"', 'name = "a/b"'), "without '/'"),
    (lambda t: t.replace('name = "lab"', 'name = ""'), "[cluster].name"),
    (lambda t: t.replace('[cluster]', '[clusterx]'), "missing [cluster]"),
    (lambda t: t.replace('addresses = ["10.77.0.1"]', ''), "'addresses' is missing"),
    (lambda t: t + "\n[[node]\n", "TOML syntax"),
])
def test_errors(mutate, needle):
    probs = errors_of(mutate(GOOD))
    assert any(needle in p for p in probs), probs


def test_protocol_only_for_peers():
    probs = errors_of(GOOD.replace('kernel = "5.10"', 'kernel = "5.10"\nprotocol = "3.1"'))
    assert any("for peer nodes only" in p for p in probs)


def test_all_errors_reported_together():
    probs = errors_of(GOOD.replace("port = 21064", "port = 0").replace('kernel = "5.10"', 'kernel = "9"'))
    assert len(probs) == 2


def test_unknown_keys_warn():
    c = config.parse(GOOD.replace("weight = 2", "weight = 2\nadresses = 1"), "w.toml")
    assert any("adresses" in w for w in c.warnings)


def test_lab_network_rule():
    c = config.parse(GOOD.replace('"10.77.0.100"', '"192.168.1.5"'), "n.toml")
    probs = config.lab_problems(c)
    assert any("192.168.1.5" in p and "outside the lab network" in p for p in probs)


def test_overrides():
    c = config.parse(GOOD, "o.toml").with_overrides(kernel="6.12", transport="sctp")
    assert c.transport == "sctp"
    assert [n.kernel for n in c.kernel_nodes] == ["6.12", "6.12"]


def test_to_toml_roundtrip():
    c = config.parse(GOOD, "r.toml")
    c2 = config.parse(config.to_toml(c), "r2.toml")
    assert [(n.id, n.addresses, n.kind, n.kernel, n.weight, n.protocol) for n in c.nodes] == \
           [(n.id, n.addresses, n.kind, n.kernel, n.weight, n.protocol) for n in c2.nodes]
    assert (c2.name, c2.transport, c2.port) == (c.name, c.transport, c.port)
    assert [(l.name, l.members, l.lvb_length) for l in c2.lockspaces] == [("alpha", [1, 2, 7], 32)]


def test_nodir():
    assert not config.parse(GOOD, "d.toml").lockspaces[0].nodir
    c = config.load_for_lab(os.path.join(REPO, "Config", "lab-peer-nodir.toml"))
    assert c.lockspace("alpha").nodir
    assert "nodir = true" in config.to_toml(c)
    assert config.parse(config.to_toml(c), "n2.toml").lockspace("alpha").nodir
    with pytest.raises(config.ConfigError, match="nodir"):
        config.parse(config.to_toml(c).replace("nodir = true", 'nodir = "yes"'), "bad.toml")


@pytest.mark.parametrize("name", ["lab-2node.toml", "lab-3node.toml", "lab-mixed.toml"])
def test_shipped_configs_are_valid(name):
    c = config.load_for_lab(os.path.join(REPO, "Config", name))
    assert c.lockspace("alpha").global_id == 0x521B2683
    assert all(n.kind == "kernel" for n in c.nodes)


def test_load_missing_file():
    with pytest.raises(ConfigError) as ei:
        config.load("/nonexistent/x.toml")
    assert "cannot read" in str(ei.value)
