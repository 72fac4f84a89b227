"""The zoo's character-level tokenizer, shared by every zoo model and every merge of them."""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
# Every printable ASCII character but tabs and newlines, so that any one-line ASCII text round-trips.
ALPHABET = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one token per printable ASCII character, BOS prepended on encode.

    A BPE model without merges splits text into its characters; the Fuse decoder joins them back, so
    ``decode(encode(s), skip_special_tokens=True) == s`` for any string over `ALPHABET`.
    """
    vocab = {token: i for i, token in enumerate([PAD, BOS, EOS, UNK, *ALPHABET])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=64,
    )
