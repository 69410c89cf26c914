"""BLEU: the book's sentence-level BLEU(k) (d2l §10.7.6) and a corpus BLEU (plain Python).

:func:`bleu` is d2l's formula: a brevity penalty ``exp(min(0, 1 - len_label / len_pred))``
times the n-gram precisions ``p_n ** (1 / 2 ** n)`` for ``n = 1..k``.
:func:`corpus_bleu` is Papineni et al.'s corpus BLEU-4 (clipped n-gram counts summed over the
corpus, geometric mean, brevity penalty), on whitespace tokens, scaled 0-100 as sacreBLEU
reports it; training uses torchmetrics' ``SacreBLEUScore``, and the tests check both agree.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def bleu(pred_seq: str, label_seq: str, k: int = 2) -> float:
    """d2l's BLEU(k) of one predicted sentence against one reference (space-separated)."""
    pred_tokens, label_tokens = pred_seq.split(), label_seq.split()
    len_pred, len_label = len(pred_tokens), len(label_tokens)
    if len_pred == 0:
        return 0.0
    score = math.exp(min(0.0, 1 - len_label / len_pred))
    for n in range(1, min(k, len_pred) + 1):
        label_subs = Counter(tuple(label_tokens[i:i + n]) for i in range(len_label - n + 1))
        num_matches = 0
        for i in range(len_pred - n + 1):
            gram = tuple(pred_tokens[i:i + n])
            if label_subs[gram] > 0:
                num_matches += 1
                label_subs[gram] -= 1
        score *= math.pow(num_matches / (len_pred - n + 1), math.pow(0.5, n))
    return score


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str],
                max_n: int = 4) -> float:
    """Corpus BLEU (0-100) of hypotheses against one reference each, whitespace tokens."""
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = hyp.split(), ref.split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, max_n + 1):
            hc, rc = _ngrams(h, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100.0 * bp * math.exp(log_p)
