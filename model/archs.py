"""The registry of network architectures: every name `--arch` and `[learning] arch` accept,
what each one is, and the class that implements it.

Torch-free: the CLI builds its parser and the daemon checks its configuration from this
table without importing torch; a class is imported when a network is built. Adding an
architecture is a class implementing model/network.py's `Network` and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module

DEFAULT = "dream"


@dataclass(frozen=True)
class Arch:
    name: str
    summary: str        # one line, for the CLI's help
    impl: str           # "module:Class", the module in sysdream.model, imported on first use
    next_token: bool    # predicts the window after its context only, never reconstructs
    attends: str        # "window": one row of weights over the source (DReAM's s);
    #                     "positions": a row per target position over the inputs read;
    #                     "": no attention weights

    def load(self) -> type:
        module, cls = self.impl.split(":")
        return getattr(import_module(f"{__package__}.{module}"), cls)


ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("dream", "the DReAM encoder-decoder of Ezeme et al.", "dream:DReAM", False, "window"),
    # the next-token models of Brown et al. (model/attention.py)
    Arch("em", "an LSTM language model", "attention:LSTMLanguageModel", True, ""),
    Arch("bem", "forward and backward LSTMs around each position",
         "attention:BidirectionalLM", True, ""),
    Arch("fixed", "attention with one learned query", "attention:FixedAttentionLM", True,
         "positions"),
    Arch("syntax", "attention with a learned query per position",
         "attention:SyntaxAttentionLM", True, "positions"),
    Arch("semantic1", "attention queried by the LSTM state",
         "attention:Semantic1AttentionLM", True, "positions"),
    Arch("semantic2", "semantic1, output from the state and the attention",
         "attention:Semantic2AttentionLM", True, "positions"),
    Arch("tiered", "an LSTM over the thread's windows conditions the target's",
         "attention:TieredLM", True, ""),
    Arch("tiered-attention", "tiered, with semantic2 attention",
         "attention:TieredAttentionLM", True, "positions"),
)}


def get(name: str) -> Arch:
    try:
        return ARCHS[name]
    except (KeyError, TypeError):
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, not {name!r}") from None


def help_text() -> str:
    """The architectures, one clause each, as `--arch` lists them."""
    return "; ".join(a.name + (" (default)" if a.name == DEFAULT else "") + f": {a.summary}"
                     for a in ARCHS.values())
