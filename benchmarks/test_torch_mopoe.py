"""Checks of the PyTorch baseline (benchmarks/torch_mopoe.py). Torch is not a test dependency:
without it this file skips. Run: python -m pytest benchmarks/test_torch_mopoe.py"""

import math
import os
import sys

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_mopoe as tm  # noqa: E402

# docs/model.md#networks: parameter counts of the reference at the paper's sizes (as run).
SPEC_COUNTS = {
  "frontal_encoder": 9_081_728,
  "lateral_encoder": 9_081_728,
  "text_encoder": 11_569_024,
  "frontal_decoder": 5_769_921,
  "lateral_decoder": 5_769_921,
  "text_decoder": 17_968_596,
  "total": 59_240_918,
}


@pytest.fixture(autouse=True)
def _few_threads():
  old = torch.get_num_threads()
  torch.set_num_threads(2)
  yield
  torch.set_num_threads(old)


def _meta_model(cfg=None):
  with torch.device("meta"):
    return tm.TorchMoPoE(cfg or tm.TorchModelConfig())


def test_parameter_counts_match_spec_table():
  assert tm.parameter_counts() == SPEC_COUNTS


def test_image_encoder_per_block_counts():
  enc = _meta_model().encoders["frontal"]
  assert tm._count(enc.stem) == 576
  assert [tm._count(b) for b in enc.blocks] == [266_880, 803_904, 1_611_264, 2_688_960, 3_381_440]
  assert tm._count(enc.mu) == tm._count(enc.logvar) == 164_352


def test_text_encoder_builds_only_the_blocks_that_run():
  cfg = tm.TorchModelConfig()
  enc = _meta_model(cfg).encoders["text"]
  assert len(enc.blocks) == 6
  widths = [(b.conv2.in_channels, b.conv2.out_channels) for b in enc.blocks]
  assert widths == [(128, 256), (256, 384), (384, 512), (512, 512), (512, 512), (512, 640)]


def test_block_structure_follows_spec():
  cfg = tm.tiny_config()
  model = tm.TorchMoPoE(cfg)
  img_block = model.encoders["frontal"].blocks[0]
  assert img_block.conv1.bias is None and img_block.conv2.bias is None
  assert img_block.shortcut[0].bias is not None
  assert isinstance(img_block.dropout1, torch.nn.Dropout2d)
  img_dec_block = model.decoders["frontal"].blocks[0]
  assert isinstance(img_dec_block.conv1, torch.nn.ConvTranspose2d)
  assert img_dec_block.conv2.bias is None and img_dec_block.shortcut[0].bias is not None
  txt_block = model.encoders["text"].blocks[0]
  assert txt_block.conv1.bias is not None and txt_block.conv2.bias is not None
  assert type(txt_block.dropout1) is torch.nn.Dropout
  txt_dec_block = model.decoders["text"].blocks[0]
  assert isinstance(txt_dec_block.conv1, torch.nn.ConvTranspose1d)
  assert txt_dec_block.conv1.bias is not None
  # out = 2.0 * shortcut + 0.3 * branch (eval mode: no dropout, BN running stats).
  block = img_block.eval()
  x = torch.randn(2, 8, 16, 16)
  branch = block.conv2(torch.relu(block.bn2(block.conv1(torch.relu(block.bn1(x))))))
  torch.testing.assert_close(block(x), 2.0 * block.shortcut(x) + 0.3 * branch)


def test_output_shapes_tiny_config():
  cfg = tm.tiny_config()
  model = tm.TorchMoPoE(cfg)
  batch = tm.random_batch(cfg, 9, torch.Generator().manual_seed(0))
  assert batch["frontal"].shape == (9, 1, 32, 32) and batch["frontal"].dtype == torch.float32
  assert 0.0 <= float(batch["frontal"].min()) and float(batch["frontal"].max()) <= 1.0
  assert batch["text"].shape == (9, 32) and batch["text"].dtype == torch.int64
  for m in tm.MODALITIES:
    mu, logvar = model.encoders[m](batch[m])
    assert mu.shape == logvar.shape == (9, cfg.latent_dim)
  out = model(batch)
  assert out["mu"].shape == out["logvar"].shape == (7, 9, cfg.latent_dim)
  assert out["z"].shape == (9, cfg.latent_dim)
  assert out["recon"]["frontal"].shape == (9, 1, 32, 32)
  assert out["recon"]["lateral"].shape == (9, 1, 32, 32)
  assert out["recon"]["text"].shape == (9, cfg.vocab_size, 32)


def test_paper_size_shapes_on_meta_device():
  cfg = tm.TorchModelConfig()
  model = _meta_model(cfg)
  with torch.device("meta"):
    img = torch.empty(2, 1, 128, 128)
    txt = torch.zeros(2, 128, dtype=torch.int64)
    z = torch.empty(2, 512)
  assert model.encoders["frontal"](img)[0].shape == (2, 512)
  assert model.encoders["text"](txt)[0].shape == (2, 512)
  assert model.decoders["frontal"](z).shape == (2, 1, 128, 128)
  assert model.decoders["text"](z).shape == (2, 2900, 128)


