"""The policy loader and its pure helpers: no kernel needed."""

from __future__ import annotations

import ipaddress
import json
import os
import pickle
import random
import socket
import textwrap
from unittest import mock

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtimeguard.errors import RuntimeGuardError
from runtimeguard.policy import (
    CompiledNetRule,
    Policy,
    PolicyError,
    ProtectedPath,
    check_policy,
    decide_network,
    guess_template,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "agent-policy.yaml")
MISSING = "/nonexistent-runtimeguard-test/secret"


def load(text: str, fmt: str = "yaml") -> Policy:
    return Policy.from_text(textwrap.dedent(text), fmt)


# ---- malformed documents: each gives its named error ----

BAD = [
    # (id, format, document, field, reason substring)
    ("unknown-top", "yaml", "version: 1\nmodee: audit", "modee", "unknown field"),
    ("unknown-nested", "yaml", "version: 1\nnetwork: {allow: [{cidr: 10.0.0.0/8, prot: tcp}]}",
     "network.allow[0].prot", "unknown field"),
    ("unknown-deep-section", "yaml", "version: 1\nfiles: {protected: [/etc/passwd]}", "files.protected",
     "expected one of: protect, action"),
    ("bad-cidr", "yaml", "version: 1\nnetwork: {deny: [{cidr: 10.0.0.300/8}]}", "network.deny[0].cidr",
     "invalid CIDR"),
    ("bad-cidr-prefix", "yaml", "version: 1\nnetwork: {deny: [{cidr: 10.0.0.0/33}]}", "network.deny[0].cidr",
     "invalid CIDR"),
    ("port-0", "yaml", "version: 1\nnetwork: {deny: [{cidr: 10.0.0.0/8, ports: [0]}]}",
     "network.deny[0].ports[0]", "out of range"),
    ("port-70000", "yaml", "version: 1\nnetwork: {allow: [{cidr: 10.0.0.0/8, ports: [80, 70000]}]}",
     "network.allow[0].ports[1]", "70000 out of range"),
    ("range-reversed", "yaml", "version: 1\nnetwork: {allow: [{cidr: 10.0.0.0/8}, {cidr: '::1/128', ports: ['9-3']}]}",
     "network.allow[1].ports[0]", "reversed"),
    ("range-malformed", "yaml", "version: 1\nnetwork: {allow: [{cidr: 10.0.0.0/8, ports: ['80-']}]}",
     "network.allow[0].ports[0]", "malformed port range"),
    ("range-out-of-range", "yaml", "version: 1\nnetwork: {allow: [{cidr: 10.0.0.0/8, ports: ['1-65536']}]}",
     "network.allow[0].ports[0]", "65536 out of range"),
    ("port-bool", "yaml", "version: 1\nnetwork: {allow: [{cidr: 10.0.0.0/8, ports: [true]}]}",
     "network.allow[0].ports[0]", "got `bool`"),
    ("ports-empty", "yaml", "version: 1\nnetwork: {allow: [{cidr: 10.0.0.0/8, ports: []}]}",
     "network.allow[0].ports", "empty"),
    ("cidr-and-host", "yaml", "version: 1\nnetwork: {deny: [{cidr: 10.0.0.0/8, host: localhost}]}",
     "network.deny[0]", "exactly one of cidr or host"),
    ("neither-cidr-nor-host", "yaml", "version: 1\nnetwork: {deny: [{ports: [22]}]}",
     "network.deny[0]", "exactly one of cidr or host"),
    ("unknown-protocol", "yaml", "version: 1\nnetwork: {deny: [{cidr: '::1/128', protocol: icmp}]}",
     "network.deny[0].protocol", "expected one of: tcp, udp, any"),
    ("unknown-mode", "yaml", "version: 1\nmode: block", "mode", "expected one of: audit, enforce"),
    ("unknown-default", "yaml", "version: 1\nnetwork: {default: reject}", "network.default", "allow, deny"),
    ("missing-version", "yaml", "name: x\nmode: audit", "version", "required"),
    ("wrong-version", "yaml", "version: 2", "version", "unsupported policy version 2"),
    ("version-string", "yaml", "version: '1'", "version", "expected an integer"),
    ("protect-not-found", "yaml", f"version: 1\nfiles: {{protect: [/etc/passwd, {MISSING}]}}",
     "files.protect[1]", "file not found"),
    ("protect-root", "yaml", "version: 1\nfiles: {protect: ['/']}", "files.protect[0]", "protect /"),
    ("protect-root-spelled-oddly", "yaml", "version: 1\nfiles: {protect: ['/etc/..']}", "files.protect[0]",
     "protect /"),
    ("protect-relative", "yaml", "version: 1\nfiles: {protect: [etc/passwd]}", "files.protect[0]",
     "not absolute"),
    ("protect-duplicate", "yaml", "version: 1\nfiles: {protect: [/etc/passwd, /etc//passwd]}",
     "files.protect[1]", "duplicate of files.protect[0]"),
    ("file-action", "yaml", "version: 1\nfiles: {action: delete}", "files.action", "kill, report"),
    ("duplicate-rule", "yaml",
     "version: 1\nnetwork: {deny: [{cidr: 10.0.0.0/8, ports: [22]}, {cidr: 10.9.9.9/8, ports: ['22-22']}]}",
     "network.deny[1]", "duplicate of network.deny[0]"),
    ("duplicate-rule-mapped", "yaml",
     "version: 1\nnetwork: {deny: [{cidr: 127.0.0.2/32}, {cidr: '::ffff:127.0.0.2/128'}]}",
     "network.deny[1]", "duplicate of network.deny[0]"),
    ("contradiction", "yaml",
     "version: 1\nnetwork: {allow: [{cidr: 10.0.0.0/8, ports: [443], protocol: tcp}],"
     " deny: [{cidr: '::1/128'}, {cidr: 10.0.0.0/8, ports: [443], protocol: tcp}]}",
     "network.deny[1]", "contradicts network.allow[0]"),
    ("host-is-a-cidr", "yaml", "version: 1\nnetwork: {deny: [{host: 10.0.0.0/8}]}", "network.deny[0].host",
     "use cidr"),
    ("protect-pid-1", "yaml", "version: 1\nptrace: {protect_pids: [1]}", "ptrace.protect_pids[0]", "pid 1"),
    ("protect-pid-0", "yaml", "version: 1\nptrace: {protect_pids: [0]}", "ptrace.protect_pids[0]", "positive"),
    ("protect-pid-negative", "yaml", "version: 1\nptrace: {protect_pids: [-5]}", "ptrace.protect_pids[0]",
     "positive"),
    ("protect-own-pid", "yaml", "version: 1\nptrace: {protect_pids: [@PID@]}", "ptrace.protect_pids[0]",
     "guard itself"),
    ("scope-cgroup-missing", "yaml", "version: 1\nscope: {type: cgroup}", "scope.cgroup", "required"),
    ("scope-cgroup-unexpected", "yaml", "version: 1\nscope: {type: host, cgroup: /x}", "scope.cgroup",
     "only allowed"),
    ("scope-type", "yaml", "version: 1\nscope: {type: container}", "scope.type", "command, cgroup, host"),
    ("decoy-parent-missing", "yaml", f"version: 1\nmirage: {{decoys: [{{path: {MISSING}}}]}}",
     "mirage.decoys[0].path", "does not exist"),
    ("decoy-is-protected", "yaml",
     "version: 1\nfiles: {protect: [/etc/passwd]}\nmirage: {decoys: [{path: /etc/passwd}]}",
     "mirage.decoys[0].path", "files.protect[0]"),
    ("decoy-template", "yaml", "version: 1\nmirage: {decoys: [{path: /tmp/x, template: gcp}]}",
     "mirage.decoys[0].template", "aws, env, ssh_key, generic"),
    ("decoy-no-path", "yaml", "version: 1\nmirage: {decoys: [{template: aws}]}", "mirage.decoys[0].path",
     "required"),
    ("taint-from", "yaml", "version: 1\ntaint: {from: [files, network]}", "taint.from[1]", "files, mirage"),
    ("kill-not-bool", "yaml", "version: 1\nmirage: {kill: 'yes'}", "mirage.kill", "Expected `bool`"),
    ("yaml-syntax", "yaml", "version: 1\nnetwork: {deny: [\n", "", "line"),
    ("yaml-duplicate-key", "yaml", "version: 1\nmode: audit\nmode: enforce", "", "duplicate key 'mode'"),
    ("yaml-not-a-mapping", "yaml", "- version: 1", "", "not a mapping"),
    ("yaml-empty", "yaml", "", "", "empty"),
    ("yaml-non-string-key", "yaml", "version: 1\n7: x", "", "keys must be strings"),
    ("yaml-self-reference", "yaml", "version: 1\nname: &a [*a]", "name", "Expected `str | null`"),
    ("toml-unknown", "toml", "version = 1\n[network]\ndefualt = 'deny'", "network.defualt", "unknown field"),
    ("toml-port", "toml", "version = 1\n[[network.deny]]\ncidr = '::1/128'\nports = [70000]",
     "network.deny[0].ports[0]", "out of range"),
    ("toml-mode", "toml", "version = 1\nmode = 'enforcing'", "mode", "expected one of"),
    ("toml-syntax", "toml", "version = 1\nmode = ", "", "TOML syntax error"),
    ("json-unknown", "json", '{"version": 1, "ptrace": {"deny": true, "pids": []}}', "ptrace.pids",
     "unknown field"),
    ("json-cidr", "json", '{"version": 1, "network": {"allow": [{"cidr": "fe80::/129"}]}}',
     "network.allow[0].cidr", "invalid CIDR"),
    ("json-syntax", "json", '{"version": 1,\n "mode": }', "", "line 2"),
    ("json-duplicate-key", "json", '{"version": 1, "mode": "audit", "mode": "enforce"}', "",
     "duplicate key 'mode'"),
    ("json-not-a-mapping", "json", '"version: 1"', "", "not a mapping"),
]


