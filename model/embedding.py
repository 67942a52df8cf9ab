"""word2vec embeddings of syscall names (gensim), aligned to a Vocabulary's ids."""

from __future__ import annotations

import zlib

import numpy as np

from .vocab import Vocabulary


def _stable_hash(text: str) -> int:
    # gensim seeds each word's initial vector from hash(word + seed); Python's str hash
    # changes per process, which would make training irreproducible.
    return zlib.crc32(text.encode())


def train_word2vec(sequences: list[np.ndarray], vocab: Vocabulary, dim: int, seed: int,
                   window: int = 5, epochs: int = 5) -> np.ndarray:
    """A [len(vocab), dim] float32 matrix: row i is the skip-gram vector of vocab name i.
    Padding is the zero vector; unknown is the mean of the known vectors."""
    from gensim.models import Word2Vec

    sentences = [s.tolist() for s in sequences if len(s)]
    # One worker: gensim is only reproducible single-threaded. ADFA-LD's 300k syscalls
    # take about a second this way.
    w2v = Word2Vec(sentences=sentences, vector_size=dim, window=window, min_count=1, sg=1,
                   workers=1, seed=seed, epochs=epochs, hashfxn=_stable_hash)
    matrix = np.zeros((len(vocab), dim), np.float32)
    known = []
    for i, name in enumerate(vocab.names):
        if name in w2v.wv.key_to_index:
            matrix[i] = w2v.wv[name]
            known.append(i)
    if known:
        matrix[1] = matrix[known].mean(axis=0)
    return matrix
