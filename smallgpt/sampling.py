"""
How the next token is drawn from a model's logits, for model.py's generate_stream (sample.py, the harness): the
temperature, top-k, top-p and min-p, and penalties against a sample that loops, over the tokens the model sees.

- sample_next(logits, temperature, top_k, top_p, min_p): one token per row, drawn from next_token_probs (in
  float32 whatever the model's dtype, so that no setting turns into NaN).
- Penalties: the count of each token in each row's context, kept up to date as tokens are drawn, and the logits
  penalised by them: repetition_penalty as Hugging Face's generate (a seen token's logit divided by it where
  positive, multiplied where negative), frequency_penalty and presence_penalty as OpenAI's API (the count times
  the one, and the other once, taken off a seen token's logit).
- ready_to_generate(model, device, dtype, compile): a model laid out and switched as generation runs fastest.
- whole_texts(token_ids, decode): the text of tokens as they are generated, each character once it is whole.
- repeated_shares(texts, token_lists): how much samples repeat themselves: the share of their lines (of 20 characters or
  more) that repeat an earlier line of the same sample, and the share of their 4-grams of tokens seen before in it.
"""

import torch
import torch.nn.functional as F

FLOAT32_MAX = torch.finfo(torch.float32).max


class Penalties:
    """Each row's token counts over its context (B, vocab_size), and the logits penalised by them."""

    def __init__(self, repetition=1.0, frequency=0.0, presence=0.0):
        # settings beyond float32's range would be inf in the logits' arithmetic, and an unseen token's 0 * inf NaN
        self.repetition, self.frequency, self.presence = (max(-FLOAT32_MAX, min(value, FLOAT32_MAX))
                                                          for value in (repetition, frequency, presence))
        self.counts = None

    def __bool__(self):  # off: sampling is exactly as without them
        return self.repetition != 1.0 or self.frequency != 0.0 or self.presence != 0.0

    def restart(self, context, vocab_size):
        """Count the tokens of context (B, T) afresh: the model sees these."""
        self.counts = torch.zeros(context.size(0), vocab_size, device=context.device)
        self.add(context)

    def add(self, tokens):
        """Count tokens (B, T) too."""
        self.counts.scatter_add_(1, tokens, torch.ones_like(tokens, dtype=self.counts.dtype))

    def __call__(self, logits):
        """logits (B, V) with every seen token penalised."""
        seen = self.counts[:, :logits.size(-1)]
        logits = logits.float()
        if self.repetition != 1.0:  # only what is set: this runs for every token drawn
            penalised = torch.where(logits > 0, logits / self.repetition, logits * self.repetition)
            logits = torch.where(seen > 0, penalised, logits)
        if self.frequency:
            logits = logits - seen * self.frequency
        if self.presence:
            logits = logits - (seen > 0) * self.presence
        # a penalty can still push a logit past float32's range: kept finite, so that sampling never meets inf - inf
        return logits.clamp(-FLOAT32_MAX, FLOAT32_MAX)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, min_p=0.0):
    """Draw one token per row from logits (B, vocab_size): temperature, then top-k, top-p (nucleus) and min-p."""
    probs, candidates = next_token_probs(logits, temperature, top_k, top_p, min_p)
    # The column whose probability over an exponential random number is largest is a draw from probs (the
    # exponential race, which torch.multinomial uses inside too, without its checks that cost more than the draw)
    column = (probs / torch.empty_like(probs).exponential_()).argmax(dim=-1, keepdim=True)  # (B, 1)
    return column if candidates is None else candidates.gather(-1, column)


def next_token_probs(logits, temperature=1.0, top_k=None, top_p=None, min_p=0.0):
    """
    (probs, candidates): the distribution that sample_next draws from, over the columns of logits (B, vocab_size),
    or over candidates (B, n), the token ids of its columns, once top-k or top-p has sorted them (else None).
    """
    # In float32 whatever the model's dtype, the largest logit shifted to 0 first: a temperature so small that the
    # logits over it would overflow leaves the largest alone, greedy, instead of turning every probability into NaN
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    candidates = None
    if top_k is not None and top_k < logits.size(-1):
        logits, candidates = torch.topk(logits, top_k)  # (B, top_k) each, the most likely first
    if top_p is not None and top_p < 1.0:
        if candidates is None:
            logits, candidates = torch.sort(logits, dim=-1, descending=True)
        # keep the most likely tokens until their probabilities add up to top_p
        probs = F.softmax(logits, dim=-1)
        outside = probs.cumsum(dim=-1) - probs > top_p  # the most likely always stays
        logits = logits.masked_fill(outside, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if min_p > 0.0:  # keep the tokens at least min_p times as likely as the most likely one
        probs = probs.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), 0.0)
    return probs, candidates


def ready_to_generate(model, device, dtype, compile=False):
    """
    model (on the CPU) made ready to generate on device (sample.py, chat.py): evaluation mode, moved, on a CPU its
    weights laid out for MKL's matrix-vector products and ATen's own kernels for float32, and compiled if asked.
    """
    model.eval()
    model.to(device)
    if device.split(":")[0] == "cpu":
        model.store_weights_transposed()  # MKL's matrix-vector products read it faster
        if dtype == "float32":
            # ATen's own GELU rather than oneDNN's, whose fixed cost per call dominates on one token's activations
            # (bench.py --part=sample measures it); bfloat16 needs oneDNN for its products
            torch.backends.mkldnn.enabled = False
    return torch.compile(model) if compile else model


def whole_texts(token_ids, decode, pending=()):
    """
    The text of each token of token_ids as soon as it is whole, after the tokens pending: a character split across
    BPE tokens decodes as U+FFFD until its last byte arrives. What is still pending at the end comes last.
    """
    pending = list(pending)
    for token in token_ids:
        pending.append(token)
        text = decode(pending)
        if not text.endswith("\ufffd"):
            yield text
            pending = []
    if pending:
        yield decode(pending)


def repeated_shares(texts, token_lists, min_line=20, n=4):
    """(share of repeated lines, share of repeated n-grams) over samples: texts, and the same samples' token ids."""
    lines = repeated_lines = 0
    for text in texts:
        seen = set()
        for line in (line.strip() for line in text.splitlines()):
            if len(line) >= min_line:
                lines += 1
                repeated_lines += line in seen
                seen.add(line)
    grams = repeated_grams = 0
    for tokens in token_lists:
        seen = set()
        for i in range(len(tokens) - n + 1):
            gram = tuple(tokens[i:i + n])
            grams += 1
            repeated_grams += gram in seen
            seen.add(gram)
    return repeated_lines / max(lines, 1), repeated_grams / max(grams, 1)
