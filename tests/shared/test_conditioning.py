"""Conditioning: the offline text encoder, any transformers text model from a local folder, class
labels and classifier-free-guidance dropout."""
import copy
import itertools
import json
import shutil

import pytest
import torch

from shared.conditioning.conditioners import (
    ClassLabelEncoder, LabelConditioner, TextCondition, TextConditioner, TextEncoder, default_text_encoder_path,
    drop_condition)

COLORS, SHAPES = ("red", "green", "blue"), ("circle", "square", "triangle")
CAPTIONS = [f"a {c} {s}" for s in SHAPES for c in COLORS]  # shapes2d, label order 3·shape + colour


@pytest.fixture(scope="module")
def encoder():
    """The default encoder, loaded with the hub switched off (it never needs it: a local folder)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield TextEncoder()


def cosine(cond, i, j):
    return float(cond.pooled[i] @ cond.pooled[j])


# --- the default encoder (all-MiniLM-L6-v2, offline) -------------------------------------------------

def test_default_encoder_shapes_and_unit_pooled(encoder):
    cond = encoder(["a red circle", "a blue square"])
    assert isinstance(cond, TextCondition) and len(cond) == 2 and encoder.dim == 384
    assert cond.tokens.shape == (2, 16, 384) and cond.mask.shape == (2, 16) and cond.pooled.shape == (2, 384)
    assert cond.tokens.dtype == cond.pooled.dtype == torch.float32 and cond.mask.dtype == torch.bool
    assert not cond.tokens.requires_grad and not cond.pooled.requires_grad
    torch.testing.assert_close(cond.pooled.norm(dim=-1), torch.ones(2))
    assert not encoder.model.training
    assert all(not p.requires_grad for p in encoder.model.parameters())


def test_default_encoder_matches_sentence_transformers(encoder):
    """Reference values from sentence-transformers 6.2.0 ``SentenceTransformer(path).encode`` on the
    same model folder (masked mean pooling + L2 normalisation); the next test checks it live."""
    cond = encoder(["a red circle", "a red disk", "a blue square", ""])
    torch.testing.assert_close(cond.pooled[0, :4], torch.tensor([-0.012648, 0.005743, -0.166881, 0.087797]),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(cond.pooled[3, :4], torch.tensor([-0.118838, 0.048299, -0.002548, -0.011011]),
                               atol=1e-5, rtol=0)
    assert cosine(cond, 0, 1) == pytest.approx(0.638350, abs=1e-4)
    assert cosine(cond, 0, 2) == pytest.approx(0.432294, abs=1e-4)


def test_default_encoder_matches_sentence_transformers_live(encoder):
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(default_text_encoder_path()), device="cpu")
    torch.testing.assert_close(encoder(CAPTIONS).pooled, torch.as_tensor(reference.encode(CAPTIONS)),
                               atol=1e-5, rtol=0)


def test_semantics(encoder):
    """'a red disk' is nearer 'a red circle' (0.64) than 'a blue square' is (0.43); and among the 9
    shapes2d captions every pair sharing the colour or the shape is nearer than every pair sharing
    neither (measured: min 0.64 vs max 0.49)."""
    cond = encoder(["a red circle", "a red disk", "a blue square"])
    assert cosine(cond, 0, 1) > cosine(cond, 0, 2) + 0.1
    cond = encoder(CAPTIONS)
    share_one, share_none = [], []
    for i, j in itertools.combinations(range(9), 2):
        shared = (i // 3 == j // 3) + (i % 3 == j % 3)
        (share_one if shared else share_none).append(cosine(cond, i, j))
    assert min(share_one) > max(share_none) + 0.05


def test_mask_matches_token_count_and_truncation(encoder):
    prompts = ["a red circle", "a slightly larger green triangle", "", "word " * 40]
    cond = encoder(prompts)
    counts = [len(ids) for ids in encoder.tokenizer(prompts)["input_ids"]]  # with [CLS] and [SEP]
    assert cond.mask.sum(1).tolist() == [min(n, 16) for n in counts]
    assert counts[-1] > 16 and cond.mask[-1].all()
    assert cond.mask[0, :5].all() and not cond.mask[0, 5:].any()  # real tokens first, then padding


def test_cache_encodes_each_distinct_prompt_once(encoder, monkeypatch):
    encoder.clear_cache()
    seen = []
    original = encoder._encode

    def counting(prompts):
        seen.extend(prompts)
        return original(prompts)

    monkeypatch.setattr(encoder, "_encode", counting)
    batch = CAPTIONS * 3
    first = encoder(batch)
    for _ in range(3):
        again = encoder(list(reversed(batch)))
    assert sorted(seen) == sorted(CAPTIONS)  # one encoding per distinct caption, in one call
    torch.testing.assert_close(again.tokens, first.tokens.flip(0))
    uncached = original(CAPTIONS)  # the cache returns what an uncached forward gives
    torch.testing.assert_close(first.tokens[:9], uncached.tokens)
    torch.testing.assert_close(first.pooled[:9], uncached.pooled)


def test_null_is_the_empty_prompt(encoder):
    null = encoder.null(3)
    empty = encoder._encode([""])
    assert len(null) == 3 and null.mask.sum(1).tolist() == [2, 2, 2]  # [CLS] [SEP]
    for i in range(3):
        torch.testing.assert_close(null.tokens[i], empty.tokens[0])
        torch.testing.assert_close(null.pooled[i], empty.pooled[0])
    torch.testing.assert_close(TextConditioner(encoder, dropout=0.1).null(3).tokens, null.tokens)


def test_text_condition_batch_ops(encoder):
    cond = encoder(CAPTIONS[:4])
    assert cond[1].tokens.shape == (1, 16, 384) and len(cond[-1]) == 1
    torch.testing.assert_close(cond[-1].pooled, cond.pooled[3:])
    torch.testing.assert_close(cond.index(torch.tensor([2, 0])).tokens, cond.tokens[[2, 0]])
    both = TextCondition.cat([cond, encoder.null(4)])  # one batched CFG forward
    assert len(both) == 8 and both.mask[4:].sum().item() == 8
    half = cond.to("cpu", torch.bfloat16)
    assert half.tokens.dtype == half.pooled.dtype == torch.bfloat16 and half.mask.dtype == torch.bool


def test_frozen_model_is_outside_parameters_and_state_dict(encoder):
    assert list(encoder.parameters()) == [] and list(encoder.state_dict()) == []
    conditioner = TextConditioner(encoder)
    assert list(conditioner.state_dict()) == []
    assert copy.deepcopy(conditioner).encoder.model is encoder.model  # an EMA copy shares it


# --- CFG dropout ----------------------------------------------------------------------------------

def draws(n, seed):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed))


def test_drop_condition_text(encoder):
    cond, null = encoder(CAPTIONS * 8), encoder.null(1)
    same = drop_condition(cond, 0.0, draws(len(cond), 0), null=null)
    assert torch.equal(same.tokens, cond.tokens) and torch.equal(same.mask, cond.mask)
    allnull = drop_condition(cond, 1.0, draws(len(cond), 0), null=null)
    assert torch.equal(allnull.tokens, null.tokens.expand_as(cond.tokens))
    assert torch.equal(allnull.mask, null.mask.expand_as(cond.mask))
    assert torch.equal(allnull.pooled, null.pooled.expand_as(cond.pooled))
    half = drop_condition(cond, 0.5, draws(len(cond), 1), null=null)
    again = drop_condition(cond, 0.5, draws(len(cond), 1), null=null)
    assert torch.equal(half.tokens, again.tokens) and torch.equal(half.mask, again.mask)
    dropped = (half.pooled == null.pooled).all(1)
    kept = (half.pooled == cond.pooled).all(1)
    assert (dropped ^ kept).all() and 0.25 < dropped.float().mean() < 0.75  # each item whole, ~half
    assert torch.equal(half.mask[dropped], null.mask.expand(int(dropped.sum()), -1))
    assert torch.equal(half.tokens[kept], cond.tokens[kept])


def test_drop_condition_labels():
    labels = torch.arange(9).repeat(400)
    assert torch.equal(drop_condition(labels, 0.0, draws(len(labels), 0), null=9), labels)
    assert (drop_condition(labels, 1.0, draws(len(labels), 0), null=9) == 9).all()
    a = drop_condition(labels, 0.5, draws(len(labels), 3), null=9)
    b = drop_condition(labels, 0.5, draws(len(labels), 3), null=9)
    c = drop_condition(labels, 0.5, draws(len(labels), 4), null=9)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs((a == 9).float().mean().item() - 0.5) < 0.05  # 3600 draws: 6 standard deviations
    assert torch.equal(a[a != 9], labels[a != 9])
    rate = (drop_condition(labels, 0.1, draws(len(labels), 5), null=9) == 9).float().mean().item()
    assert abs(rate - 0.1) < 0.03
    with pytest.raises(ValueError):
        drop_condition(labels, 1.5, draws(len(labels), 0), null=9)


# --- class labels ---------------------------------------------------------------------------------

def test_class_label_encoder_null_index():
    encoder = ClassLabelEncoder(num_classes=9, dim=8)
    assert encoder.null_index == 9 and encoder.embedding.weight.shape == (10, 8)
    torch.testing.assert_close(encoder.null(3), encoder.embedding.weight[9].expand(3, 8))
    assert encoder(torch.tensor([0, 8])).shape == (2, 8)
    with pytest.raises(ValueError):
        encoder(torch.tensor([10]))


def test_label_conditioner_dropout_only_in_training():
    conditioner = LabelConditioner(num_classes=9, dim=8, dropout=1.0)
    labels = torch.arange(9)
    eval_cond = conditioner.encode(labels, torch.Generator().manual_seed(0), train=False)
    torch.testing.assert_close(eval_cond, conditioner.encoder.embedding.weight[:9])
    train_cond = conditioner.encode(labels, torch.Generator().manual_seed(0), train=True)
    torch.testing.assert_close(train_cond, conditioner.null(9))
    train_cond.sum().backward()  # the embedding is trained with the backbone
    assert conditioner.encoder.embedding.weight.grad[9].abs().sum() > 0 and conditioner.dim == 8


def test_text_conditioner_dropout_only_in_training(encoder):
    conditioner = TextConditioner(encoder, dropout=1.0)
    cond = conditioner.encode(CAPTIONS[:3], torch.Generator().manual_seed(0), train=False)
    torch.testing.assert_close(cond.tokens, encoder(CAPTIONS[:3]).tokens)
    dropped = conditioner.encode(CAPTIONS[:3], torch.Generator().manual_seed(0), train=True)
    torch.testing.assert_close(dropped.tokens, encoder.null(3).tokens)
    assert conditioner.dim == 384


# --- any transformers text encoder from a local folder -------------------------------------------

def _tiny_bert(path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(default_text_encoder_path() / name, path / name)


def _tiny_clip_tokenizer(path):
    """A character-level byte-BPE CLIP tokenizer (no merges), built offline."""
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for piece in list(letters) + [c + "</w>" for c in letters]:
        vocab[piece] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    tokenizer.save_pretrained(path)
    return tokenizer


def test_tiny_random_bert_loads_through_the_same_path(tmp_path):
    _tiny_bert(tmp_path)
    encoder = TextEncoder(tmp_path, max_length=8)
    cond = encoder(["a red circle", "a blue square"])
    assert encoder.dim == 32 and cond.tokens.shape == (2, 8, 32) and cond.pooled.shape == (2, 32)
    assert encoder.pooling == "mean" and not encoder.normalize  # no sentence-transformers files
    weights = cond.mask.unsqueeze(-1).float()
    torch.testing.assert_close(cond.pooled, (cond.tokens * weights).sum(1) / weights.sum(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the encoder runs in float32 under autocast too
        torch.testing.assert_close(encoder._encode(["a red circle"]).tokens, cond.tokens[:1])
    small = TextEncoder(tmp_path, max_length=8, cache_size=2)  # LRU: keeps the 2 most recent prompts
    small(["a", "b"]), small(["a"]), small(["c"])
    assert list(small._cache) == ["a", "c"]
    with pytest.raises(ValueError, match="empty"):
        small([])
    with pytest.raises(TypeError):
        small("a red circle")
    encoder.double()  # .to / .double reach the frozen model; outputs stay float32
    assert encoder.model.dtype == torch.float64 and encoder(["a"]).tokens.dtype == torch.float32


@pytest.mark.parametrize("full_clip", [False, True], ids=["clip_text_model", "clip"])
def test_tiny_random_clip_text_model(tmp_path, full_clip):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

    tokenizer = _tiny_clip_tokenizer(tmp_path)
    torch.manual_seed(0)
    text_config = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, max_position_embeddings=16, projection_dim=16,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    if full_clip:  # a whole CLIP checkpoint (text + vision): only the text tower is loaded
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      image_size=16, patch_size=8, projection_dim=16)
        CLIPModel(CLIPConfig(text_config=text_config, vision_config=vision, projection_dim=16)).save_pretrained(tmp_path)
    else:
        CLIPTextModel(CLIPTextConfig(**text_config)).save_pretrained(tmp_path)
    encoder = TextEncoder(tmp_path, max_length=16)
    assert type(encoder.model).__name__ == "CLIPTextModel" and encoder.pooling == "pooler"
    cond = encoder(["a red circle", "a blue square"])
    assert cond.tokens.shape == (2, 16, 32) and encoder.dim == 32
    # "a red circle": <sot> a r e d c i r c l e <eot> → 12 tokens; CLIP's pooled is the <eot> state
    assert cond.mask.sum(1).tolist() == [12, 13]
    torch.testing.assert_close(cond.pooled[0], cond.tokens[0, 11])
    assert encoder.null(2).mask.sum(1).tolist() == [2, 2]


@pytest.mark.skipif(int(__import__("transformers").__version__.split(".")[0]) < 5,
                    reason="building a T5 tokenizer without sentencepiece needs transformers >= 5")
def test_tiny_random_t5_encoder(tmp_path):
    """T5's tokenizer is a tokenizers-library Unigram model in transformers >= 5 (no sentencepiece)."""
    import transformers
    from transformers import T5Config, T5Model

    words = ["▁a", "▁red", "▁blue", "▁circle", "▁square", "▁"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(w, -1.0) for w in words]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tokenizer = transformers.T5Tokenizer(vocab=vocab, extra_ids=0)
    tokenizer.save_pretrained(tmp_path)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2,
                      decoder_start_token_id=0)
    T5Model(config).save_pretrained(tmp_path)  # a whole encoder-decoder checkpoint: the encoder is used
    encoder = TextEncoder(tmp_path, max_length=8)
    assert type(encoder.model).__name__ == "T5EncoderModel" and encoder.dim == 32
    cond = encoder(["a red circle", "a blue square"])
    assert cond.tokens.shape == (2, 8, 32) and cond.mask.sum(1).tolist() == [4, 4]  # 3 words + </s>


