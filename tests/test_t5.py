"""T5-v1.1 encoder + tokenizer: parity with transformers on a tiny random config."""

import io
import json

import jax.numpy as jnp
import numpy as np
import pytest

from m2dit_jax.encoders.t5 import (
    T5Config,
    T5Encoder,
    T5TextEncoder,
    load_t5_encoder,
    relative_position_buckets,
    save_t5_encoder,
)
from m2dit_jax.encoders.tokenizer import T5Tokenizer

SENTENCES = [
    "a red ball rolls across the table",
    "two cats play in the garden at night",
    "the camera pans over a snowy mountain",
    "a man walks his dog along the beach",
    "Actor1 opens the door and smiles",
]
CAPTIONS = [
    "a red  ball",
    "Two CATS, play!",
    " leading space  and trailing ",
    "unseen wörds xyz",
    "a <extra_id_0> b </s>",
    " ".join(SENTENCES),  # longer than max_length: truncated, </s> kept
]
TEXT_LEN = 24


def train_spiece(folder):
    """A tiny T5-style sentencepiece model (pad 0, eos 1, unk 2, no bos) saved as
    ``folder/spiece.model``, the file a transformers T5 ``tokenizer/`` folder holds."""
    import sentencepiece as spm

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 20),
        model_writer=proto,
        vocab_size=40,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        model_type="unigram",
        character_coverage=1.0,
        minloglevel=2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(proto.getvalue())
    return folder


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    """A CogVideoX-like folder: ``tokenizer/`` (spiece) + ``text_encoder/`` (random tiny T5)."""
    torch = pytest.importorskip("torch", reason="parity needs the `parity` extra (torch)")
    transformers = pytest.importorskip("transformers", reason="parity needs the `parity` extra")
    root = tmp_path_factory.mktemp("cogvideox")
    train_spiece(root / "tokenizer")
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=140,  # 40 pieces + 100 sentinel ids, as T5Tokenizer counts them
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=8,  # few buckets + short max distance: log buckets used
        relative_attention_max_distance=12,
    )
    ref = transformers.T5EncoderModel(config).eval()
    ref.save_pretrained(root / "text_encoder")
    hf_tok = transformers.T5Tokenizer.from_pretrained(root / "tokenizer")
    return root, torch, ref, hf_tok


@pytest.mark.parity
def test_tokenizer_matches_transformers(pipeline_folder):
    root, _, _, hf_tok = pipeline_folder
    ours = T5Tokenizer.from_folder(root, max_length=TEXT_LEN)
    ids, mask = ours(CAPTIONS)
    ref = hf_tok(CAPTIONS, padding="max_length", max_length=TEXT_LEN, truncation=True)
    np.testing.assert_array_equal(ids, np.array(ref["input_ids"]))
    np.testing.assert_array_equal(mask, np.array(ref["attention_mask"], bool))
    assert mask[-1].all() and ids[-1, -1] == 1  # truncated caption still ends with </s>
    assert ids[0, mask[0].sum() :].max() == 0  # padded with <pad> = 0


