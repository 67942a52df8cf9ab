"""Behaviour profiles: what each program has been seen to do, and whether that has settled.

A program is an executable file, by (device, inode), in the mount namespace it ran from
(0: the initial one), with its path and, for an interpreter, its script
(context.processes.program_label), in the systemd service it runs in, if any: a payload
bind-mounted over /usr/bin/python3 in a user namespace is another file, so it never
borrows python's profile, and a path alone never names a program (issue 33 #2). Its
profile counts *features*: "KIND VALUE" strings (daemon/detect/news.py makes them from
the kernel's acts: files written, sensitive reads, peers, listening ports, privileged
operations, children, parents).

Settling is judged by the program's own activity, not the clock: the Good-Turing
estimate of the chance that its next event is one never seen (features seen once / all
events) must be at most `max_unseen` after at least `min_events` events. A repetitive
service settles within minutes; an administrator's shell, always doing something new,
may never settle, and its news then stays low.

Each kind of feature (files, reads, peers, listening ports, privileged operations,
exec edges: children and parents) settles on its own as well: a program settled as a whole whose
children are still new one time in twenty (a shell running an administrator's
commands) keeps its new children low while a new file area of the same program is
evidence. A kind the program has never shown at all is settled with the program: its
first connection, first sensitive read, first child is news. A kind shown fewer than
`min_events / 5` times is not settled (a few connections say nothing of the next).

Learning goes on while detecting
(`learn`); what the caller holds back (news part of an incident at medium or above) is
never learnt here.

The profiles persist in the state directory (`save`/`load`): JSON with a format version
and a SHA-256 of the body; a file that does not verify is set aside, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = "sysdream-profiles/1"
MIN_EVENTS = 50         # [profiles] min_events
MAX_UNSEEN = 0.05       # [profiles] max_unseen
MAX_FEATURES = 512      # per program: a program past this is never settled (it sprays)
MAX_PROGRAMS = 20000


def kind_of(feature: str) -> str:
    """The kind of evidence a feature is: files written and removed are one (a temporary
    file made and unlinked is one act of a program, not two agreeing kinds), and so are
    a new child and a new parent ("exec": one exec makes both, at the parent's profile
    and at the child's, and one act must not agree with itself)."""
    k = feature.split(" ", 1)[0]
    return _KINDS.get(k, k)


_KINDS = {"write": "file", "unlink": "file", "child": "exec", "parent": "exec"}


@dataclass(frozen=True)
class ProgramId:
    """Who a program is: the file, the mount namespace it ran from, its label, and the
    systemd service it runs in (python3 in one service and in another are two programs:
    each service's own behaviour settles on its own)."""
    dev: int
    ino: int
    mntns: int          # 0: the initial mount namespace
    label: str          # path (and an interpreter's script); what people read
    foreign: bool = False   # run from a mount outside the initial mount namespace
    unit: str = ""      # the .service it runs in ("" outside one)

    @property
    def key(self) -> str:
        base = f"{self.dev}:{self.ino}:{self.mntns}:{self.label}"
        return f"{base}@{self.unit}" if self.unit else base

    def to_json(self) -> dict:
        return {"dev": self.dev, "ino": self.ino, "mntns": self.mntns, "label": self.label,
                "foreign": self.foreign, "unit": self.unit}


@dataclass
class Profile:
    program: ProgramId
    counts: dict[str, int] = field(default_factory=dict)
    events: int = 0
    news_learnt: int = 0     # features first learnt while detecting (quietly)

    @property
    def singletons(self) -> int:
        return sum(1 for c in self.counts.values() if c == 1)

    def unseen_mass(self) -> float:
        """Good-Turing: the chance the next event is a feature never seen."""
        return 1.0 if not self.events else self.singletons / self.events

    def settled(self, min_events: int = MIN_EVENTS, max_unseen: float = MAX_UNSEEN,
                kind: str | None = None) -> bool:
        """Settled as a whole; with `kind`, that kind of feature settled too."""
        whole = (self.events >= min_events and len(self.counts) < MAX_FEATURES
                 and self.unseen_mass() <= max_unseen)
        if not whole or kind is None:
            return whole
        return kind not in self.unsettled_kinds(min_events, max_unseen)

    def unsettled_kinds(self, min_events: int = MIN_EVENTS,
                        max_unseen: float = MAX_UNSEEN) -> frozenset[str]:
        """The kinds shown but not settled: fewer than min_events / 5 events of the kind,
        or its own Good-Turing unseen mass above `max_unseen`."""
        events: dict[str, int] = {}
        once: dict[str, int] = {}
        for f, c in self.counts.items():
            k = kind_of(f)
            events[k] = events.get(k, 0) + c
            once[k] = once.get(k, 0) + (c == 1)
        least = max(1, min_events // 5)
        return frozenset(k for k, n in events.items()
                         if n < least or once[k] / n > max_unseen)

    def add(self, feature: str) -> bool:
        """Count one event; True when the feature was new to the profile."""
        self.events += 1
        n = self.counts.get(feature)
        if n is None:
            if len(self.counts) >= MAX_FEATURES:
                return True
            self.counts[feature] = 1
            return True
        self.counts[feature] = n + 1
        return False


class Profiles:
    """Every program's profile, bounded (least recently active forgotten first)."""

    def __init__(self, min_events: int = MIN_EVENTS, max_unseen: float = MAX_UNSEEN,
                 max_programs: int = MAX_PROGRAMS):
        self.min_events, self.max_unseen, self.max = min_events, max_unseen, max_programs
        self.profiles: OrderedDict[str, Profile] = OrderedDict()
        self.evicted = 0
        self.expected_per_hour: float | None = None    # HeldOut.per_hour of learning

    def __len__(self) -> int:
        return len(self.profiles)

    def get(self, program: ProgramId) -> Profile | None:
        return self.profiles.get(program.key)

    def profile(self, program: ProgramId) -> Profile:
        p = self.profiles.get(program.key)
        if p is None:
            p = self.profiles[program.key] = Profile(program)
            while len(self.profiles) > self.max:
                self.profiles.popitem(last=False)
                self.evicted += 1
        else:
            self.profiles.move_to_end(program.key)
        return p

    def settled(self, program: ProgramId, feature: str | None = None) -> bool:
        """The program's profile settled (with `feature`: that feature's kind too)."""
        p = self.profiles.get(program.key)
        return p is not None and p.settled(self.min_events, self.max_unseen,
                                           kind_of(feature) if feature else None)

    def knows(self, program: ProgramId, feature: str) -> bool:
        p = self.profiles.get(program.key)
        return p is not None and feature in p.counts

    def learn(self, program: ProgramId, feature: str) -> bool:
        """Count the event in the program's profile; True when it was new."""
        return self.profile(program).add(feature)

    def counts(self) -> dict[str, int]:
        settled = sum(1 for p in self.profiles.values()
                      if p.settled(self.min_events, self.max_unseen))
        return {"programs": len(self.profiles), "settled": settled,
                "evicted": self.evicted}

    # -- the state directory ------------------------------------------------------
    def to_json(self) -> dict:
        return {"expected_per_hour": self.expected_per_hour,
                "programs": [{"program": p.program.to_json(), "events": p.events,
                              "news_learnt": p.news_learnt, "counts": p.counts}
                             for p in self.profiles.values()]}

    def save(self, path: Path) -> None:
        """Atomically: a crash leaves the old file or the new one, never half of one."""
        body = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        doc = json.dumps({"format": FORMAT, "sha256": hashlib.sha256(body.encode()).hexdigest(),
                          "body": body})
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(doc)
        os.replace(tmp, path)

    def load(self, path: Path) -> int:
        """Take the profiles saved at `path`; the number of programs. ValueError naming
        what is wrong for a file of another format, a bad checksum or a bad shape;
        FileNotFoundError when there is none."""
        raw = path.read_text()
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON ({exc.msg})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file")
        body = doc.get("body")
        if not isinstance(body, str) or \
                hashlib.sha256(body.encode()).hexdigest() != doc.get("sha256"):
            raise ValueError(f"{path}: checksum does not match")
        data = json.loads(body)
        out: OrderedDict[str, Profile] = OrderedDict()
        try:
            for e in data["programs"][:self.max]:
                g = e["program"]
                prog = ProgramId(int(g["dev"]), int(g["ino"]), int(g["mntns"]),
                                 str(g["label"]), bool(g["foreign"]), str(g.get("unit", "")))
                counts = {str(k): int(v) for k, v in e["counts"].items()}
                out[prog.key] = Profile(prog, counts, int(e["events"]), int(e["news_learnt"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path}: bad profile entry ({exc})") from None
        rate = data.get("expected_per_hour")
        self.expected_per_hour = float(rate) if isinstance(rate, (int, float)) else None
        self.profiles = out
        return len(out)


@dataclass
class HeldOut:
    """Learning's held-out replay for behaviour: the profiles as they stood three quarters
    into learning judge its last quarter; the news of programs settled then, grouped as
    incidents are (program, session, feature kind), per hour, is what each incident
    level expects of activity like the baseline's."""
    # program -> (settled as a whole, its unsettled kinds, the features it knew)
    snapshot: dict[str, tuple[bool, frozenset, frozenset]] = field(default_factory=dict)
    since_ns: int | None = None     # when the snapshot was taken; None: none (any more)
    incidents: set = field(default_factory=set)
    seconds: float = 0.0

    def take(self, profiles: Profiles, now_ns: int) -> None:
        self.snapshot = {k: (p.settled(profiles.min_events, profiles.max_unseen),
                             p.unsettled_kinds(profiles.min_events, profiles.max_unseen),
                             frozenset(p.counts)) for k, p in profiles.profiles.items()}
        self.since_ns = now_ns

    def judge(self, program: ProgramId, feature: str, session) -> None:
        """`session`: a callable giving the act's lineage root (asked only for news)."""
        if self.since_ns is None:
            return
        settled, unsettled, known = self.snapshot.get(program.key,
                                                      (False, frozenset(), frozenset()))
        kind = kind_of(feature)
        if settled and kind not in unsettled and feature not in known:
            self.incidents.add((program.key, session(), kind))

    def per_hour(self, now_ns: int) -> float | None:
        """Expected false incidents an hour at medium (None before a snapshot)."""
        if self.since_ns is None or now_ns <= self.since_ns:
            return None
        self.seconds = (now_ns - self.since_ns) / 1e9
        return round(len(self.incidents) / (self.seconds / 3600), 4)
