"""Tiny random-weight masked language models built entirely in code.

Nothing here touches the network or reads files from elsewhere: each tokenizer is built with the
``tokenizers`` library from an in-code vocabulary (WordPiece, byte-level BPE or Unigram) and
wrapped in the transformers tokenizer class of its family, and each model is created from a small
config with seeded random weights.  ``build_tiny_model(family, folder)`` saves both with
``save_pretrained`` so that ``AutoModelForMaskedLM.from_pretrained(folder)`` and
``AutoTokenizer.from_pretrained(folder)`` reload them.

Every vocabulary holds the words of ``REQUIRED_WORDS`` as single tokens (WordPiece: the word;
byte-level BPE: ``Ġword``; SentencePiece: ``▁word``), while the words of ``MULTI_PIECE_WORDS``
always split into two or more pieces.

All models: 2 layers, hidden 32, 2 heads, intermediate 37, 64 positions, float32, eval mode;
tokenizer ``model_max_length`` is 64.  RoBERTa counts positions from ``padding_idx + 1`` (like the
real checkpoints, 514 positions for 512 tokens), so its config has 66 positions for 64 tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

MAX_LENGTH = 64
HIDDEN = 32
LAYERS = 2
HEADS = 2
INTERMEDIATE = 37
SEED = 1234

# "modernbert" works with transformers 5.x on CPU (eager / sdpa attention), so it is included.
FAMILIES: tuple[str, ...] = (
    "bert",
    "roberta",
    "albert",
    "distilbert",
    "electra",
    "deberta-v2",
    "modernbert",
)

# Families whose tokenizer keeps case (the others lower-case their input).
CASED_FAMILIES = frozenset({"roberta", "deberta-v2", "modernbert"})
# Families whose word tokens carry a leading-space marker (Ġ for byte-level BPE, ▁ for Unigram).
SPACE_PREFIX = {"roberta": "Ġ", "modernbert": "Ġ", "albert": "▁", "deberta-v2": "▁"}

REQUIRED_WORDS: tuple[str, ...] = (
    "it", "was", "the", "a", "movie", "film", "great", "good", "terrible", "bad", "awful",
    "wonderful", "all", "in", "is", "born", "of", "and", "not", "very", "this", "that", "sports",
    "world", "business", "science", "paris", "london", "france", "dante", "florence", "italy",
    "rome", "berlin", "germany", "english", "french", "capital", "city", "atmosphere", "dialogue",
    "alot", "really", "so", "question", "answer", "yes", "no", "maybe",
)  # fmt: skip

PUNCTUATION: tuple[str, ...] = (".", ",", "?", "!", '"', "'")

# Words that must NOT be single tokens (multi-token verbalizer words).
MULTI_PIECE_WORDS: tuple[str, ...] = ("fantastic", "unwatchable")

# More whole words, so that the shipped examples and templates tokenize into sensible pieces.
EXTRA_WORDS: tuple[str, ...] = (
    "i", "you", "he", "she", "we", "they", "my", "its", "to", "be", "are", "were", "has", "have",
    "had", "with", "for", "on", "at", "by", "from", "as", "an", "but", "or", "too", "much",
    "more", "most", "one", "just", "news", "politics", "technology", "tech", "story", "plot",
    "acting", "actors", "cast", "funny", "boring", "dull", "loved", "hated", "fun", "beautiful",
    "best", "worst", "ever", "time", "every", "minute", "music", "scene", "script", "director",
    "watch", "see", "again", "never", "nothing", "lovely", "brilliant", "charming", "mess",
    "waste", "slow", "long", "well", "made", "ending", "fine", "nice", "poor", "weak", "true",
    "died", "country", "located", "spain", "madrid", "japan", "tokyo", "russia", "moscow",
    "egypt", "cairo", "greece", "athens", "austria", "vienna", "mozart", "salzburg", "einstein",
    "ulm", "galileo", "pisa", "bonn", "goethe", "frankfurt", "bach", "marx", "trier", "dickens",
    "darwin", "news", "topic", "about", "review", "sentiment", "positive", "negative", "label",
)  # fmt: skip

# Continuation pieces (WordPiece "##x" / Unigram non-initial pieces).
SUBWORD_PIECES: tuple[str, ...] = (
    "s", "ing", "ly", "ed", "er", "est", "tic", "tas", "able", "watch", "ful", "ness", "ion",
)  # fmt: skip
# Word-initial pieces that let MULTI_PIECE_WORDS split into natural parts.
WORD_START_PIECES: tuple[str, ...] = ("un", "fan", "re")


# Words that cased vocabularies also hold in title case ("▁Paris", "ĠThe").
_CAPITALIZED = frozenset(REQUIRED_WORDS) | frozenset(
    {"i", "he", "she", "we", "they", "my", "just", "news", "spain", "madrid", "japan", "tokyo",
     "russia", "moscow", "egypt", "cairo", "greece", "athens", "austria", "vienna", "mozart",
     "salzburg", "einstein", "ulm", "galileo", "pisa", "bonn", "goethe", "frankfurt", "bach",
     "marx", "trier", "dickens", "darwin"}
)  # fmt: skip


def _words() -> list[str]:
    seen: dict[str, None] = {}
    for word in (*REQUIRED_WORDS, *EXTRA_WORDS):
        seen.setdefault(word, None)
    return list(seen)


def _alphabet() -> list[str]:
    return [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]


def _ascii_punctuation() -> list[str]:
    return [c for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"]


# --------------------------------------------------------------------------------------------
# tokenizers
# --------------------------------------------------------------------------------------------


def _wordpiece_vocab() -> dict[str, int]:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += _ascii_punctuation()
    tokens += _alphabet()
    tokens += ["##" + c for c in _alphabet()]
    tokens += list(WORD_START_PIECES)
    tokens += ["##" + p for p in SUBWORD_PIECES]
    tokens += _words()
    tokens = list(dict.fromkeys(tokens))  # drop repeats, keep first positions: ids stay dense
    assert not set(MULTI_PIECE_WORDS) & set(tokens)
    return {tok: i for i, tok in enumerate(tokens)}


def _bert_tokenizer(cls_name: str):
    import transformers

    cls = getattr(transformers, cls_name)
    return cls(vocab=_wordpiece_vocab(), do_lower_case=True, model_max_length=MAX_LENGTH)


def _bpe_corpus() -> list[str]:
    """A small corpus in which every word appears often, with and without a leading space and in
    lower and title case, so that the BPE trainer merges each one into a single token."""
    lines = []
    for _ in range(3):
        for word in _words():
            forms = (word, word.capitalize()) if word in _CAPITALIZED else (word,)
            for form in forms:
                lines.append(f"{form} {form} {form}, {form}. {form}! {form}? \"{form}\" '{form}'")
        lines.append(" ".join(f"x {p}" for p in PUNCTUATION))
    return lines


def _train_bpe(special_tokens: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=5000,  # an upper bound: training stops once every corpus word is one token
        min_frequency=2,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_bpe_corpus(), trainer=trainer)
    import json

    model = json.loads(tok.to_str())["model"]
    vocab = dict(model["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return vocab, merges


def _roberta_tokenizer():
    from transformers import RobertaTokenizer

    vocab, merges = _train_bpe(["<s>", "<pad>", "</s>", "<unk>"])
    vocab["<mask>"] = len(vocab)  # like roberta-base, <mask> is the last id
    return RobertaTokenizer(
        vocab=vocab,
        merges=merges,
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True),
        model_max_length=MAX_LENGTH,
    )


def _modernbert_tokenizer():
    """ModernBERT's real tokenizer is a byte-level BPE (OLMo vocabulary) with BERT-style
    [CLS]/[SEP]/[MASK] specials, loaded as a plain ``TokenizersBackend``."""
    from transformers import PreTrainedTokenizerFast

    vocab, merges = _train_bpe(["[UNK]", "[CLS]", "[SEP]", "[PAD]"])
    vocab["[MASK]"] = len(vocab)
    backend = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, dropout=None, fuse_unk=False, unk_token=None)
    )
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token=AddedToken("[MASK]", lstrip=True, rstrip=False, normalized=False, special=True),
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=MAX_LENGTH,
        clean_up_tokenization_spaces=True,
    )


def _unigram_vocab(specials: list[str], cased: bool) -> list[tuple[str, float]]:
    """(piece, score) pairs: whole words score far above the character fallback pieces, so the
    Viterbi segmentation keeps each known word whole."""
    pieces: list[tuple[str, float]] = [(s, 0.0) for s in specials]
    seen = {s for s in specials}

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))

    add("▁", -4.0)
    for p in PUNCTUATION:
        add("▁" + p, -5.0)
        add(p, -5.0)
    for word in _words():
        add("▁" + word, -6.0)
        if cased and word in _CAPITALIZED:
            add("▁" + word.capitalize(), -6.5)
    for p in WORD_START_PIECES:
        add("▁" + p, -7.0)
    for p in SUBWORD_PIECES:
        add(p, -7.0)
    for c in _alphabet() + (_alphabet_upper() if cased else []):
        add("▁" + c, -9.0)
        add(c, -9.5)
    for p in _ascii_punctuation():
        add(p, -9.5)
    assert not {"▁" + w for w in MULTI_PIECE_WORDS} & seen
    return pieces


def _alphabet_upper() -> list[str]:
    return [chr(c) for c in range(ord("A"), ord("Z") + 1)]


def _albert_tokenizer():
    from transformers import AlbertTokenizer

    # real ALBERT: <pad>=0, <unk>=1, [CLS]=2, [SEP]=3, [MASK]=4, lower-cased
    vocab = _unigram_vocab(["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"], cased=False)
    return AlbertTokenizer(
        vocab=vocab,
        do_lower_case=True,
        mask_token=AddedToken("[MASK]", lstrip=True, rstrip=False, normalized=False, special=True),
        model_max_length=MAX_LENGTH,
    )


def _deberta_v2_tokenizer():
    from transformers import DebertaV2Tokenizer

    # real DeBERTa-v3: [PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3, [MASK] last; cased
    vocab = _unigram_vocab(["[PAD]", "[CLS]", "[SEP]", "[UNK]"], cased=True)
    vocab.append(("[MASK]", 0.0))
    return DebertaV2Tokenizer(
        vocab=vocab,
        do_lower_case=False,
        unk_id=3,
        model_max_length=MAX_LENGTH,
    )


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------


def _common(tokenizer) -> dict:
    return dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)


def _bert_model(tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_LENGTH,
        type_vocab_size=2,
        **_common(tokenizer),
    )
    return BertForMaskedLM(config)


def _distilbert_model(tokenizer):
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    config = DistilBertConfig(
        dim=HIDDEN,
        n_layers=LAYERS,
        n_heads=HEADS,
        hidden_dim=INTERMEDIATE,
        max_position_embeddings=MAX_LENGTH,
        **_common(tokenizer),
    )
    return DistilBertForMaskedLM(config)


def _electra_model(tokenizer):
    from transformers import ElectraConfig, ElectraForMaskedLM

    config = ElectraConfig(
        embedding_size=HIDDEN,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_LENGTH,
        type_vocab_size=2,
        **_common(tokenizer),
    )
    return ElectraForMaskedLM(config)


def _roberta_model(tokenizer):
    from transformers import RobertaConfig, RobertaForMaskedLM

    config = RobertaConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        # positions start at pad_token_id + 1 = 2, as in roberta-base (514 for 512 tokens)
        max_position_embeddings=MAX_LENGTH + tokenizer.pad_token_id + 1,
        type_vocab_size=1,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        **_common(tokenizer),
    )
    return RobertaForMaskedLM(config)


def _albert_model(tokenizer):
    from transformers import AlbertConfig, AlbertForMaskedLM

    config = AlbertConfig(
        embedding_size=16,  # != hidden_size, like real ALBERT (128 vs 768)
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_LENGTH,
        type_vocab_size=2,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        **_common(tokenizer),
    )
    return AlbertForMaskedLM(config)


def _deberta_v2_model(tokenizer):
    from transformers import DebertaV2Config, DebertaV2ForMaskedLM

    # DeBERTa-v3-like: relative attention only, no absolute position embeddings
    config = DebertaV2Config(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_LENGTH,
        type_vocab_size=0,
        relative_attention=True,
        position_buckets=32,
        max_relative_positions=-1,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        **_common(tokenizer),
    )
    return DebertaV2ForMaskedLM(config)


def _modernbert_model(tokenizer):
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    config = ModernBertConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_LENGTH,
        local_attention=16,
        global_attn_every_n_layers=2,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        cls_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        sep_token_id=tokenizer.sep_token_id,
    )
    return ModernBertForMaskedLM(config)


_BUILDERS = {
    "bert": (lambda: _bert_tokenizer("BertTokenizer"), _bert_model),
    "distilbert": (lambda: _bert_tokenizer("DistilBertTokenizer"), _distilbert_model),
    "electra": (lambda: _bert_tokenizer("BertTokenizer"), _electra_model),
    "roberta": (_roberta_tokenizer, _roberta_model),
    "albert": (_albert_tokenizer, _albert_model),
    "deberta-v2": (_deberta_v2_tokenizer, _deberta_v2_model),
    "modernbert": (_modernbert_tokenizer, _modernbert_model),
}


def build_tiny_tokenizer(family: str):
    """The in-memory tokenizer of ``family`` (not saved)."""
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    return _BUILDERS[family][0]()


def build_tiny_model(family: str, folder: Path | str) -> Path:
    """Build the tiny masked LM and tokenizer of ``family``, save both into ``folder`` (created if
    needed) and return the folder as a ``Path``."""
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    make_tokenizer, make_model = _BUILDERS[family]
    tokenizer = make_tokenizer()
    torch.manual_seed(SEED)
    model = make_model(tokenizer)
    model = model.to(torch.float32).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_all(root: Path | str, families: tuple[str, ...] = FAMILIES) -> dict[str, Path]:
    """Build every family into ``root/<family>``; returns family -> folder."""
    root = Path(root)
    return {family: build_tiny_model(family, root / family) for family in families}


def word_token(family: str, word: str) -> str:
    """The vocabulary entry expected for a whole word preceded by a space in ``family``."""
    if family not in CASED_FAMILIES:
        word = word.lower()
    return SPACE_PREFIX.get(family, "") + word