def test_config_rejects_inconsistent_widths():
  with pytest.raises(ValueError, match="image_encoder_widths"):
    tm.TorchModelConfig(image_size=64)
  with pytest.raises(ValueError, match="power of two"):
    tm.TorchModelConfig(text_length=100)


def test_subset_order():
  mask = tm.subset_mask(3).int().tolist()
  assert mask == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]]
  assert tm.subset_mask(3, "poe").int().tolist() == [[1, 1, 1]]
  assert tm.subset_mask(3, "moe").int().tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


def test_mixture_slicing_sizes():
  slices = tm.mixture_slices(200, 7)
  assert [b - a for a, b in slices] == [28] * 6 + [32]
  assert slices[0][0] == 0 and slices[-1][1] == 200
  assign = tm.mixture_assignment(200, 7)
  assert torch.bincount(assign, minlength=7).tolist() == [28] * 6 + [32]
  for k, (a, b) in enumerate(slices):
    assert bool((assign[a:b] == k).all())
  assert tm.mixture_assignment(5, 7).tolist() == [6] * 5  # fewer rows than subsets
  rand = tm.mixture_assignment(200, 7, "random", torch.Generator().manual_seed(0))
  assert rand.shape == (200,) and int(rand.min()) >= 0 and int(rand.max()) <= 6


@pytest.mark.parametrize("prior_expert", ["none", "full_set", "all"])
def test_product_of_experts_matches_loop(prior_expert):
  gen = torch.Generator().manual_seed(0)
  mus = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
  logvars = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
  mask = tm.subset_mask(3)
  prior = tm.prior_expert_flags(mask, prior_expert)
  mu_k, logvar_k = tm.product_of_experts(mus, logvars, mask, prior)
  for k, row in enumerate(mask):
    members = [m for m in range(3) if row[m]]
    precisions = [1.0 / (torch.exp(logvars[m]) + 1e-8) for m in members]
    total = sum(precisions)
    weighted = sum(p * mus[m] for p, m in zip(precisions, members))
    with_prior = prior_expert == "all" or (prior_expert == "full_set" and len(members) == 3)
    if with_prior:
      total = total + 1.0
    torch.testing.assert_close(mu_k[k], weighted / total)
    torch.testing.assert_close(logvar_k[k], -torch.log(total))


def test_loss_matches_torch_distributions():
  cfg = tm.tiny_config(mask_text_padding=False)
  torch.manual_seed(0)
  model = tm.TorchMoPoE(cfg).eval()  # eval: no dropout, so two passes see the same networks
  batch = tm.random_batch(cfg, 10, torch.Generator().manual_seed(1))
  with torch.no_grad():
    loss, metrics = model.loss(batch, torch.Generator().manual_seed(2))
    out = model(batch, torch.Generator().manual_seed(2))
  dist = torch.distributions
  rec = 0.0
  for m in ("frontal", "lateral"):
    ll = dist.Laplace(out["recon"][m], 0.75).log_prob(batch[m]).flatten(1).sum(1)
    rec = rec - ll / 3.0
  logits = out["recon"]["text"].transpose(1, 2)  # [B, T, V]
  rec = rec - dist.Categorical(logits=logits).log_prob(batch["text"]).sum(1) / 3.0
  kl = 0.0
  for k in range(7):
    q = dist.Normal(out["mu"][k], torch.exp(0.5 * out["logvar"][k]))
    kl = kl + dist.kl_divergence(q, dist.Normal(0.0, 1.0)).sum(-1) / 7.0
  torch.testing.assert_close(loss, (rec + kl).mean(), rtol=1e-4, atol=1e-3)
  torch.testing.assert_close(metrics["kl"], kl.mean(), rtol=1e-4, atol=1e-4)
  assert out["assignment"].tolist() == [0, 1, 2, 3, 4, 5, 6, 6, 6, 6]


def test_train_step_is_finite_and_changes_parameters():
  cfg = tm.tiny_config()
  torch.manual_seed(0)
  model = tm.TorchMoPoE(cfg)
  before = {n: p.detach().clone() for n, p in model.named_parameters()}
  optimizer = tm.make_optimizer(model)
  assert optimizer.param_groups[0]["lr"] == 5e-4
  step = tm.make_train_step(model, optimizer)
  metrics = step(tm.random_batch(cfg, 8, torch.Generator().manual_seed(0)))
  assert math.isfinite(metrics["loss"]) and metrics["loss"] > 0
  changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
  assert "encoders.frontal.stem.weight" in changed
  assert "decoders.text.out.weight" in changed
  assert len(changed) > 0.9 * len(before)
