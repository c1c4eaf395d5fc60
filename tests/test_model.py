"""Shapes, selective-attention semantics, quantisation, EMA, user masks and checkpoints."""
from __future__ import annotations

import copy
import json
import struct

import pytest
import torch

from engine.errors import WeightsError
from engine.model import (
    ModelConfig,
    PixelDiscriminator,
    RetouchFormer,
    SelectiveSelfAttention,
    VectorQuantizer,
    load_model,
    load_safetensors,
    save_model,
    save_safetensors,
)
from engine.model.decoders import ReconstructionDecoder
from engine.model.encoder import Encoder, TokenProjection
from engine.model.masknet import MaskUNet
from engine.model.transformer import Transformer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small() -> RetouchFormer:
    torch.manual_seed(0)
    return RetouchFormer(ModelConfig.preset("small")).eval()


def test_small_module_shapes_and_dtypes(small: RetouchFormer) -> None:
    cfg = small.config
    x = torch.rand(2, 3, 128, 128)
    feats = small.encoder(x)
    assert [tuple(f.shape) for f in feats] == [(2, c, 128 // 2**i, 128 // 2**i) for i, c in enumerate(cfg.enc_channels)]
    frames = small.tokens(feats)
    assert frames.shape == (2, len(cfg.token_levels), cfg.token_dim, 16, 16)
    prior = small.prior(feats, x)
    assert prior.recon.shape == x.shape and prior.loss.ndim == 0 and prior.indices.shape == (2, 16, 16)
    assert 0 <= prior.recon.min() and prior.recon.max() <= 1
    logits = small.mask_logits(x, prior.recon, ema=False)
    assert logits.shape == (2, 1, 128, 128)
    w = torch.rand(2, 1, 16, 16)
    assert small.transformer(frames, w).shape == frames.shape
    out = small(x)
    for t in out:
        assert t.dtype == torch.float32
    assert out.image.shape == x.shape and out.mask.shape == (2, 1, 128, 128) and out.recon.shape == x.shape
    assert 0 <= out.mask.min() and out.mask.max() <= 1
    d = PixelDiscriminator(cfg)
    assert d(x, out.mask).shape == (2, 1, 128, 128)


def test_small_parameter_budget(small: RetouchFormer) -> None:
    assert small.parameter_count() <= 10_000_000


def test_paper_config_forward_at_reduced_resolution() -> None:
    cfg = ModelConfig.preset("paper")
    assert (cfg.image_size, cfg.token_dim, cfg.codebook_size) == (512, 512, 1024)
    torch.manual_seed(0)
    model = RetouchFormer(cfg).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
    assert out.image.shape == x.shape and out.mask.shape == (1, 1, 64, 64)
    assert len(model.tokens.levels) == 4


@pytest.mark.parametrize("override", [{"attention": "global"}, {"tokens": "single"}, {"prior": False}])
def test_ablation_switches_build_and_run(override: dict) -> None:
    cfg = ModelConfig.preset("tiny", **override)
    model = RetouchFormer(cfg).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert out.image.shape == (1, 3, 64, 64)
    if override.get("tokens") == "single":
        assert model.tokens.levels == (3,)
    if override.get("prior") is False:
        assert not hasattr(model, "quantizer")
        assert torch.equal(out.recon, out.recon)  # recon is x itself
    if override.get("attention") == "global":
        assert not model.transformer.blocks[0].attn.selective


def test_attention_with_zero_weights_is_identity() -> None:
    torch.manual_seed(1)
    attn = SelectiveSelfAttention(32, 4)
    f = torch.randn(2, 10, 32)
    assert torch.equal(attn(f, torch.zeros(2, 10, 1)), f)


def test_attention_weight_zero_tokens_pass_through() -> None:
    torch.manual_seed(2)
    attn = SelectiveSelfAttention(32, 4)
    f = torch.randn(1, 12, 32)
    w = torch.zeros(1, 12, 1)
    w[0, [2, 5, 7]] = 1.0
    w[0, 9] = 0.5
    out = attn(f, w)
    keep = w[0, :, 0] == 0
    assert torch.equal(out[0, keep], f[0, keep])
    assert not torch.allclose(out[0, ~keep], f[0, ~keep])


def test_attention_masked_token_features_only_affect_itself() -> None:
    torch.manual_seed(3)
    attn = SelectiveSelfAttention(32, 4)
    f = torch.randn(1, 12, 32)
    w = torch.rand(1, 12, 1) * 0.9
    w[0, 4] = 1.0
    g = f.clone()
    g[0, 4] += torch.randn(32) * 5
    a, b = attn(f, w), attn(g, w)
    others = torch.arange(12) != 4
    assert torch.allclose(a[0, others], b[0, others], atol=1e-6)
    assert not torch.allclose(a[0, 4], b[0, 4])


def test_attention_matches_the_equations() -> None:
    torch.manual_seed(4)
    attn = SelectiveSelfAttention(16, 1)
    f, w = torch.randn(1, 6, 16), torch.rand(1, 6, 1)
    n = attn.norm(f)
    q, k, v = attn.q(n * w), attn.k(n * (1 - w)), attn.v(n * (1 - w))
    delta = attn.out(torch.softmax(q @ k.transpose(1, 2) / 16**0.5, -1) @ v)
    assert torch.allclose(attn(f, w), f * (1 - w) + delta * w, atol=1e-5)


def test_global_attention_ignores_weights() -> None:
    torch.manual_seed(5)
    attn = SelectiveSelfAttention(16, 2, selective=False)
    f = torch.randn(1, 6, 16)
    assert torch.allclose(attn(f, torch.zeros(1, 6, 1)), attn(f, torch.ones(1, 6, 1)))
    assert not torch.allclose(attn(f, None), f)


def test_quantiser_returns_nearest_element() -> None:
    torch.manual_seed(6)
    vq = VectorQuantizer(16, 4)
    z = torch.randn(2, 4, 3, 5)
    out = vq(z)
    codes = vq.codes()
    assert torch.allclose(codes.norm(dim=1), torch.ones(16))
    flat = torch.nn.functional.normalize(z, dim=1).permute(0, 2, 3, 1).reshape(-1, 4)
    dists = torch.cdist(flat, codes)
    brute = dists.argmin(1).view(2, 3, 5)
    assert torch.equal(out.indices, brute)
    # the chosen element is at least as close as every other one
    chosen = dists.gather(1, out.indices.reshape(-1, 1))
    assert torch.all(chosen <= dists + 1e-6)
    assert torch.allclose(out.quantized, codes[brute].permute(0, 3, 1, 2), atol=1e-6)
    # straight-through: the gradient of the quantised output reaches the encoder output
    z.requires_grad_(True)
    (vq(z).quantized * torch.randn(2, 4, 3, 5)).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    # and the dictionary is trained by the codebook term
    vq.zero_grad()
    vq(torch.randn(2, 4, 3, 5)).loss.backward()
    assert vq.codebook.weight.grad.abs().sum() > 0


def test_ema_update_matches_formula() -> None:
    model = RetouchFormer(ModelConfig.preset("tiny"))
    with torch.no_grad():
        for p in model.masknet.online.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in model.masknet.ema.parameters()]
    online = [p.clone() for p in model.masknet.online.parameters()]
    model.ema_update()
    mu = model.config.ema_decay
    assert mu == 0.99
    for b, o, e in zip(before, online, model.masknet.ema.parameters()):
        assert torch.allclose(e, mu * b + (1 - mu) * o, atol=1e-7)
    assert all(not p.requires_grad for p in model.masknet.ema.parameters())


def _trained_like(cfg: ModelConfig) -> RetouchFormer:
    """A model whose decoder output layer is non-zero (fresh models start as an identity residual)."""
    torch.manual_seed(7)
    model = RetouchFormer(cfg).eval()
    with torch.no_grad():
        model.synthesis.out.weight.normal_(0, 0.05)
        model.synthesis.out.bias.normal_(0, 0.05)
    return model


def test_given_mask_replaces_prediction() -> None:
    model = _trained_like(ModelConfig.preset("tiny"))
    x = torch.rand(1, 3, 64, 64)
    m1 = torch.zeros(1, 1, 64, 64)
    m1[..., 10:30, 10:30] = 1
    m2 = torch.zeros(1, 1, 64, 64)
    m2[..., 30:60, 20:50] = 0.8
    with torch.no_grad():
        o1, o2 = model(x, m1), model(x, m2)
        enc = model.encode(x)
        frames_out = model.transformer(enc.frames, torch.zeros(1, 1, *enc.frames.shape[-2:]))
        zero = model(x, torch.zeros(1, 1, 64, 64))
    assert torch.equal(o1.mask, m1) and torch.equal(o2.mask, m2)
    assert not torch.allclose(o1.image, o2.image)
    assert torch.equal(frames_out, enc.frames)  # a zero mask: the transformer changes no token
    assert torch.equal(zero.image, x)  # and the image is the input
    assert torch.equal(o1.image[..., 40:, 40:], x[..., 40:, 40:])  # unmasked pixels are untouched


def test_synthesize_reuses_encoding() -> None:
    model = _trained_like(ModelConfig.preset("tiny"))
    x, m = torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        enc = model.encode(x)
        assert torch.allclose(model.synthesize(enc, m)[0], model(x, m).image, atol=1e-6)


def test_checkpoint_round_trip(tmp_path) -> None:
    model = _trained_like(ModelConfig.preset("tiny", attention="global"))
    path = save_model(model, tmp_path / "m.safetensors", extra={"step": 12})
    loaded = load_model(path)
    assert loaded.config == model.config and loaded.checkpoint_info == {"step": 12}
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x).image, loaded(x).image)


