"""Test hosts on one machine: network namespaces, each with its own address (`ip netns` +
veth, iproute2), for running server replicas as separate hosts behind a real balancer.

Each host is a namespace `cin<pid>-<i>` joined to this (the root) namespace by a veth pair
on its own /30: the root side holds `.1`, the host `.2`. Taking the root side's link down
cuts the host off the network the way a failed NIC or switch port would (packets vanish,
no reset). Addresses come from a free /24 in 10.213-10.252 (checked against the machine's
addresses), so parallel runs do not collide; names carry the creating process id, so a
run that died leaves namespaces that `remove_stale` recognises and deletes. Needs root.

The whole /24 gets a blackhole route in the root namespace: with a host's link down its
/30 route is gone, and without the blackhole the packets for it would follow the default
route off this machine. Traffic for the test hosts never leaves the machine.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import re
import subprocess
from dataclasses import dataclass

LOG = logging.getLogger(__name__)
PREFIX = "cin"  # namespace names: cin<creator pid>-<index>
_NAME = re.compile(rf"^{PREFIX}(\d+)-(\d+)$")


class NetnsError(RuntimeError):
    """A namespace could not be made (not root, iproute2 missing, ...)."""


@dataclass(frozen=True)
class Host:
    name: str  # the network namespace
    address: str  # its address, reachable from the root namespace
    link: str  # the root side of its veth pair: down cuts the host off

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *argv]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise NetnsError("`ip` (iproute2) is not installed: apt-get install iproute2") from None
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed: {done.stderr.strip()} (network "
                         "namespaces need root)")
    return done


def _free_block(rng: random.Random) -> ipaddress.IPv4Network:
    text = _ip("-o", "-4", "addr", "show").stdout  # the networks this machine already uses
    used = [ipaddress.IPv4Interface(m).network for m in re.findall(r"inet (\S+)", text)]
    candidates = [ipaddress.IPv4Network(f"10.{a}.{b}.0/24") for a in range(213, 253)
                  for b in range(256)]
    for network in rng.sample(candidates, 200):
        if not any(network.overlaps(other) for other in used):
            return network
    raise NetnsError("no free 10.213-252.x.0/24 block for test hosts")


@dataclass
class TestNetwork:
    """The hosts of one run and the /24 they live in (blackholed for anything else)."""

    block: str
    hosts: list[Host]

    def delete(self) -> None:
        """Delete the namespaces (their veth pairs go with them), then the blackhole.
        Processes still running in a namespace keep it alive: stop them first."""
        for host in self.hosts:
            _ip("link", "del", host.link, check=False)
            _ip("netns", "del", host.name, check=False)
        _ip("route", "del", "blackhole", self.block, check=False)


def create_network(count: int, seed: int | None = None) -> TestNetwork:
    """`count` hosts (at most 63), each up with its own address; `delete()` removes them
    (and does, for what was made, when creating fails half-way)."""
    if not 1 <= count <= 63:
        raise ValueError(f"count={count} must be in 1..63 (one /30 each in a /24)")
    block = _free_block(random.Random(seed))
    network = TestNetwork(str(block), [])
    base = int(block.network_address)
    try:
        _ip("route", "add", "blackhole", str(block))  # first: nothing for it ever leaves
        for i in range(count):
            name, tag = f"{PREFIX}{os.getpid()}-{i}", f"{os.getpid() % 100000:05d}{i:02d}"
            outside, inside = f"cv{tag}h", f"cv{tag}n"  # veth names: 15 characters at most
            root_ip, host_ip = (str(ipaddress.ip_address(base + 4 * i + k)) for k in (1, 2))
            _ip("netns", "add", name)
            network.hosts.append(Host(name, host_ip, outside))
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", name)
            _ip("addr", "add", f"{root_ip}/30", "dev", outside)
            _ip("link", "set", outside, "up")
            for args in (("addr", "add", f"{host_ip}/30", "dev", inside),
                         ("link", "set", inside, "up"), ("link", "set", "lo", "up")):
                _ip("-n", name, *args)
    except BaseException:
        network.delete()
        raise
    LOG.info("test hosts: %s", ", ".join(f"{h.name} {h.address}" for h in network.hosts))
    return network


def set_link(host: Host, up: bool) -> None:
    """Connect (`up`) or cut off the host: its root-side veth goes up or down."""
    _ip("link", "set", host.link, "up" if up else "down")


def remove_stale() -> list[str]:
    """Delete the test hosts of processes that no longer run (a run killed mid-way)."""
    done = _ip("netns", "list", check=False)
    stale = []
    for line in done.stdout.splitlines():
        match = _NAME.match(line.split()[0]) if line.strip() else None
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            # its servers outlived the run that made it: end them, then the namespace
            for pid in _ip("netns", "pids", match.group(0), check=False).stdout.split():
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
            _ip("netns", "del", match.group(0), check=False)
            stale.append(match.group(0))
    return stale