@pytest.mark.parametrize("fmt,text,field,reason", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_policy_names_field_and_reason(fmt, text, field, reason):
    with pytest.raises(PolicyError) as info:
        Policy.from_text(text.replace("@PID@", str(os.getpid())), fmt, source="p." + fmt)
    e = info.value
    assert e.field == field, str(e)
    assert reason in e.reason, str(e)
    assert str(e).startswith(f"p.{fmt}: ")
    assert (f": {field}: " in str(e)) if field else str(e) == f"p.{fmt}: {e.reason}"


def test_policy_error_types_and_pickling():
    e = PolicyError("network.allow[1].ports[0]", "port 0 out of range", "agent.yaml")
    assert isinstance(e, RuntimeGuardError) and isinstance(e, ValueError)
    assert str(e) == "agent.yaml: network.allow[1].ports[0]: port 0 out of range"
    again = pickle.loads(pickle.dumps(e))
    assert (again.field, again.reason, again.source, str(again)) == (e.field, e.reason, e.source, str(e))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.load(tmp_path / "absent.yaml")
    odd = tmp_path / "policy.conf"
    odd.write_text("version: 1\n")
    with pytest.raises(PolicyError, match="cannot tell the format"):
        Policy.load(odd)
    assert Policy.load(odd, format="yaml").version == 1
    bad = tmp_path / "bad.yml"
    bad.write_text("version: 1\nmode: sometimes\n")
    with pytest.raises(PolicyError) as info:
        Policy.load(bad)
    assert str(info.value).startswith(f"{bad}: mode: ")
    assert info.value.source == str(bad)
    with pytest.raises(PolicyError, match="not UTF-8"):
        Policy.from_text(b"version: 1\nname: \xff\n", "yaml")


# ---- the same policy in three formats ----

VALID_YAML = """
version: 1
name: agent
mode: enforce
scope: {type: cgroup, cgroup: /sys/fs/cgroup/agents}
network:
  default: deny
  allow:
    - {cidr: 127.0.0.0/8, ports: [80, "8000-8100"], protocol: tcp}
    - {host: localhost, ports: [53], protocol: udp}
  deny:
    - cidr: "::1/128"
    - cidr: "10.1.2.3/8"
      ports: [22]
files:
  protect: [/etc/passwd, /etc]
  action: report
mirage:
  decoys:
    - path: /tmp/rg-test-aws-credentials
      template: aws
    - {path: /tmp/rg-decoy.env}
  kill: true
ptrace:
  deny: false
  protect_pids: [4242]
taint:
  from: [mirage]
  block_egress: false
"""

VALID_TOML = """
version = 1
name = "agent"
mode = "enforce"

[scope]
type = "cgroup"
cgroup = "/sys/fs/cgroup/agents"

[network]
default = "deny"

[[network.allow]]
cidr = "127.0.0.0/8"
ports = [80, "8000-8100"]
protocol = "tcp"

[[network.allow]]
host = "localhost"
ports = [53]
protocol = "udp"

[[network.deny]]
cidr = "::1/128"

[[network.deny]]
cidr = "10.1.2.3/8"
ports = [22]

[files]
protect = ["/etc/passwd", "/etc"]
action = "report"

[mirage]
kill = true
decoys = [{path = "/tmp/rg-test-aws-credentials", template = "aws"}, {path = "/tmp/rg-decoy.env"}]

[ptrace]
deny = false
protect_pids = [4242]

[taint]
from = ["mirage"]
block_egress = false
"""

VALID_JSON = """{
  "version": 1, "name": "agent", "mode": "enforce",
  "scope": {"type": "cgroup", "cgroup": "/sys/fs/cgroup/agents"},
  "network": {
    "default": "deny",
    "allow": [{"cidr": "127.0.0.0/8", "ports": [80, "8000-8100"], "protocol": "tcp"},
              {"host": "localhost", "ports": [53], "protocol": "udp"}],
    "deny": [{"cidr": "::1/128"}, {"cidr": "10.1.2.3/8", "ports": [22]}]
  },
  "files": {"protect": ["/etc/passwd", "/etc"], "action": "report"},
  "mirage": {"decoys": [{"path": "/tmp/rg-test-aws-credentials", "template": "aws"},
                        {"path": "/tmp/rg-decoy.env"}], "kill": true},
  "ptrace": {"deny": false, "protect_pids": [4242]},
  "taint": {"from": ["mirage"], "block_egress": false}
}"""


def test_same_policy_in_yaml_toml_json_is_equal(tmp_path):
    from_yaml = Policy.from_text(VALID_YAML, "yaml")
    from_toml = Policy.from_text(VALID_TOML, "toml")
    from_json = Policy.from_text(VALID_JSON, "json")
    assert from_yaml == from_toml == from_json
    for ext, text in (("yml", VALID_YAML), ("toml", VALID_TOML), ("json", VALID_JSON)):
        (tmp_path / f"p.{ext}").write_text(text)
        assert Policy.load(tmp_path / f"p.{ext}") == from_yaml
    assert Policy.from_dict(json.loads(VALID_JSON)) == from_yaml


def test_values_are_normalized():
    p = Policy.from_text(VALID_YAML)
    assert p.network.deny[1].cidr == "10.0.0.0/8"  # host bits dropped
    assert p.mirage.decoys[0].template == "aws"
    assert p.mirage.decoys[1].template == "env"  # guessed
    assert p.taint.sources == ("mirage",)
    home = os.path.expanduser("~")
    q = load("""
        version: 1
        mirage: {decoys: [{path: ~/id_rsa}]}
    """)
    assert q.mirage.decoys[0].path == os.path.join(home, "id_rsa")
    assert q.mirage.decoys[0].template == "ssh_key"


def test_defaults():
    p = load("version: 1")
    assert p.mode == "audit" and p.scope.type == "command" and p.scope.cgroup is None
    assert p.network.default == "allow" and p.network.allow == () and p.network.deny == ()
    assert p.files.action == "kill" and p.mirage.kill is False
    assert p.ptrace.deny is True and p.taint.sources == ("files", "mirage") and p.taint.block_egress is True
    assert p.network_rules() == [] and p.protected_paths() == []


def test_with_mode():
    p = load("version: 1\nname: x")
    q = p.with_mode("enforce")
    assert q.mode == "enforce" and p.mode == "audit" and q.name == "x"
    assert q == msgspec.structs.replace(p, mode="enforce")
    with pytest.raises(PolicyError) as info:
        p.with_mode("loud")
    assert info.value.field == "mode"


@pytest.mark.parametrize("path,template", [
    ("~/.aws/credentials", "aws"), ("/root/.env", "env"), ("/srv/app/.env.production", "env"),
    ("/home/u/.ssh/id_ed25519", "ssh_key"), ("/x/server.pem", "ssh_key"), ("/x/notes.txt", "generic"),
])
def test_guess_template(path, template):
    assert guess_template(path) == template


# ---- compiling ----

def test_network_rules_compile():
    p = Policy.from_text(VALID_YAML.replace("default: deny", "default: deny\n  dns: {servers: [127.0.0.53]}"))
    rules = p.network_rules()
    assert [(r.rule_id, r.action, str(r.network), r.host, r.port_ranges, r.protocol) for r in rules] == [
        ("network.deny[0]", "deny", "::1/128", None, ((0, 65535),), "any"),
        ("network.deny[1]", "deny", "10.0.0.0/8", None, ((22, 22),), "any"),
        ("network.allow[0]", "allow", "127.0.0.0/8", None, ((80, 80), (8000, 8100)), "tcp"),
        # A host rule stays a pattern: nothing is resolved in advance.
        ("network.allow[1]", "allow", "None", "localhost", ((53, 53),), "udp"),
        # Default deny with host rules: the servers whose answers count are reachable.
        ("network.dns.servers", "allow", "127.0.0.53/32", None, ((53, 53),), "any"),
    ]
    assert p.host_patterns() == ("localhost",)


def test_host_rules_match_the_names_answered():
    p = load("""
        version: 1
        network:
          default: deny
          allow: [{host: "*.Example.com.", ports: [443]}, {host: api.other.test}]
          deny: [{host: bad.example.com}]
          dns: {servers: [127.0.0.53]}
    """)
    assert p.network.allow[0].host == "*.example.com"
    rules = p.network_rules()
    assert decide_network(rules, "deny", "192.0.2.1", 443, "tcp", ["a.example.com"]) == ("allow", "network.allow[0]")
    assert decide_network(rules, "deny", "192.0.2.1", 443, "tcp", ["example.com"]) == ("deny", "network.default")
    assert decide_network(rules, "deny", "192.0.2.1", 80, "tcp", ["a.example.com"]) == ("deny", "network.default")
    assert decide_network(rules, "deny", "192.0.2.1", 443, "tcp",
                          ["bad.example.com", "a.example.com"]) == ("deny", "network.deny[0]")
    assert decide_network(rules, "deny", "192.0.2.1", 9, "udp", ["api.other.test"]) == ("allow", "network.allow[1]")
    assert decide_network(rules, "deny", "192.0.2.1", 443, "tcp") == ("deny", "network.default")


@pytest.mark.parametrize("host, reason", [
    ("10.0.0.1", "an address, not a host name"),
    ("::1", "an address, not a host name"),
    ("a.*.example.com", "only a leading '*.'"),
    ("*example.com", "only a leading '*.'"),
    ("a..b", "empty label"),
    ("bad name.test", "is not 1 to 63"),
    ("x" * 64 + ".test", "is not 1 to 63"),
    (".".join(["abcdefgh"] * 29), "longer than 253"),
])
def test_invalid_host_names(host, reason):
    with pytest.raises(PolicyError) as info:
        Policy.from_dict({"version": 1, "network": {"allow": [{"host": host}]}})
    assert info.value.field == "network.allow[0].host" and reason in info.value.reason


@pytest.mark.parametrize("dns, field, reason", [
    ({"servers": ["not-an-ip"]}, "network.dns.servers[0]", "not an IP address"),
    ({"servers": ["127.0.0.53", "::ffff:127.0.0.53"]}, "network.dns.servers[1]", "duplicate"),
    ({"min_ttl": 0}, "network.dns.min_ttl", "above 0"),
    ({"min_ttl": 10, "max_ttl": 5}, "network.dns.max_ttl", "at least min_ttl"),
    ({"max_ttl": 10 ** 7}, "network.dns.max_ttl", "at most"),
])
def test_invalid_dns_settings(dns, field, reason):
    with pytest.raises(PolicyError) as info:
        Policy.from_dict({"version": 1, "network": {"dns": dns}})
    assert info.value.field == field and reason in info.value.reason


def test_too_many_host_patterns():
    hosts = [{"host": f"h{i}.test"} for i in range(65)]
    with pytest.raises(PolicyError) as info:
        Policy.from_dict({"version": 1, "network": {"allow": hosts}})
    assert "at most 64" in info.value.reason


def test_refuse_unobserved_compiles_to_deny_rules():
    p = Policy.from_dict({"version": 1, "network": {"dns": {"servers": ["127.0.0.53"], "refuse_unobserved": True}}})
    rules = p.network_rules()
    assert decide_network(rules, "allow", "192.0.2.7", 853, "tcp") == ("deny", "network.dns.refuse_unobserved")
    assert decide_network(rules, "allow", "1.1.1.1", 443, "tcp") == ("deny", "network.dns.refuse_unobserved")
    assert decide_network(rules, "allow", "192.0.2.7", 443, "tcp", ["dns.google"]) == (
        "deny", "network.dns.refuse_unobserved")
    assert decide_network(rules, "allow", "192.0.2.7", 443, "tcp") == ("allow", "network.default")


def test_mapped_cidr_compiles_to_ipv4():
    p = load("""
        version: 1
        network: {deny: [{cidr: "::ffff:10.0.0.0/104", ports: ["20-22", 21, 23]}, {cidr: "::ffff:0:0/96"}]}
    """)
    rules = p.network_rules()
    assert rules[0].network == ipaddress.ip_network("10.0.0.0/8") and rules[0].port_ranges == ((20, 23),)
    assert rules[1].network == ipaddress.ip_network("0.0.0.0/0")
    assert decide_network(rules, "allow", "10.1.1.1", 22, "tcp") == ("deny", "network.deny[0]")


def test_protected_paths(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("x")
    link = tmp_path / "link"
    link.symlink_to(secret)
    d = tmp_path / "dir"
    d.mkdir()
    p = load(f"""
        version: 1
        files: {{protect: ["{link}", "{d}/"]}}
    """)
    st_secret, st_dir = os.stat(secret), os.stat(d)
    assert p.protected_paths() == [
        ProtectedPath("files.protect[0]", str(link), st_secret.st_dev, st_secret.st_ino, False),
        ProtectedPath("files.protect[1]", str(d), st_dir.st_dev, st_dir.st_ino, True),
    ]
    secret.unlink()  # gone between load and compile
    with pytest.raises(PolicyError) as info:
        p.protected_paths()
    assert info.value.field == "files.protect[0]" and info.value.reason == "file not found"


def test_example_policy_checks():
    p = check_policy(EXAMPLE)
    assert p.mode == "enforce" and p.ptrace.deny and p.taint.block_egress
    assert p.files.protect == ("/etc/shadow",)
    assert {d.template for d in p.mirage.decoys} >= {"aws", "env"}
    rules = p.network_rules()
    assert decide_network(rules, p.network.default, "127.0.0.2", 9, "udp") == ("deny", "network.deny[0]")
    assert decide_network(rules, p.network.default, "::ffff:127.0.0.2", 9, "tcp") == ("deny", "network.deny[0]")
    assert decide_network(rules, p.network.default, "127.0.0.2", 10, "tcp")[0] == "allow"
    for r in rules:  # loopback only
        assert r.network.is_loopback


# ---- decide_network ----

def rule(rule_id, action, cidr, ranges=((0, 65535),), protocol="any"):
    return CompiledNetRule(rule_id, action, ipaddress.ip_network(cidr), tuple(ranges), protocol)


def test_decide_network_examples():
    rules = [
        rule("network.deny[0]", "deny", "10.0.0.0/8", [(22, 22)]),
        rule("network.deny[1]", "deny", "10.1.0.0/16"),
        rule("network.allow[0]", "allow", "10.0.0.0/8", protocol="tcp"),
        rule("network.allow[1]", "allow", "::/0", [(443, 443)]),
    ]
    assert decide_network(rules, "deny", "10.9.9.9", 22, "udp") == ("deny", "network.deny[0]")
    assert decide_network(rules, "deny", "10.1.2.3", 22, "tcp") == ("deny", "network.deny[0]")
    assert decide_network(rules, "deny", "10.1.2.3", 80, "tcp") == ("deny", "network.deny[1]")
    assert decide_network(rules, "deny", "10.2.0.1", 80, "tcp") == ("allow", "network.allow[0]")
    assert decide_network(rules, "deny", "10.2.0.1", 80, "udp") == ("deny", "network.default")
    assert decide_network(rules, "allow", "192.0.2.1", 80, "udp") == ("allow", "network.default")
    assert decide_network(rules, "deny", "2001:db8::1", 443, "tcp") == ("allow", "network.allow[1]")
    # A mapped address is IPv4: the ::/0 rule does not see it, the IPv4 rules do.
    assert decide_network(rules, "deny", "::ffff:192.0.2.1", 443, "tcp") == ("deny", "network.default")
    assert decide_network(rules, "allow", "::ffff:10.1.0.1", 443, "tcp") == ("deny", "network.deny[1]")


ipv4 = st.ip_addresses(v=4)
# Compiled rules never hold an IPv4-mapped network, and a mapped address is
# matched as IPv4: the properties below use plain IPv6 addresses.
ipv6 = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None)
ports = st.integers(0, 65535)
protocols = st.sampled_from(["tcp", "udp"])


@st.composite
def port_ranges(draw):
    pairs = draw(st.lists(st.tuples(ports, ports).map(sorted).map(tuple), min_size=1, max_size=3))
    return tuple(pairs)


@st.composite
def net_rules(draw, near=None):
    """A rule; with ``near``, often one whose network contains that address."""
    if near is not None and draw(st.booleans()):
        addr = near
    else:
        addr = draw(st.one_of(ipv4, ipv4, ipv6))
    plen = draw(st.integers(0, addr.max_prefixlen))
    network = ipaddress.ip_network((addr, plen), strict=False)
    return CompiledNetRule(f"r{draw(st.integers(0, 99))}", draw(st.sampled_from(["allow", "deny"])), network,
                           draw(port_ranges()), draw(st.sampled_from(["tcp", "udp", "any"])))


def covering(addr, plen, action, rule_id, port, protocol):
    net = ipaddress.ip_network((addr, plen), strict=False)
    return CompiledNetRule(rule_id, action, net, ((port, port),), protocol)


@settings(max_examples=150, deadline=None)
@given(st.data(), ipv4, ports, protocols, st.sampled_from(["allow", "deny"]))
def test_mapped_address_is_matched_as_ipv4(data, a, port, protocol, default):
    rules = data.draw(st.lists(net_rules(near=a), max_size=8))
    assert decide_network(rules, default, str(a), port, protocol) == \
        decide_network(rules, default, f"::ffff:{a}", port, protocol)


@settings(max_examples=150, deadline=None)
@given(st.data(), ipv4, ports, protocols, st.sampled_from(["allow", "deny"]))
def test_deny_wins_over_allow(data, a, port, protocol, default):
    others = data.draw(st.lists(net_rules(near=a), max_size=6))
    allow = covering(a, data.draw(st.integers(0, 32)), "allow", "allow-it", port,
                     data.draw(st.sampled_from([protocol, "any"])))
    deny = covering(a, data.draw(st.integers(0, 32)), "deny", "deny-it", port,
                    data.draw(st.sampled_from([protocol, "any"])))
    rules = others + [allow, deny]
    random.Random(data.draw(st.integers())).shuffle(rules)
    for address in (str(a), f"::ffff:{a}"):
        action, rule_id = decide_network(rules, default, address, port, protocol)
        assert action == "deny"
        assert rule_id == next(r.rule_id for r in rules if r.action == "deny" and a in r.network
                               and r.protocol in (protocol, "any")
                               and any(lo <= port <= hi for lo, hi in r.port_ranges))


@settings(max_examples=150, deadline=None)
@given(st.data(), st.one_of(ipv4, ipv6), ports, protocols, st.sampled_from(["allow", "deny"]))
def test_default_decides_when_nothing_matches(data, a, port, protocol, default):
    rules = [r for r in data.draw(st.lists(net_rules(near=a), max_size=8))
             if r.network.version != a.version or a not in r.network]
    assert decide_network(rules, default, str(a), port, protocol) == (default, "network.default")


@settings(max_examples=150, deadline=None)
@given(st.one_of(ipv4, ipv6), st.tuples(ports, ports).map(sorted), st.sampled_from(["allow", "deny"]),
       st.sampled_from(["tcp", "udp", "any"]), protocols)
def test_port_ranges_are_inclusive(a, bounds, action, rule_protocol, protocol):
    lo, hi = bounds
    default = "deny" if action == "allow" else "allow"
    rules = [CompiledNetRule("it", action, ipaddress.ip_network(a), ((lo, hi),), rule_protocol)]
    expect = (action, "it") if rule_protocol in (protocol, "any") else (default, "network.default")
    for port in {lo, hi, (lo + hi) // 2}:
        assert decide_network(rules, default, str(a), port, protocol) == expect
    for port in (lo - 1, hi + 1):
        if 0 <= port <= 65535:
            assert decide_network(rules, default, str(a), port, protocol) == (default, "network.default")


# ---- hypothesis: the loader raises PolicyError or succeeds, nothing else ----

def fake_resolve(host, *args, **kwargs):
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]


def rendered(path) -> str:
    """A document path as errors name it: network.allow[1].ports[0]."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def load_fully(data) -> None:
    """from_dict, then compile: only PolicyError may come out. A refusal
    names a place in the document (or the whole of it); what is accepted is
    sound: its normal form loads again to the same policy."""
    try:
        p = Policy.from_dict(data)
        with mock.patch("socket.getaddrinfo", fake_resolve):
            p.network_rules()
        p.protected_paths()
    except PolicyError as e:
        assert e.reason, e
        if e.field:
            places = {rendered(path + (key,)) for path, key in slots(data)} if isinstance(data, dict) else set()
            parents = {rendered(path) for path in containers(data)}
            # A missing required field is named below the mapping it is missing from.
            parent = e.field.rpartition(".")[0] if e.field.rpartition(".")[2].isidentifier() else None
            assert e.field in places or parent in parents, (e.field, data)
        return
    again = Policy.from_dict(msgspec.to_builtins(p))
    assert again == p


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
    st.sampled_from([0, 1, -1, 65535, 65536, 2**64, "1-2", "9-3", "80", "::ffff:1.2.3.4/120", "10.0.0.0/8",
                     "~", "/", "", "\x00", "/etc/passwd", "/etc", "tcp", "any", "deny", "cgroup", "host",
                     "enforce", "files", "mirage", "aws", "localhost", os.getpid()]),
)
json_like = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                         | st.dictionaries(st.text(max_size=10), kids, max_size=4), max_leaves=16)
KEYS = ["version", "name", "mode", "scope", "type", "cgroup", "network", "default", "allow", "deny", "cidr",
        "host", "ports", "protocol", "files", "protect", "action", "mirage", "decoys", "path", "template",
        "kill", "ptrace", "protect_pids", "taint", "from", "block_egress"]
policy_like = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.sampled_from(KEYS), kids, max_size=5), max_leaves=24)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_like, policy_like, st.dictionaries(st.sampled_from(KEYS), policy_like).map(
    lambda d: {**d, "version": 1})))
def test_arbitrary_documents_raise_only_policy_error(doc):
    load_fully(doc)
    try:
        text = json.dumps(doc)
    except (ValueError, TypeError):
        return
    try:
        Policy.from_text(text, "json")
    except PolicyError:
        pass


VALID_DICT = {
    "version": 1, "name": "t", "mode": "enforce",
    "scope": {"type": "command"},
    "network": {"default": "allow",
                "allow": [{"cidr": "127.0.0.0/8", "ports": [80, "8000-8100"], "protocol": "tcp"}],
                "deny": [{"cidr": "::1/128"}, {"host": "localhost", "ports": [22]}]},
    "files": {"protect": ["/etc/passwd", "/etc"], "action": "kill"},
    "mirage": {"decoys": [{"path": "/tmp/rg-hypothesis-decoy", "template": "aws"}], "kill": False},
    "ptrace": {"deny": True, "protect_pids": [4242]},
    "taint": {"from": ["files", "mirage"], "block_egress": True},
}


def slots(doc, path=()):
    """Every (container path, key or index) in a document."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield path, k
            yield from slots(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield path, i
            yield from slots(v, path + (i,))


def containers(doc, path=()):
    if isinstance(doc, (dict, list)):
        yield path
        for k, v in (doc.items() if isinstance(doc, dict) else enumerate(doc)):
            yield from containers(v, path + (k,))


def at(doc, path):
    for p in path:
        doc = doc[p]
    return doc


@settings(max_examples=250, deadline=None)
@given(st.data())
def test_mutated_valid_policy_raises_only_policy_error(data):
    doc = json.loads(json.dumps(VALID_DICT))
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["drop", "replace", "add"]))
        if op == "add":
            path = data.draw(st.sampled_from(list(containers(doc))))
            target = at(doc, path)
            value = data.draw(policy_like)
            if isinstance(target, dict):
                target[data.draw(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)))] = value
            else:
                target.insert(data.draw(st.integers(0, len(target))), value)
            continue
        choices = list(slots(doc))
        if not choices:
            break
        path, key = data.draw(st.sampled_from(choices))
        target = at(doc, path)
        if op == "drop":
            del target[key]
        else:
            target[key] = data.draw(policy_like)
    load_fully(doc)


