"""The trained network as an ONNX graph, scored by ONNX Runtime without torch.

Training exports the network into the bundle (model.onnx, covered by the manifest and so by
the signature); a detecting daemon then scores with ONNX Runtime and never imports torch
(the largest share of its memory). Torch stays for training, for bundles without the
export, and for the fleet server's GPU worker.

The graph takes one batch of windows as `scoring.score` does and gives what it computes:

    src [B, p]      the sources (int64 token ids)
    extra [M, p]    the `prev` rows whose Z_{t-1} is not the previous row's Z (DReAM)
    zidx [B]        each row's Z_{t-1}: a row of the encoder's output over [src; extra]
    prev [B, p]     the previous sources (the other architectures)
    tgt [B, p]      the targets
    mask [B, p]     float: target position holds a real token
  ->
    score [B]       mean NLL over the real positions
    logp [B, p, V]  log-probabilities (for explanations)
    attention [B, rows, K]
    z [B, F]        DReAM's Z (the transfer classifier's features)

The export is checked at training time: the graph's scores must equal torch's within
`TOLERANCE` relative on seeded windows, or the bundle is written without it (and loads
with torch, as before).
"""

from __future__ import annotations

import io
import os
import warnings
from typing import TYPE_CHECKING

import numpy as np

from .windows import Windows, carried

if TYPE_CHECKING:
    from .config import NetworkConfig
    from .scoring import WindowScores

OPSET = 17
TOLERANCE = 1e-4        # relative, on window scores
FILE = "model.onnx"


class ExportError(Exception):
    """The network could not be exported or its graph does not score as torch does."""


def _inputs(cfg: NetworkConfig, w: Windows) -> dict[str, np.ndarray]:
    """The graph's inputs for one batch of windows."""
    mask = w.mask.astype(np.float32)
    if cfg.arch == "dream":
        c = carried(w)
        extra = np.ascontiguousarray(w.prev[~c], np.int64)
        zidx = np.arange(len(w), dtype=np.int64) - 1
        zidx[~c] = len(w) + np.arange(len(extra))
        return {"src": np.ascontiguousarray(w.src, np.int64), "extra": extra, "zidx": zidx,
                "tgt": np.ascontiguousarray(w.tgt, np.int64), "mask": mask}
    return {"src": np.ascontiguousarray(w.src, np.int64),
            "prev": np.ascontiguousarray(w.prev, np.int64),
            "tgt": np.ascontiguousarray(w.tgt, np.int64), "mask": mask}


def _wrapper(net):
    """A torch module whose forward is the graph above, around a trained network."""
    import torch
    from torch import nn

    def head(logits, tgt, mask):
        logp = torch.log_softmax(logits, dim=2)
        nll = -logp.gather(2, tgt.unsqueeze(2)).squeeze(2) * mask
        return nll.sum(1) / mask.sum(1).clamp(min=1), logp

    class DreamGraph(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, src, extra, zidx, tgt, mask):
            n = self.net
            B = src.shape[0]
            Z_all, s_all, f_all = n.encode(torch.cat([src, extra]))
            Z, s, final = Z_all[:B], s_all[:B], f_all[:B]
            Z_prev = Z_all.index_select(0, zidx)
            dec_in = torch.cat([n.start_tokens(src), tgt[:, :-1]], 1)
            score, logp = head(n.decode(Z, Z_prev, final, dec_in, src), tgt, mask)
            return score, logp, s.unsqueeze(1), Z

    class WindowGraph(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, src, prev, tgt, mask):
            logits, attention = self.net(src, prev, tgt)
            score, logp = head(logits, tgt, mask)
            return score, logp, attention

    return DreamGraph() if net.cfg.arch == "dream" else WindowGraph()