def test_bad_path_is_named(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        TextEncoder(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json.*empty"):
        TextEncoder(tmp_path / "empty")
    (tmp_path / "json_only").mkdir()
    (tmp_path / "json_only" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(OSError, match="json_only"):
        TextEncoder(tmp_path / "json_only")


def test_whitening_gives_every_direction_of_the_captions_the_same_spread(encoder):
    """BERT-whitening over the moving_shapes captions: the antonym pairs the encoder puts close together
    ("left"/"right") end as far apart as a change of colour; the fitted set's covariance is isotropic on its span."""
    from shared.conditioning.whitening import EmbeddingWhitening
    captions = [f"a {c} {s} moving {d}" for c in COLORS for s in SHAPES for d in ("left", "right", "up", "down")]
    pooled = torch.cat([encoder(captions).pooled, encoder.null(1).pooled]).double()
    whitening = EmbeddingWhitening(pooled.shape[1], shrinkage=0.0).double()
    assert torch.equal(whitening(pooled), pooled)  # the identity until fitted
    white = whitening.fit(pooled)(pooled)
    assert torch.allclose(white.square().sum(1).mean(), torch.tensor(1.0, dtype=torch.float64))
    centred = white - white.mean(0)
    eigenvalues = torch.linalg.eigvalsh(centred.T @ centred / len(white))
    spread = eigenvalues[eigenvalues > 1e-9]
    assert len(spread) == len(captions) and torch.allclose(spread, spread.mean().expand_as(spread), rtol=1e-6)
    i = {c: k for k, c in enumerate(captions)}
    gap = (lambda a, b, x: float((x[i[a]] - x[i[b]]).norm()))
    sign, colour = ("a red circle moving left", "a red circle moving right"), ("a red circle moving left",
                                                                            "a blue circle moving left")
    assert gap(*sign, pooled) < 0.5 * gap(*colour, pooled)  # the encoder: antonyms close
    assert gap(*sign, white) == pytest.approx(gap(*colour, white), rel=1e-6)  # whitened: a regular simplex
    restored = EmbeddingWhitening(pooled.shape[1]).double()
    restored.load_state_dict(whitening.state_dict())  # the statistics travel with the model's weights
    assert torch.equal(restored(pooled), white)
    with pytest.raises(ValueError, match="finite"):
        EmbeddingWhitening(4).fit(torch.full((3, 4), float("nan")))