# One slot of VALID_DICT set to a value that is wrong there, written out by
# hand: the policy is refused and the error names exactly that slot.
WRONG_HERE = {
    ("version",): [0, 2, "1", True, None],
    ("name",): [5, ["x"], {}],
    ("mode",): ["block", "Enforce", 1, None, True],
    ("scope", "type"): ["container", 1],
    ("network", "default"): ["maybe", 0, True],
    ("network", "allow", 0, "cidr"): ["10.0.0.300/8", "::1/129", "", 5, "localhost"],
    ("network", "allow", 0, "ports", 0): [0, 65536, -1, "9-3", "x", "1-70000", 1.5, True],
    ("network", "allow", 0, "protocol"): ["icmp", 6, "TCP"],
    ("network", "deny", 1, "ports"): [[], "22", 22],
    ("files", "protect", 0): ["", 5, MISSING],
    ("files", "action"): ["block", True],
    ("mirage", "decoys", 0, "path"): [5, f"{MISSING}/decoy"],
    ("mirage", "decoys", 0, "template"): ["gcp", 1],
    ("mirage", "kill"): ["yes", 1, None],
    ("ptrace", "deny"): ["no", 0],
    ("ptrace", "protect_pids", 0): [0, -1, "1", 1.5, os.getpid()],
    ("taint", "from", 0): ["network", 1],
    ("taint", "block_egress"): ["no", 1],
}
WRONG_HERE_CASES = [(path, value) for path, values in WRONG_HERE.items() for value in values]