def test_safetensors_layout_is_standard(tmp_path) -> None:
    path = save_safetensors(tmp_path / "t.safetensors", {"a": torch.arange(6, dtype=torch.float32).view(2, 3)}, {"k": "v"})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert header["a"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
    assert header["__metadata__"] == {"k": "v"}
    tensors, meta = load_safetensors(path)
    assert torch.equal(tensors["a"], torch.arange(6, dtype=torch.float32).view(2, 3)) and meta == {"k": "v"}


def test_checkpoint_mismatch_gives_one_clear_error(tmp_path) -> None:
    model = RetouchFormer(ModelConfig.preset("tiny"))
    path = save_model(model, tmp_path / "m.safetensors")
    with pytest.raises(WeightsError, match="differs from the requested 'small' configuration"):
        load_model(path, expected=ModelConfig.preset("small"))
    # a file whose tensors do not fit the config it claims
    tensors, meta = load_safetensors(path)
    assert "encoder.stem.0.weight" in tensors
    tensors["encoder.stem.0.weight"] = torch.zeros(1, 2, 3, 3)
    bad = save_safetensors(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(WeightsError, match="wrong shape") as info:
        load_model(bad)
    assert "\n" not in str(info.value)
    # truncated and missing files
    (tmp_path / "trunc.safetensors").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="unreadable or truncated"):
        load_model(tmp_path / "trunc.safetensors")
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "nope.safetensors")
    no_cfg = save_safetensors(tmp_path / "nocfg.safetensors", {"a": torch.zeros(1)})
    with pytest.raises(WeightsError, match="not a RetouchFormer checkpoint"):
        load_model(no_cfg)


def test_every_module_keeps_float32() -> None:
    cfg = ModelConfig.preset("tiny")
    x = torch.rand(1, 3, 64, 64)
    feats = Encoder(cfg)(x)
    assert all(f.dtype == torch.float32 for f in feats)
    frames = TokenProjection(cfg)(feats)
    assert Transformer(cfg)(frames, torch.rand(1, 1, 8, 8)).dtype == torch.float32
    assert ReconstructionDecoder(cfg)(torch.rand(1, cfg.code_dim, 8, 8)).shape == (1, 3, 64, 64)
    assert MaskUNet(cfg)(x, x).shape == (1, 1, 64, 64)


def test_odd_token_grid_is_padded_into_windows() -> None:
    model = _trained_like(ModelConfig.preset("tiny"))  # window 4 tokens
    x = torch.rand(1, 3, 72, 88)  # 9 x 11 tokens
    with torch.no_grad():
        assert model(x).image.shape == x.shape
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.rand(1, 3, 70, 64))