@pytest.mark.parity
@pytest.mark.parametrize("attend_to_padding", [True, False])
def test_encoder_matches_transformers(pipeline_folder, attend_to_padding):
    root, torch, ref, hf_tok = pipeline_folder
    encoder = T5TextEncoder.from_pretrained(
        root, text_len=TEXT_LEN, batch_size=4, attend_to_padding=attend_to_padding
    )
    assert (encoder.text_len, encoder.dim) == (TEXT_LEN, 32)
    embeds, mask = encoder.encode(CAPTIONS)  # 6 captions: one full batch + one padded batch
    assert embeds.shape == (6, TEXT_LEN, 32) and embeds.dtype == np.float32
    batch = hf_tok(
        CAPTIONS, padding="max_length", max_length=TEXT_LEN, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        kwargs = {} if attend_to_padding else {"attention_mask": batch.attention_mask}
        want = ref(input_ids=batch.input_ids, **kwargs).last_hidden_state.numpy()
    np.testing.assert_allclose(embeds, want, atol=1e-4)
    np.testing.assert_array_equal(mask, batch.attention_mask.numpy().astype(bool))


def test_relative_position_buckets_match_t5_rules():
    b = relative_position_buckets(40, 40, num_buckets=32, max_distance=128)
    assert b.shape == (40, 40) and b.dtype == np.int32
    # Exact buckets for |d| < 8, key-after-query in the upper half, log buckets beyond.
    assert b[10, 10] == 0 and b[10, 13] == 16 + 3 and b[13, 10] == 3
    assert b[0, 39] > b[0, 20] > b[0, 9] >= 16 + 8
    assert b.max() <= 31
    far = relative_position_buckets(1, 400, num_buckets=32, max_distance=128)
    assert far[0, 399] == 31 and far[0, 200] == 31  # beyond max_distance: last bucket


def test_loader_errors_and_config_checks(tmp_path):
    from safetensors.numpy import save_file

    cfg = T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_heads=4)
    model = T5Encoder(cfg, seed=1)
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(dataclass_dict(cfg)))
    tensors = {
        "shared.weight": np.zeros((50, 16), np.float32),
        "encoder.block.0.layer.0.SelfAttention.q.weight": np.zeros((16, 16), np.float32),
        "encoder.block.0.layer.9.bogus.weight": np.zeros((2,), np.float32),
    }
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ValueError) as err:
        load_t5_encoder(folder)
    msg = str(err.value)
    assert "missing" in msg and "encoder.final_layer_norm.weight" in msg
    assert "unexpected" in msg and "layer.9.bogus" in msg
    with pytest.raises(ValueError, match="gated-gelu"):
        T5Config(feed_forward_proj="relu")
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        model(jnp.zeros((3,), jnp.int32))
    out = model(jnp.zeros((2, 5), jnp.int32))
    assert out.shape == (2, 5, 16) and np.isfinite(np.asarray(out)).all()


def test_tokenizer_input_checks(tmp_path):
    folder = train_spiece(tmp_path / "tok")
    tok = T5Tokenizer.from_folder(folder, max_length=8)
    with pytest.raises(ValueError, match="sequence of strings"):
        tok("one caption")
    with pytest.raises(ValueError, match="caption 1"):
        tok(["ok", 3])
    with pytest.raises(ValueError, match="spiece.model"):
        T5Tokenizer.from_folder(tmp_path / "missing")
    ids, mask = tok([""])  # an empty caption is just </s>
    assert ids[0, 0] == 1 and mask[0].sum() == 1


def dataclass_dict(cfg):
    import dataclasses

    return dataclasses.asdict(cfg)


def test_loading_streams_tensors_and_checks_every_shape_before_assigning(tmp_path, monkeypatch):
    from safetensors.numpy import save_file

    from m2dit_jax.encoders import weights_io

    cfg = T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_heads=4)
    folder = tmp_path / "text_encoder"
    save_t5_encoder(T5Encoder(cfg, seed=3), folder)
    reads: list[str] = []
    real_get = weights_io.SafetensorsFolder.__getitem__

    def counting_get(self, key):
        reads.append(key)
        return real_get(self, key)

    monkeypatch.setattr(weights_io.SafetensorsFolder, "__getitem__", counting_get)
    loaded = load_t5_encoder(folder)
    lazy = weights_io.SafetensorsFolder(folder)
    assert sorted(reads) == sorted(lazy) and len(reads) == len(set(reads))  # each read once
    ids = jnp.arange(10).reshape(2, 5) % 50
    np.testing.assert_array_equal(np.asarray(loaded(ids)), np.asarray(T5Encoder(cfg, seed=3)(ids)))
    assert lazy.shape("shared.weight") == (50, 16)

    # a wrong shape anywhere: the error comes before any tensor is read or assigned
    bad = {k: np.asarray(lazy[k]) for k in lazy}
    bad["encoder.final_layer_norm.weight"] = np.zeros((17,), np.float32)
    save_file(bad, str(folder / "model.safetensors"))
    reads.clear()
    with pytest.raises(ValueError, match=r"final_layer_norm.weight: checkpoint shape \(17,\)"):
        load_t5_encoder(folder)
    assert reads == []
    # the same tensor in two shards is refused, naming both files
    save_file({"shared.weight": bad["shared.weight"]}, str(folder / "extra.safetensors"))
    with pytest.raises(ValueError, match=r"'shared.weight' is in both .*extra.safetensors"):
        weights_io.SafetensorsFolder(folder)
