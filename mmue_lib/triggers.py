"""The trigger-search core: HotFlip candidates from the gradient at the trigger embeddings, a
beam search over them, and the vocabularies a trigger may draw its words from."""
from __future__ import annotations

import os
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

from .data import read_caption_csv
from .defenses import normalized_word, word_counts
from .methods import ProtectConfig
from .models import Tokenizer

STUDY_VOCABULARY = Path(__file__).parent / "vocabularies" / "flickr8k_train_words.tsv"
"""The words of the study's Flickr8k train captions seen at least `STUDY_MIN_COUNT` times, with
their counts (`write_study_vocabulary`): the vocabulary `trigger_vocab: study` draws from, for a
collection whose own captions are too few to supply common words."""

STUDY_MIN_COUNT = 5


def hotflip_candidates(grad: torch.Tensor, embedding_weight: torch.Tensor, allowed: torch.Tensor,
                       top_k: int) -> torch.Tensor:
    """[B, k, top_k] token ids whose embedding most decreases the loss to first order
    (largest -grad . e_v) at each trigger position, among the `allowed` vocabulary."""
    scores = -(grad @ embedding_weight.T)
    scores[..., ~allowed.to(scores.device)] = float("-inf")
    return scores.topk(top_k, dim=-1).indices


def beam_search(score: Callable[[torch.Tensor], torch.Tensor], current: torch.Tensor, candidates: torch.Tensor,
                beam_size: int = 1) -> tuple[torch.Tensor, float]:
    """Position by position, try each candidate rank j (row b takes `candidates[b, p, j]`) in every
    beam, keep the `beam_size` lowest-loss assignments. `score` maps [C, B, k] trigger sets to [C]
    batch losses. The current triggers stay in the running, so the result is never worse."""
    beams = current.unsqueeze(0)
    losses = score(beams)
    for position in range(current.shape[1]):
        options = []
        for rank in range(candidates.shape[2]):
            option = beams.clone()
            option[:, :, position] = candidates[:, position, rank]
            options.append(option)
        options = torch.cat(options)
        options_loss = score(options)
        pool, pool_loss = torch.cat([beams, options]), torch.cat([losses, options_loss])
        keep = torch.argsort(pool_loss, stable=True)[:beam_size]
        beams, losses = pool[keep], pool_loss[keep]
    return beams[0], float(losses[0])


@lru_cache(maxsize=1)
def whole_word_tokens() -> torch.Tensor:
    """[V] bool: tokens that are a whole lower-case ASCII word and re-tokenise to themselves,
    so a trigger survives decode -> text -> tokenize."""
    tokenizer = Tokenizer()
    allowed = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
    for token, index in tokenizer.bpe.encoder.items():
        word = token[:-4]
        if token.endswith("</w>") and word.isascii() and word.isalpha() and word.islower() \
                and tokenizer.bpe.bpe(word) == token:
            allowed[index] = True
    return allowed


def trigger_vocabulary(config: ProtectConfig, captions: list[str]) -> torch.Tensor:
    """[V] bool mask of tokens a trigger may use, by `config.trigger_vocab`: `words` (whole words),
    `captions` (whole words that occur in the training captions, at least `trigger_min_count`
    times: the built-in semantic vocabulary), `study` (the same from the study's Flickr8k train
    captions, shipped with the package), `mlm` (whole words a local masked language model
    proposes for the trigger slots: the paper's BERT variant), `all` (any token, special ones
    included, as the official code). A ValueError when no word is left."""
    tokenizer = Tokenizer()
    kind = config.trigger_vocab
    if kind == "all":
        return torch.ones(tokenizer.vocab_size, dtype=torch.bool)
    if kind == "words":
        return whole_word_tokens()
    if kind == "captions":
        words = {w.lower() for c in captions for w in c.split()}
        if config.trigger_min_count > 1:
            counts = word_counts(captions)
            words = {w for w in words if counts[normalized_word(w)] >= config.trigger_min_count}
    elif kind == "study":
        words = {w for w, count in study_word_counts().items() if count >= config.trigger_min_count}
    elif kind == "mlm":
        words = mlm_proposals(config.mlm_path, captions, max(1, config.trigger_len), seed=config.seed)
    else:
        raise ValueError(f"unknown trigger vocabulary '{kind}' (words, captions, study, mlm, all)")
    mask = _words_to_mask(words) & whole_word_tokens()
    if not mask.any():
        raise ValueError(f"trigger_vocab '{kind}' leaves no word for the triggers"
                         + (f" (none seen {config.trigger_min_count} times: lower trigger_min_count, "
                            "`mmue protect --trigger-min-count`)" if kind == "captions" else ""))
    return mask


@lru_cache(maxsize=1)
def study_word_counts() -> Counter:
    """The shipped `STUDY_VOCABULARY` as word -> count."""
    counts = Counter()
    for line in STUDY_VOCABULARY.read_text(encoding="utf-8").splitlines():
        word, count = line.split("\t")
        counts[word] = int(count)
    return counts


def write_study_vocabulary(train_csv: str | os.PathLike, out: str | os.PathLike = STUDY_VOCABULARY) -> int:
    """Write the words of `train_csv`'s captions seen at least `STUDY_MIN_COUNT` times, most common
    first, one `word<TAB>count` per line; returns how many."""
    counts = [(word, count) for word, count in word_counts(read_caption_csv(train_csv).captions).most_common()
              if count >= STUDY_MIN_COUNT and word.isascii() and word.isalpha()]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("".join(f"{word}\t{count}\n" for word, count in counts), encoding="utf-8")
    return len(counts)


def _words_to_mask(words: set[str]) -> torch.Tensor:
    tokenizer = Tokenizer()
    mask = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
    for word in words:
        ids = tokenizer.encode(word)
        if len(ids) == 1:
            mask[ids[0]] = True
    return mask


@torch.no_grad()
def mlm_proposals(mlm_path: str | os.PathLike, captions: list[str], trigger_len: int, per_slot: int = 5,
                  max_captions: int = 1000, seed: int = 0) -> set[str]:
    """Words a masked language model (a local Hugging Face folder, e.g. bert-base-uncased) puts
    in `trigger_len` masked slots before a sample of the captions, its top `per_slot` per slot."""
    try:
        from transformers import AutoModelForMaskedLM, AutoTokenizer
    except ImportError as error:
        raise ImportError("trigger_vocab='mlm' needs the transformers package: pip install transformers") from error
    if not Path(mlm_path).is_dir():
        raise FileNotFoundError(f"masked language model folder not found: {mlm_path} (no downloads are made)")
    tokenizer = AutoTokenizer.from_pretrained(mlm_path, local_files_only=True)
    model = AutoModelForMaskedLM.from_pretrained(mlm_path, local_files_only=True).eval()
    order = torch.randperm(len(captions), generator=torch.Generator().manual_seed(seed))[:max_captions]
    masks = " ".join([tokenizer.mask_token] * trigger_len)
    texts = [f"{masks} {captions[i]}" for i in order.tolist()]
    words: set[str] = set()
    for start in range(0, len(texts), 64):
        encoded = tokenizer(texts[start:start + 64], padding=True, truncation=True, return_tensors="pt")
        logits = model(**encoded).logits
        proposals = logits[encoded["input_ids"] == tokenizer.mask_token_id].topk(per_slot, dim=-1).indices
        words.update(w.lower() for w in tokenizer.convert_ids_to_tokens(proposals.flatten().tolist()) if w.isalpha())
    return words
