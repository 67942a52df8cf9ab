"""The server's fleet learning: baselines in, one model per role out.

An agent with no model records its baseline as `sysdream run` does and sends it here in
parts (protocol `baseline`); the parts are written under [server] baselines/ROLE/AGENT
.sdtrace (AGENT: the name of the agent's key, so a host replaces only its own) and the
whole is checked against the sha256 the agent sent. Once the newest baseline of a role
is `train_after_s` old and the role has baselines of `min_hosts` agents, `sysdream train`
runs in a child (nice, [learning] settings, --max-share host_share) on all of them, into
models/.ROLE.new; a model that trained replaces models/ROLE in one swap and is announced
on the PUB socket (kind "model", with the sha256 of its manifest, which lists every
file's). Agents fetch it (protocol `fetch` -> `bundle`), check it and swap it in.

One stolen agent key must not poison the fleet: a key is bound to one role by where it
lies in the agents' folder (keys.py), and its agent may upload for and fetch only that
role's files; a role trains on at least `min_hosts` agents (2 by default), no more than
`max_trainings` roles train at once, and there are at most MAX_ROLES roles.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from sysdream.model.bundle import install

from ..service import logs
from ..service.runtime import trainer_child
from . import protocol as wire

MAX_ROLES = 256     # roles with baselines; a key is bound to one, so this is a backstop


# the server's lines (its roles' and the broker's): `sysdream server: ...` on stderr, or
# journald with their priority and LOGGER=sysdream.server (service/logs.py)
LOG = logging.getLogger("sysdream.server")


def log(msg: str, level: int = logging.INFO) -> None:
    logs.log(msg, level, LOG)


def warn(msg: str) -> None:
    log(msg, logging.WARNING)


def manifest_sha(bundle: Path) -> str:
    return hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()


class Roles:
    def __init__(self, cfg):
        s = cfg.server
        self.cfg = cfg
        self.baselines, self.models = Path(s.baselines), Path(s.models)
        self.train_after, self.min_hosts, self.share = s.train_after_s, s.min_hosts, \
            s.host_share
        self.partial: dict[tuple[str, str], dict] = {}     # (role, agent) -> upload
        self.due: dict[str, float] = {}                     # role -> when to train
        self.training: dict[str, subprocess.Popen] = {}
        self.trained = self.failed = 0
        self.baselines_stored = 0
        self.bound: dict[str, str] = {}     # agent key name -> its role (keys.allow_list)
        self.max_trainings = s.max_trainings

    def check(self, agent: str, role: str) -> None:
        """ProtocolError "refused" unless `agent`'s key is bound to `role`."""
        mine = self.bound.get(agent)
        if mine != role:
            raise wire.ProtocolError("refused", f"agent {agent} is not bound to role {role} "
                                     + (f"(its key is in role {mine}'s folder)" if mine else
                                        "(its key is in no role's folder of [server] agents)"))
        if role not in self.due and not (self.baselines / role).is_dir() and \
                sum(1 for p in self.baselines.glob("*") if p.is_dir()) >= MAX_ROLES:
            raise wire.ProtocolError("refused", f"already {MAX_ROLES} roles")

    # -- baselines in -----------------------------------------------------------------
    def store(self, agent: str, m: wire.Message) -> tuple[bool, str]:
        """Take one part; (complete, "") or raise ProtocolError naming what is wrong."""
        h = m.header
        role, key = h["role"], (h["role"], agent)
        up = self.partial.get(key)
        if h["part"] == 0:
            folder = self.baselines / role
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{agent}.sdtrace.part"
            up = self.partial[key] = {"parts": h["parts"], "next": 0, "path": tmp,
                                      "sha": hashlib.sha256(), "want": h["sha256"],
                                      "file": tmp.open("wb")}
        if up is None or h["part"] != up["next"] or h["parts"] != up["parts"]:
            raise wire.ProtocolError("order", f"baseline part {h['part']} of {h['parts']} "
                                     "out of order; send it again from part 0")
        data = m.arrays["data"].tobytes()
        up["file"].write(data)
        up["sha"].update(data)
        up["next"] += 1
        if up["next"] < up["parts"]:
            return False, ""
        up["file"].close()
        del self.partial[key]
        if up["sha"].hexdigest() != up["want"]:
            up["path"].unlink(missing_ok=True)
            raise wire.ProtocolError("malformed", "the baseline's sha256 differs from the "
                                     "one sent: send it again")
        os.replace(up["path"], self.baselines / role / f"{agent}.sdtrace")
        self.baselines_stored += 1
        self.due[role] = time.monotonic() + self.train_after
        log(f"baseline of {agent} for role {role} stored "
            f"({(self.baselines / role / f'{agent}.sdtrace').stat().st_size} bytes)")
        return True, ""

    # -- training ---------------------------------------------------------------------
    def tick(self, publish) -> None:
        """Start what is due; finish what trained (publish(role, model_id, sha))."""
        now = time.monotonic()
        for role, when in list(self.due.items()):
            if now < when or role in self.training or len(self.training) >= \
                    self.max_trainings:
                continue
            hosts = sorted((self.baselines / role).glob("*.sdtrace"))
            if len(hosts) < self.min_hosts:
                continue
            del self.due[role]
            self._train(role, hosts)
        for role, proc in list(self.training.items()):
            if proc.poll() is None:
                continue
            del self.training[role]
            new, final = self.models / f".{role}.new", self.models / role
            if proc.returncode != 0:
                self.failed += 1
                warn(f"training the model of role {role} failed (exit {proc.returncode}); "
                    "it is tried again when a baseline arrives")
                shutil.rmtree(new, ignore_errors=True)
                continue
            install(new, final)
            self.trained += 1
            mid = json.loads((final / "manifest.json").read_text())["model_id"]
            log(f"role {role}: model {mid} trained and published")
            publish(role, mid, manifest_sha(final))

    def _train(self, role: str, hosts: list[Path]) -> None:
        from ..training.command import train_command
        L = self.cfg.learning
        new = self.models / f".{role}.new"
        shutil.rmtree(new, ignore_errors=True)
        cmd = train_command(self.cfg, hosts, new) + ["--max-share", str(self.share)]
        nice = L.nice
        log(f"role {role}: training on the baselines of {len(hosts)} agents "
            f"({', '.join(p.stem for p in hosts)})")
        self.training[role] = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            env={**os.environ, "OMP_NUM_THREADS": str(L.threads)},
            preexec_fn=trainer_child(nice))

    # -- models out -------------------------------------------------------------------
    def bundle(self, role: str, have: str) -> tuple[str, str, dict[str, bytes]]:
        """(model id, manifest sha256, files) of the role's model; ProtocolError
        no-model or current."""
        path = self.models / role
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, ValueError):
            raise wire.ProtocolError("no-model", f"role {role} has no model yet") from None
        mid = manifest.get("model_id", "")
        if mid == have:
            raise wire.ProtocolError("current", f"model {mid} is the role's model")
        files = {p.name: p.read_bytes() for p in sorted(path.iterdir())
                 if p.is_file() and not p.name.startswith(".")}
        return mid, manifest_sha(path), files

    def published(self) -> list[tuple[str, str, str]]:
        """(role, model id, sha) of every role's model (announced again on SIGHUP)."""
        out = []
        for m in sorted(self.models.glob("*/manifest.json")):
            if m.parent.name.startswith("."):
                continue
            try:
                out.append((m.parent.name, json.loads(m.read_text())["model_id"],
                            manifest_sha(m.parent)))
            except (OSError, ValueError, KeyError):
                continue
        return out

    def close(self) -> None:
        for proc in self.training.values():
            proc.kill()
        for up in self.partial.values():
            up["file"].close()
            up["path"].unlink(missing_ok=True)
