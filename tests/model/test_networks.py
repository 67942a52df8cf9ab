import subprocess
import sys

import numpy as np
import pytest
import torch
from synthetic_corpus import tiny_config

from sysdream.model import dream
from sysdream.model.archs import ARCHS
from sysdream.model.config import NetworkConfig
from sysdream.model.dream import DReAM
from sysdream.model.network import Network
from sysdream.model.scoring import score
from sysdream.model.vocab import PAD
from sysdream.model.windows import cut_many


def _batch(p=8, V=12, B=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(2, V, (B, p), generator=g)
    prev = torch.randint(2, V, (B, p), generator=g)
    tgt = torch.randint(2, V, (B, p), generator=g)
    return src, prev, tgt


def test_dream_attention_follows_the_equations():
    torch.manual_seed(0)
    net = DReAM(tiny_config(vocab_size=12)).eval()
    src, _, _ = _batch()
    src[0, :3] = PAD  # left padding of a short context
    with torch.no_grad():
        rev = torch.flip(src, [1])
        h, _ = net.encoder(net.embed(rev))
        m = torch.tanh(net.attention.W_i(h))                       # (III.3)
        a = net.attention.W_q(m).squeeze(-1)                       # (III.4)
        a = a.masked_fill(rev == PAD, float("-inf"))
        s = torch.softmax(a, 1)                                    # (III.5)
        Z = (s.unsqueeze(-1) * h).sum(1)                           # (III.6)
        Z2, s2, _ = net.encode(src)
    assert torch.allclose(Z, Z2, atol=1e-6)
    assert torch.allclose(torch.flip(s, [1]), s2, atol=1e-6)
    assert torch.allclose(s2.sum(1), torch.ones(5))
    assert (s2[0, :3] == 0).all()  # padding gets no attention


def test_previous_window_context_reaches_the_decoder():
    torch.manual_seed(0)
    net = DReAM(tiny_config(vocab_size=12)).eval()
    src, prev, tgt = _batch()
    with torch.no_grad():
        a, _ = net(src, prev, tgt)
        b, _ = net(src, torch.flip(prev, [1]), tgt)
    assert not torch.allclose(a, b)  # Z_{t-1} feeds (III.7)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_learns_and_its_attention_is_causal(arch):
    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=12, arch=arch)
    net = cfg.build()
    src, prev, tgt = _batch()
    logits, attn = net(src, prev, tgt)
    assert logits.shape == (5, 8, 12)
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt)
    loss.backward()
    assert net.out.weight.grad.abs().sum() > 0 and net.embed.weight.grad.abs().sum() > 0
    if attn.shape[-1]:
        assert torch.allclose(attn.sum(-1), torch.ones(attn.shape[:-1]), atol=1e-5)
        if arch != "dream" and attn.shape[1] > 1:
            # row j (predicting target j) may not look past the input it has read
            K = attn.shape[-1]
            offset = K - attn.shape[1]
            for j in range(attn.shape[1]):
                assert torch.all(attn[:, j, offset + j + 1:] == 0)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_is_what_the_registry_says(arch):
    spec = ARCHS[arch]
    torch.manual_seed(0)
    net = tiny_config(vocab_size=12, arch=arch).build()
    assert isinstance(net, Network) and net.cfg.arch == arch
    rng = np.random.default_rng(0)
    w = cut_many([rng.integers(2, 12, 30)], 8, 8, "predict-next")
    s = score(net, w, batch=2, features=True)
    assert s.score.shape == (len(w),) and np.isfinite(s.score).all()
    rows, K = s.attention.shape[1:]
    assert (rows, K > 0) == {"window": (1, True), "positions": (8, True),
                             "": (8, False)}[spec.attends]
    assert s.z.shape == (len(w), 16 if arch == "dream" else 0)
    if spec.next_token:
        with pytest.raises(ValueError, match="predict-next"):
            tiny_config(vocab_size=12, arch=arch, task="reconstruct")
    else:
        tiny_config(vocab_size=12, arch=arch, task="reconstruct").build()


def test_the_registry_needs_no_torch():
    out = subprocess.run([sys.executable, "-c", "import sys, sysdream.model.archs, "
                          "sysdream.model.config; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    with pytest.raises(ValueError, match="arch must be one of dream, em"):
        NetworkConfig(vocab_size=5, arch="gpt").validate()


def test_event_models_refuse_reconstruction():
    with pytest.raises(ValueError, match="predict-next"):
        NetworkConfig(vocab_size=5, arch="em", task="reconstruct").validate()


@pytest.mark.parametrize("arch", ["dream", "semantic2"])
def test_batched_scoring_matches_one_window_at_a_time(arch):
    torch.manual_seed(0)
    net = tiny_config(vocab_size=12, arch=arch).build().eval()
    rng = np.random.default_rng(1)
    w = cut_many([rng.integers(2, 12, 50), rng.integers(2, 12, 9)], 8, 8, "predict-next")
    full = score(net, w, batch=4)  # batch edges fall inside a sequence
    if arch == "dream":  # scoring reused earlier rows' Z for these; forward encodes prev
        assert dream.carried(w.take(slice(0, 4))).sum() == 3
    for i in range(len(w)):
        with torch.no_grad():
            logits, _ = net(*(torch.from_numpy(a[i:i + 1]) for a in (w.src, w.prev, w.tgt)))
        nll = torch.nn.functional.cross_entropy(logits[0], torch.from_numpy(w.tgt[i]),
                                                reduction="none").numpy()
        m = w.mask[i]
        assert full.score[i] == pytest.approx(nll[m].mean(), rel=1e-4, abs=1e-5)
