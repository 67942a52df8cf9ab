"""One dataclass configures every network: architecture, sizes, windowing and task."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from . import archs
from .windows import TASKS

CONDITIONS = ("", "head", "decoder")


@dataclass
class NetworkConfig:
    vocab_size: int
    arch: str = archs.DEFAULT   # a name in model/archs.py
    task: str = "predict-next"
    window: int = 16          # p: syscalls per scored window (chosen: docs/model.md)
    stride: int = 16          # s: syscalls between consecutive windows when scoring
    embed_dim: int = 32
    hidden: int = 32          # per direction in the bidirectional encoder
    layers: int = 2           # encoder LSTM layers
    attn_dim: int = 32        # size of m_i in (III.3)
    freeze_embedding: bool = False
    # a token naming the sequence's program heads every window's context (the first
    # position of the source and of the previous source, windows.condition): "head"; and
    # its embedding also feeds DReAM's decoder at every step: "decoder"; "": none
    condition: str = ""

    def build(self):
        """A freshly initialised network (model/network.py's Network) of this
        configuration; torch's RNG draws its weights."""
        return archs.get(self.arch).load()(self)

    def validate(self) -> NetworkConfig:
        arch = archs.get(self.arch)
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if arch.next_token and self.task != "predict-next":
            raise ValueError(f"arch {self.arch} is a next-token model: use task predict-next")
        for name in ("vocab_size", "window", "stride", "embed_dim", "hidden", "layers",
                     "attn_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer")
        if self.stride > self.window:
            raise ValueError("stride must not exceed the window (syscalls would go unscored)")
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {', '.join(map(repr, CONDITIONS))}")
        if self.condition and self.task != "predict-next":
            raise ValueError("a program condition heads the context: use task predict-next")
        if self.condition == "decoder" and self.arch != "dream":
            raise ValueError("condition \"decoder\" feeds DReAM's decoder: use arch dream")
        return self

    def to_json(self) -> dict:
        out = asdict(self)
        if not self.condition:      # bundles without one read as before
            del out["condition"]
        return out

    @classmethod
    def from_json(cls, data: dict) -> NetworkConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown network settings {sorted(unknown)}")
        return cls(**data).validate()


@dataclass
class TrainSettings:
    """How to train (torch-free, so the CLI can build its parser without importing torch)."""
    epochs: int = 15
    patience: int = 3              # epochs without validation improvement before stopping
    batch: int = 128
    lr: float = 3e-3
    train_stride: int = 8          # denser than scoring: more (overlapping) training windows
    max_windows: int = 60_000      # per epoch, sampled; bounds the time of one epoch
    seed: int = 0
    threads: int = 2
