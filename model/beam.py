"""Beam search for `Kosmos25.generate(num_beams=K)`: K continuations of each prompt are kept, ranked by the
sum of their tokens' log-probabilities; a continuation that writes the end token is set aside as a finished
hypothesis, scored by that sum over its length to the power `length_penalty` (Hugging Face's convention: 1.0
is the mean log-probability, 0.0 the plain sum). An item is done when it holds K finished hypotheses and the
best live beam, scored at its present length, does not beat the worst of them (exact with `length_penalty=0`,
where sums only fall; otherwise Hugging Face's default heuristic); the best finished hypothesis is returned (at
`max_new_tokens`, the live beams count as finished).

The grammar (`logits_processor`) sees each beam's own tokens, so layout output stays well formed in every beam.
The KV cache is filled once per prompt and copied to the K beams, then reordered each step as beams are chosen.
"""

from __future__ import annotations

import torch

from model.decoder import KVCache


class _Hypotheses:
    """The best `k` finished continuations of one item, as (score, tokens)."""

    def __init__(self, k: int, length_penalty: float):
        self.k, self.length_penalty, self.kept = k, length_penalty, []

    def add(self, tokens: list[int], logprob: float) -> None:
        self.kept.append((logprob / max(len(tokens), 1) ** self.length_penalty, tokens))
        self.kept.sort(key=lambda h: h[0], reverse=True)
        del self.kept[self.k :]

    def done(self, best_live: float, length: int) -> bool:
        """Full, and the best live beam (its sum so far, `length` tokens long), scored at that length, does not
        beat the worst kept."""
        if len(self.kept) < self.k:
            return False
        return best_live / max(length, 1) ** self.length_penalty <= self.kept[-1][0]


def reorder(cache: KVCache, index: torch.Tensor) -> None:
    """Beam `i` of the next step continues cache row `index[i]`."""
    for layer in range(len(cache.k)):
        cache.k[layer] = cache.k[layer].index_select(0, index)
        cache.v[layer] = cache.v[layer].index_select(0, index)


@torch.no_grad()
def beam_search(
    model,
    image_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    image_embeds_position_mask: torch.Tensor,
    num_beams: int,
    max_new_tokens: int,
    eos: int,
    pad: int,
    logits_processor=None,
    length_penalty: float = 1.0,
    with_scores: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[float]]:
    """`model` is a `Kosmos25`; returns the new tokens `(B, <= max_new_tokens)`, the end token included and
    pad after it, as greedy generation does (`with_scores`: and each row's score as ranked)."""
    b, k = input_ids.shape[0], num_beams
    decoder = model.text_model.model
    cache, hidden = model.prefill(image_embeds, input_ids, image_embeds_position_mask, max_new_tokens)
    device = input_ids.device
    spread = torch.arange(b, device=device).repeat_interleave(k)
    reorder(cache, spread)
    hidden = hidden[spread]
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # the K beams start as one
    seqs = input_ids.new_zeros((b * k, 0))
    finished = [_Hypotheses(k, length_penalty) for _ in range(b)]
    done = [False] * b
    for step in range(max_new_tokens):
        logits = model.text_model.lm_head(hidden).float()
        if logits_processor is not None:
            logits = logits_processor(seqs, logits)
        logp = torch.log_softmax(logits, dim=-1)
        vocab = logp.shape[-1]
        cand = (scores.view(-1, 1) + logp).view(b, k * vocab)
        top, where = cand.topk(2 * k, dim=1)
        next_scores = torch.full((b, k), float("-inf"), device=device)
        next_tokens = torch.full((b, k), pad, dtype=torch.long, device=device)
        next_rows = (torch.arange(b, device=device) * k).repeat_interleave(k).view(b, k)
        for i in range(b):
            if done[i]:
                continue
            filled = 0
            for rank, (score, flat) in enumerate(zip(top[i].tolist(), where[i].tolist(), strict=True)):
                if score == float("-inf"):
                    break
                beam, token = divmod(flat, vocab)
                if token == eos:
                    if rank < k:  # an end among the K best: a finished hypothesis
                        finished[i].add([*seqs[i * k + beam].tolist(), token], score)
                    continue
                next_scores[i, filled], next_tokens[i, filled] = score, token
                next_rows[i, filled] = i * k + beam
                filled += 1
                if filled == k:
                    break
            best_live = float(next_scores[i, 0])
            done[i] = filled == 0 or finished[i].done(best_live, step + 1)
        if all(done):
            break
        rows = next_rows.view(-1)
        seqs = torch.cat([seqs[rows], next_tokens.view(-1, 1)], dim=1)
        scores = next_scores
        reorder(cache, rows)
        hidden = decoder(next_tokens.view(-1, 1), cache=cache)[:, -1]
    best, ranked = [], []
    for i in range(b):
        if not done[i]:  # cut at max_new_tokens: the live beams compete with the finished ones
            for j in range(k):
                if scores[i, j] > float("-inf"):
                    finished[i].add(seqs[i * k + j].tolist(), float(scores[i, j]))
        score, tokens = finished[i].kept[0] if finished[i].kept else (float("-inf"), [])
        best.append(tokens)
        ranked.append(score)
    width = max((len(s) for s in best), default=0)
    out = input_ids.new_full((b, width), pad)
    for i, s in enumerate(best):
        out[i, : len(s)] = torch.tensor(s, dtype=out.dtype)
    return (out, ranked) if with_scores else out