def sample(cfg: NetworkConfig, n: int = 96, seed: int = 0) -> Windows:
    """Seeded windows of this model's geometry: whole threads (carried Z), short ones
    (padding) and a conditioned head where the model has one."""
    from .windows import condition, cut_many

    rng = np.random.default_rng(seed)
    lengths = [cfg.window * 5 + 3, cfg.window * 2, max(1, cfg.window // 2), 1] + \
        [cfg.window * 6] * (n // 6)
    seqs = [rng.integers(1, cfg.vocab_size, k) for k in lengths]
    w = cut_many(seqs, cfg.window, cfg.stride, cfg.task)
    if cfg.condition:
        w = condition(w, rng.integers(2, cfg.vocab_size, len(w)))
    return w


def export(net) -> bytes:
    """The ONNX graph of a trained torch network (on the CPU, in eval mode), checked
    against torch on seeded windows; ExportError when it cannot be made or differs."""
    import torch

    from .scoring import score

    cfg = net.cfg
    net = net.cpu().eval()
    w = sample(cfg)
    feeds = _inputs(cfg, w)
    names = list(feeds)
    outputs = ["score", "logp", "attention"] + (["z"] if cfg.arch == "dream" else [])
    batch_axes = {"extra": {0: "M"}, "zidx": {0: "B"}}
    axes = {k: batch_axes.get(k, {0: "B"}) for k in names}
    axes.update({k: {0: "B"} for k in outputs})
    buf = io.BytesIO()
    try:
        # the exporter warns of LSTMs at other batch sizes: every size is checked below
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_wrapper(net), tuple(torch.from_numpy(feeds[k]) for k in names),
                              buf, input_names=names, output_names=outputs,
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed: {str(exc).splitlines()[0][:200]}") \
            from None
    graph = buf.getvalue()
    try:
        got = OnnxNetwork(cfg, graph, threads=1).score(w, 40, detail=False).score
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot run the export: {str(exc)[:200]}") from None
    want = score(net, w, 40, detail=False).score
    worst = relative_difference(got, want)
    if not worst <= TOLERANCE:
        raise ExportError(f"the export scores differ from torch's by {worst:.2e} relative "
                          f"(over {TOLERANCE:g})")
    return graph


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """The largest |a - b| / max(|b|, 1e-6) (0 for empty arrays)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    if not a.size:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-6)))


def available() -> bool:
    """Whether ONNX Runtime can be imported here."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxNetwork:
    """A trained network run by ONNX Runtime: what `scoring.score` needs of a network,
    without torch. Threads pinned: `threads` inside an operator, one across operators,
    and no spinning while idle (a detecting daemon waits more than it scores)."""

    runtime = "onnxruntime"

    def __init__(self, cfg: NetworkConfig, graph: bytes, threads: int = 1):
        import onnxruntime as ort

        self.cfg = cfg
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning",
                                      os.environ.get("SYSDREAM_ORT_SPIN", "0"))
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(graph, sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.inputs = {i.name for i in self.session.get_inputs()}  # the export drops unused

    def eval(self) -> OnnxNetwork:
        return self

    def to(self, device) -> OnnxNetwork:
        """The CPU only: a GPU worker loads the bundle with runtime="torch"."""
        if str(device) != "cpu":
            raise ValueError(f"a network run by ONNX Runtime stays on the CPU, not {device}; "
                             "load the bundle with runtime=\"torch\"")
        return self

    def score(self, w: Windows, batch: int = 1024, detail: bool = True,
              features: bool = False) -> WindowScores:
        """As scoring.score (rows in batches of `batch`, Z reused within a batch)."""
        from .scoring import WindowScores

        n, p = w.tgt.shape if len(w) else (0, self.cfg.window)
        out = WindowScores(np.zeros(n, np.float32), np.zeros((n, p), np.float32),
                           np.zeros((n, p), np.int64), np.zeros((n, p), np.float32),
                           np.zeros((n, p), np.float32), np.zeros((n, p, 0), np.float32))
        want = ["score"] + (["logp", "attention"] if detail else []) + \
            (["z"] if features and "z" in self.outputs else [])
        attn_parts, z_parts = [], []
        for lo in range(0, n, batch):
            hi = min(n, lo + batch)
            part = w.take(slice(lo, hi))
            feeds = {k: v for k, v in _inputs(self.cfg, part).items() if k in self.inputs}
            got = dict(zip(want, self.session.run(want, feeds), strict=True))
            out.score[lo:hi] = got["score"]
            if detail:
                logp = got["logp"]
                lp = np.take_along_axis(logp, part.tgt[:, :, None], 2)[:, :, 0]
                nll = -lp * part.mask
                out.nll[lo:hi] = nll
                best = logp.argmax(2)
                out.expected[lo:hi] = best
                out.expected_p[lo:hi] = np.exp(np.take_along_axis(logp, best[:, :, None],
                                                                  2)[:, :, 0])
                out.observed_p[lo:hi] = np.exp(-nll)
                attn_parts.append(got["attention"])
            if features and "z" in got:
                z_parts.append(got["z"])
        if detail and attn_parts:
            out.attention = np.concatenate(attn_parts)
        if features:
            out.z = np.concatenate(z_parts) if z_parts else np.zeros((n, 0), np.float32)
        return out