@pytest.mark.parametrize("path,value", WRONG_HERE_CASES, ids=[f"{rendered(p)}={v!r}" for p, v in WRONG_HERE_CASES])
def test_a_wrong_value_is_refused_naming_its_place(path, value):
    doc = json.loads(json.dumps(VALID_DICT))
    at(doc, path[:-1])[path[-1]] = value
    with pytest.raises(PolicyError) as info, mock.patch("socket.getaddrinfo", fake_resolve):
        p = Policy.from_dict(doc)
        p.network_rules()
        p.protected_paths()
    assert info.value.field == rendered(path), info.value


@pytest.mark.parametrize("where", [(), ("network",), ("network", "allow", 0), ("files",), ("mirage", "decoys", 0),
                                   ("ptrace",), ("taint",), ("scope",)])
def test_an_unknown_key_is_refused_naming_it(where):
    doc = json.loads(json.dumps(VALID_DICT))
    at(doc, where)["defualt"] = "deny"
    with pytest.raises(PolicyError) as info:
        Policy.from_dict(doc)
    assert info.value.field == rendered(where + ("defualt",)) and "unknown field" in info.value.reason


def test_valid_dict_loads():
    with mock.patch("socket.getaddrinfo", fake_resolve):
        rules = Policy.from_dict(VALID_DICT).network_rules()
    assert [r.rule_id for r in rules] == ["network.deny[0]", "network.deny[1]", "network.allow[0]"]


@pytest.mark.parametrize("identity, field, reason", [
    ({"env": ["A*B"]}, "identity.env[0]", "one '*'"),
    ({"env": ["OK", "A=B"]}, "identity.env[1]", "no '='"),
    ({"env": ["X", "X"]}, "identity.env[1]", "listed twice"),
    ({"env": ["*" + "S" * 33]}, "identity.env[0]", "longer than 32 bytes"),
    ({"argv": [""]}, "identity.argv[0]", "non-empty"),
    ({"argv": ["a"] + [f"p{i}" for i in range(64)]}, "identity.argv", "at most 64"),
])
def test_identity_patterns_are_checked(identity, field, reason):
    with pytest.raises(PolicyError) as caught:
        Policy.from_dict({"version": 1, "identity": identity})
    assert caught.value.field == field and reason in str(caught.value)


def test_identity_patterns_reach_the_policy():
    policy = Policy.from_dict({"version": 1, "identity": {"env": ["OPENAI_API_KEY", "AWS_*", "*_TOKEN"],
                                                          "argv": ["openai"]}})
    assert policy.identity.env == ("OPENAI_API_KEY", "AWS_*", "*_TOKEN") and policy.identity.argv == ("openai",)
